"""Floating-point spec strings and schemes (qpass/specs/float_spec.py): canonical text and
round trip, the fields they set, the SpecError for every impossible combination, and the
scheme names of the floating-point grids."""
import dataclasses

import pytest

from qpass.errors import SpecError
from qpass.specs import SCHEMES, QuantSpec, Scheme

CANONICAL = {
    "fp8": "fp8:channel",
    "fp8:channel": "fp8:channel",
    "FP8:Tensor": "fp8:tensor",
    "fp8:tensor:static": "fp8:tensor",
    "fp8:tensor:dyn": "fp8:tensor:dyn",
    "fp8:token": "fp8:token:dyn",
    "fp8:token:dyn": "fp8:token:dyn",
    "fp8:b128": "fp8:b128",
    "fp8:g128": "fp8:g128",
    "fp8:g128:sym": "fp8:g128",
    "fp8:channel:clip0.9:mse": "fp8:channel:clip0.9:mse",
    "nvfp4": "nvfp4",
    "nvfp4:g16": "nvfp4",
    "nvfp4:token:dyn": "nvfp4:token:dyn",
    "nvfp4:percentile": "nvfp4:percentile",
    "mxfp4": "mxfp4",
    "mxfp4:g32": "mxfp4",
    "mxfp4:token": "mxfp4:token:dyn",
    "mxfp8": "mxfp8",
    "mxfp8:token:dyn": "mxfp8:token:dyn",
}


@pytest.mark.parametrize("text", sorted(CANONICAL))
def test_parse_str_round_trip(text):
    spec = QuantSpec.parse(text)
    assert str(spec) == CANONICAL[text] and spec.is_float
    assert QuantSpec.parse(str(spec)) == spec
    assert QuantSpec(**{f.name: getattr(spec, f.name) for f in dataclasses.fields(spec)}) == spec


def test_fields():
    s = QuantSpec.parse("fp8:b128")
    assert (s.format, s.bits, s.granularity, s.group_size, s.dynamic) == \
        ("fp8", 8, "block", 128, False)
    s = QuantSpec.parse("nvfp4")
    assert (s.format, s.bits, s.granularity, s.group_size) == ("nvfp4", 4, "group", 16)
    s = QuantSpec.parse("mxfp4:token:dyn")
    assert (s.bits, s.granularity, s.group_size, s.dynamic) == (4, "token", None, True)
    assert s.is_activation_only
    assert QuantSpec(format="mxfp8").group_size == 32 and QuantSpec(format="fp8").bits == 8
    assert QuantSpec(8, format="fp8") == QuantSpec.parse("fp8:channel")    # bits may be given
    assert not QuantSpec.parse("int8:channel").is_float
    # integer specs are unchanged
    assert str(QuantSpec.parse("int4:g128")) == "int4:g128:sym" and QuantSpec(4).format == "int"


@pytest.mark.parametrize("bad, words", [
    ("fp8:asym", ["symmetric", "asym"]),
    ("nvfp4:asym", ["symmetric"]),
    ("fp8:restricted", ["integer grid", "restricted"]),
    ("fp8:f16scale", ["f16scale"]),
    ("nvfp4:g32", ["16 elements", "g32"]),
    ("mxfp4:g16", ["32 elements", "g16"]),
    ("nvfp4:channel", ["16-element blocks", "channel"]),
    ("mxfp8:tensor", ["32-element blocks", "tensor"]),
    ("nvfp4:dyn", ["activations", "nvfp4:token:dyn"]),
    ("fp8:b128:dyn", ["weight layout", "fp8:token:dyn"]),
    ("fp8:token:static", ["always dynamic"]),
    ("fp8:g0", ["positive integer"]),
    ("fp8:b128:g64", ["twice"]),
    ("fp4", ["nvfp4 or mxfp4"]),
    ("e5m2:channel", ["E5M2"]),
    ("fp16", ["unquantized"]),
    ("fp8:chanel", ["unknown token 'chanel'"]),
    ("int8:b128", ["granularity 'block'"]),
    ("float8", ["int<bits>", "fp8, nvfp4, mxfp4, mxfp8"]),
])
def test_bad_spec_strings(bad, words):
    with pytest.raises(SpecError) as ei:
        QuantSpec.parse(bad)
    for w in words:
        assert w in str(ei.value), (w, str(ei.value))


@pytest.mark.parametrize("kwargs, words", [
    (dict(bits=4, format="fp8"), ["8-bit E4M3", "bits=4"]),
    (dict(bits=8, format="nvfp4"), ["4-bit E2M1"]),
    (dict(format="fp6"), ["unknown format", "nvfp4"]),
    (dict(format="fp8", granularity="block"), ["positive integer"]),
    (dict(format="fp8", clip_ratio=1.5), ["(0, 1]"]),
    (dict(format="nvfp4", observer="max"), ["minmax, percentile, mse"]),
    (dict(format="fp8", group_size=64), ["'group' or 'block'"]),
])
def test_bad_spec_fields(kwargs, words):
    with pytest.raises(SpecError) as ei:
        QuantSpec(**kwargs)
    for w in words:
        assert w in str(ei.value), (w, str(ei.value))


def test_check_shape():
    QuantSpec.parse("nvfp4").check_shape(256)
    QuantSpec.parse("fp8:b128").check_shape(300)          # partial edge blocks are fine
    QuantSpec.parse("fp8:channel").check_shape(7)
    for spec, K in (("nvfp4", 40), ("mxfp4:token:dyn", 48), ("fp8:g64", 96)):
        with pytest.raises(SpecError, match=f"K={K}") as ei:
            QuantSpec.parse(spec).check_shape(K, "blocks.0.down")
        assert "blocks.0.down" in str(ei.value)


FLOAT_SCHEMES = {
    "w8a16-fp8": ("fp8:channel", None),
    "w8a8-fp8": ("fp8:channel", "fp8:token:dyn"),
    "w4a16-nvfp4": ("nvfp4", None),
    "w4a4-nvfp4": ("nvfp4", "nvfp4:token:dyn"),
    "w4a16-mxfp4": ("mxfp4", None),
    "w4a4-mxfp4": ("mxfp4", "mxfp4:token:dyn"),
    "w8a8-mxfp8": ("mxfp8", "mxfp8:token:dyn"),
}


@pytest.mark.parametrize("name", sorted(FLOAT_SCHEMES))
def test_float_schemes(name):
    assert SCHEMES[name] == FLOAT_SCHEMES[name]
    s = Scheme.parse(name)
    w, a = FLOAT_SCHEMES[name]
    assert str(s.weight) == w and (s.act is None if a is None else str(s.act) == a)
    assert Scheme.from_dict(s.to_dict()) == s


def test_scheme_modifiers_and_weight_spec_strings():
    s = Scheme.parse("w8a8-fp8:b128")
    assert str(s.weight) == "fp8:b128" and str(s.act) == "fp8:token:dyn"
    assert str(Scheme.parse("w8a8-fp8:tensor").weight) == "fp8:tensor"
    assert str(Scheme.parse("w4a4-nvfp4kv8").attn) == "int8:token:dyn"
    assert str(Scheme.parse("nvfp4").weight) == "nvfp4" and Scheme.parse("nvfp4").act is None
    assert str(Scheme.parse("fp8:g64").weight) == "fp8:g64"
    with pytest.raises(SpecError, match="16 elements"):
        Scheme.parse("w4a16-nvfp4:g128")
    with pytest.raises(SpecError, match="fp8:token:dyn"):
        Scheme("x", weight="fp8:token:dyn")


def test_fixed_blocks_never_fall_back_to_another_group():
    """nvfp4 / mx blocks have one size: a layer whose K they do not divide is a SpecError
    naming it (fp8 groups fall back like integer groups)."""
    s = Scheme.parse("w4a16-nvfp4")
    assert s.fit_to([256, 768]) == s
    w, _, _ = s.specs_for("blocks.0.q_proj", "linear", 256)
    assert str(w) == "nvfp4"
    with pytest.raises(SpecError, match="blocks.0.odd"):
        s.specs_for("blocks.0.odd", "linear", 40)
    with pytest.raises(SpecError, match="blocks.0.odd"):
        Scheme.parse("w4a4-mxfp4").specs_for("blocks.0.odd", "linear", 48)
    w, _, why = Scheme("g", weight="fp8:g128", group_fit="layer").specs_for("x", "linear", 192)
    assert str(w) == "fp8:g64" and "fallback" in why

"""QuantSpec / Scheme: parsing, canonical text, validation messages, overrides."""
import json
import re

import pytest

from qpass.errors import QpassError, SpecError
from qpass.specs import QuantSpec, Scheme

# input string -> canonical str(spec)
CANONICAL = {
    "int4:g128:sym": "int4:g128:sym",
    "int4:g128:asym": "int4:g128:asym",
    "int3:g128": "int3:g128:sym",
    "int8:channel": "int8:channel",
    "int8:token:dyn": "int8:token:dyn",
    "int4:token:dyn": "int4:token:dyn",
    "int8:tensor": "int8:tensor",
    "int4:channel:asym:clip0.9": "int4:channel:asym:clip0.9",
    "int4:g64:clip0.85:mse": "int4:g64:sym:clip0.85:mse",
    "int8:token:dyn:percentile": "int8:token:dyn:percentile",
    "INT2:G32:ASYM": "int2:g32:asym",
    "int8": "int8:channel",
}


@pytest.mark.parametrize("text", sorted(CANONICAL))
def test_parse_str_round_trip(text):
    spec = QuantSpec.parse(text)
    assert str(spec) == CANONICAL[text]
    assert QuantSpec.parse(str(spec)) == spec
    assert QuantSpec.parse(spec) is spec


def test_parsed_fields_and_code_range():
    s = QuantSpec.parse("int4:g128:asym")
    assert (s.bits, s.symmetric, s.granularity, s.group_size) == (4, False, "group", 128)
    assert not s.dynamic
    assert (s.qmin, s.qmax, s.levels) == (0, 15, 16)
    s = QuantSpec.parse("int3:g128")
    assert s.symmetric and (s.qmin, s.qmax, s.levels) == (-4, 3, 8)
    s = QuantSpec.parse("int8:token:dyn")
    assert s.granularity == "token" and s.dynamic and (s.qmin, s.qmax) == (-128, 127)
    s = QuantSpec.parse("int4:channel:clip0.9:mse")
    assert s.clip_ratio == 0.9 and s.observer == "mse"


def test_token_granularity_implies_dynamic():
    assert QuantSpec(8, granularity="token").dynamic
    assert QuantSpec.parse("int8:token") == QuantSpec.parse("int8:token:dyn")


@pytest.mark.parametrize("bad, words", [
    ("int0:channel", ["1 to 8", "0"]),
    ("int9:channel", ["1 to 8", "9"]),
    ("int4:chanel", ["unknown token 'chanel'", "channel"]),
    ("int4:g0", ["positive integer group_size", "0"]),
    ("int4:channel:clip1.5", ["(0, 1]", "1.5"]),
    ("int4:channel:clipx", ["clip0.9"]),
    ("four:g128", ["int<bits>"]),
    ("int4:g128:g64", ["twice"]),
    ("int1:channel", ["asym"]),
])
def test_bad_spec_strings(bad, words):
    with pytest.raises(SpecError) as ei:
        QuantSpec.parse(bad)
    for w in words:
        assert w in str(ei.value), (w, str(ei.value))


@pytest.mark.parametrize("kwargs, words", [
    (dict(bits=0), ["1 to 8"]),
    (dict(bits=9), ["1 to 8"]),
    (dict(bits=4.0), ["integer"]),
    (dict(bits=4, granularity="chanel"), ["'chanel'", "tensor, channel, group, token"]),
    (dict(bits=4, granularity="group"), ["group_size"]),
    (dict(bits=4, granularity="group", group_size=0), ["positive integer group_size"]),
    (dict(bits=4, group_size=128), ["granularity 'group'"]),
    (dict(bits=4, clip_ratio=1.5), ["(0, 1]"]),
    (dict(bits=4, clip_ratio=0.0), ["(0, 1]"]),
    (dict(bits=4, observer="max"), ["minmax, percentile, mse"]),
])
def test_bad_spec_fields(kwargs, words):
    with pytest.raises(SpecError) as ei:
        QuantSpec(**kwargs)
    assert isinstance(ei.value, ValueError) and isinstance(ei.value, QpassError)
    for w in words:
        assert w in str(ei.value)


def test_check_shape_names_layer_k_group_and_a_divisor():
    QuantSpec.parse("int4:g128").check_shape(768)      # divides: no error
    QuantSpec.parse("int4:channel").check_shape(777)   # no groups: any K
    for K, g in [(200, 128), (96, 64), (4000, 128), (11, 4)]:
        with pytest.raises(SpecError) as ei:
            QuantSpec(4, granularity="group", group_size=g).check_shape(K, "layers.3.ff_out")
        msg = str(ei.value)
        assert "layers.3.ff_out" in msg and f"K={K}" in msg and f"group size {g}" in msg
        suggested = int(re.search(r"e\.g\. g(\d+)", msg).group(1))
        assert K % suggested == 0 and suggested <= g
    with pytest.raises(SpecError, match="K=96"):
        QuantSpec.parse("int4:g64").check_shape(96)


def test_scheme_presets():
    s = Scheme.parse("w4a16g128")
    assert str(s.weight) == "int4:g128:sym" and s.act is None and s.attn is None
    assert Scheme.parse("w4a16").weight == s.weight
    assert str(Scheme.parse("w3a16g128").weight) == "int3:g128:sym"
    assert str(Scheme.parse("w2a16g128").weight) == "int2:g128:sym"
    assert str(Scheme.parse("w8a16").weight) == "int8:channel"
    w8a8 = Scheme.parse("W8A8")
    assert (str(w8a8.weight), str(w8a8.act)) == ("int8:channel", "int8:token:dyn")
    w4a8 = Scheme.parse("w4a8")
    assert (str(w4a8.weight), str(w4a8.act)) == ("int4:channel", "int8:token:dyn")
    assert str(Scheme.parse("w4a8g128").weight) == "int4:g128:sym"
    w4a4 = Scheme.parse("w4a4")
    assert (str(w4a4.weight), str(w4a4.act)) == ("int4:channel", "int4:token:dyn")
    kv = Scheme.parse("w4a4kv8")
    assert kv.weight == w4a4.weight and str(kv.attn) == "int8:token:dyn"
    assert Scheme.parse(w4a4) is w4a4


def test_scheme_from_weight_spec_string():
    s = Scheme.parse("int4:g128:sym")
    assert str(s.weight) == "int4:g128:sym" and s.act is None
    assert Scheme.parse(QuantSpec.parse("int3:g64")).weight.group_size == 64


def test_unknown_scheme_lists_known_names():
    with pytest.raises(SpecError) as ei:
        Scheme.parse("w5a5")
    msg = str(ei.value)
    assert "w5a5" in msg
    for name in ("w4a16g128", "w3a16g128", "w8a8", "w4a8", "w4a4"):
        assert name in msg


def test_scheme_rejects_misplaced_specs():
    with pytest.raises(SpecError, match="weights"):
        Scheme("x", weight="int8:token:dyn")
    with pytest.raises(SpecError, match="per-channel"):
        Scheme("x", weight="int4:g128", act="int8:channel")
    with pytest.raises(SpecError, match="pattern"):
        Scheme("x", weight="int4:g128", overrides=[("a", "int8:channel", "extra")])


def test_head_and_embed_kept_by_default_with_reason():
    s = Scheme.parse("w4a4")
    w, a, why = s.spec_for("lm_head", role="head")
    assert (w, a) == (None, None) and "kept high precision" in why and "role head" in why
    assert "default rule" in why
    w, a, why = s.spec_for("transformer.wte", role="embed")
    assert (w, a) == (None, None) and "role embed" in why
    w, a, why = s.spec_for("layers.5.q_proj", role="linear")
    assert str(w) == "int4:channel" and str(a) == "int4:token:dyn" and "w4a4" in why


def test_overrides_glob_role_and_last_match_wins():
    s = Scheme("mixed", weight="int4:g128", act=None, overrides={
        "layers.0.*": None,
        "*.ff_out": "int8:channel",
        "layers.0.ff_out": "int3:g64",
        "role:head": "int8:channel",
    })
    w, a, why = s.spec_for("layers.0.q_proj", "linear")
    assert w is None and a is None and why == "kept high precision: override 'layers.0.*'"
    w, _, why = s.spec_for("layers.4.ff_out", "linear")
    assert str(w) == "int8:channel" and "override '*.ff_out'" in why
    w, _, why = s.spec_for("layers.0.ff_out", "linear")   # later, more specific entry wins
    assert str(w) == "int3:g64:sym" and "override 'layers.0.ff_out'" in why
    w, _, why = s.spec_for("lm_head", "head")              # an override beats the default rule
    assert str(w) == "int8:channel" and "override 'role:head'" in why
    w, _, why = s.spec_for("layers.1.q_proj", "linear")
    assert str(w) == "int4:g128:sym" and why == "scheme mixed"


def test_attention_spec():
    s = Scheme.parse("w4a4kv4")
    _, a, why = s.spec_for("layers.0.attn", "attention")
    assert str(a) == "int4:token:dyn" and "attention" in why
    _, a, why = Scheme.parse("w4a4").spec_for("layers.0.attn", "attention")
    assert a is None and "kept high precision" in why


def test_scheme_dict_round_trip_through_json():
    s = Scheme("mixed", weight="int4:g128:asym", act="int8:token:dyn", attn="int8:token:dyn",
               overrides=(("layers.0.*", None), ("role:head", "int8:channel")),
               keep_roles={"embed"})
    d = json.loads(json.dumps(s.to_dict()))
    assert d["weight"] == "int4:g128:asym" and d["overrides"][0] == ["layers.0.*", None]
    assert Scheme.from_dict(d) == s
    with pytest.raises(SpecError, match="name"):
        Scheme.from_dict({"weight": "int4:g128"})


def test_scheme_record_round_trip_and_defaults():
    """from_dict(to_dict(s)) == s; a missing key takes the dataclass default, except group_fit:
    a record from before group_fit existed meant per-layer fitting (specs.OLD_RECORD_MEANING)."""
    from qpass.specs import OLD_RECORD_MEANING
    for s in (Scheme.parse("w4a4"), Scheme.parse("w4a16"),
              Scheme("x", "int4:g64", overrides=[("*.o_proj", None), ("role:head", "int8:channel")],
                     keep_roles={"head"}, strict_groups=True, group_fit="layer")):
        assert Scheme.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    default = Scheme("x", "int4:g128")
    bare = Scheme.from_dict({"name": "x", "weight": "int4:g128"})
    assert bare.keep_roles == default.keep_roles and bare.strict_groups == default.strict_groups
    assert bare.group_fit == OLD_RECORD_MEANING["group_fit"] == "layer" != default.group_fit
    # the records of tests/fixtures/ckpt_v1 (keep_roles written, no group_fit/strict_groups)
    old = Scheme.from_dict({"name": "w8a8", "weight": "int8:channel", "act": "int8:token:dyn",
                            "attn": None, "keep_roles": ["embed", "head"]})
    assert old == Scheme("w8a8", "int8:channel", "int8:token:dyn", keep_roles={"embed", "head"},
                         group_fit="layer")
    with pytest.raises(SpecError, match="'name' and 'weight'"):
        Scheme.from_dict({"weight": "int4:g128"})
    with pytest.raises(SpecError, match="group_fit"):
        Scheme.from_dict({"name": "x", "weight": "int4:g128", "group_fit": "nope"})

"""The floating-point formats a QuantSpec may name (DESIGN §4), their rules and their text.

A spec whose `format` is not "int" describes a floating-point grid; QuantSpec delegates its
validation, its canonical text and the shape check here (the arithmetic is qpass/formats/
minifloat.py and floating.py):

  fp8    E4M3 elements (OCP e4m3fn: max 448, no inf), one float32 scale per tensor / channel
         / g<k> group / token, or per b<k> x b<k> block of a weight (`fp8:b128`)
  nvfp4  E2M1 elements in 16-element blocks along K, each block's scale an E4M3 number, one
         float32 global scale per tensor (weights) or per token (activations); activations
         `nvfp4:tensor`: one static global scale per tensor, calibrated (llm-compressor's
         NVFP4 input_global_scale), the 16-block scales still taken from each input
  mxfp4  E2M1 elements, mxfp8 E4M3 elements, in 32-element blocks along K sharing an E8M0
         (power-of-two) scale (OCP Microscaling)

Text: `fp8:channel`, `fp8:tensor`, `fp8:g128`, `fp8:b128`, `fp8:token:dyn`, `nvfp4`,
`nvfp4:token:dyn`, `nvfp4:tensor`, `mxfp4`, `mxfp8`, `mxfp4:token:dyn` (+ `clip<r>` and an
observer, as for integers). Floating-point grids are symmetric (a sign bit) and have no
integer grid variant, no bit count of their own (the format fixes it) and no fp16 scale
token.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass


@dataclass(frozen=True)
class FloatFormat:
    """One floating-point format: element bits and encoding, the fixed block along K (None:
    the spec's granularity decides) and how a block's scale is stored."""
    name: str
    bits: int
    element: str            # "e4m3" or "e2m1"
    block: int | None       # nvfp4 16, mx 32, fp8 None
    scale: str              # "float32", "e4m3" (+ float32 global) or "e8m0"


FLOAT_FORMATS = {f.name: f for f in (
    FloatFormat("fp8", 8, "e4m3", None, "float32"),
    FloatFormat("nvfp4", 4, "e2m1", 16, "e4m3"),
    FloatFormat("mxfp4", 4, "e2m1", 32, "e8m0"),
    FloatFormat("mxfp8", 8, "e4m3", 32, "e8m0"),
)}
FLOAT_FORM = ("fp8[:tensor|channel|token|g<size>|b<size>][:dyn] | nvfp4[:tensor|:token:dyn] | "
              "mxfp4|mxfp8[:token:dyn] [:clip<ratio>][:minmax|percentile|mse]")
# heads that look like a float format but are none of them, and what to write instead
_NEAR = {"fp4": "nvfp4 or mxfp4", "e2m1": "nvfp4 or mxfp4", "e4m3": "fp8", "fp8e4m3": "fp8",
         "fp8_e4m3": "fp8", "e5m2": "fp8 (E4M3; E5M2 is not a qpass grid)",
         "fp8e5m2": "fp8 (E4M3; E5M2 is not a qpass grid)", "fp6": "mxfp4 or mxfp8",
         "mxfp6": "mxfp4 or mxfp8", "fp16": "no spec: 16-bit weights stay unquantized",
         "bf16": "no spec: 16-bit weights stay unquantized", "nvfp8": "fp8 or mxfp8"}


def is_float_head(head: str) -> bool:
    """Whether a spec string's first token names (or nearly names) a floating-point format."""
    return head in FLOAT_FORMATS or head in _NEAR


def float_head_error(head: str, s: str) -> str | None:
    """Why `head` is not a float format qpass has (None when it is one)."""
    if head in FLOAT_FORMATS:
        return None
    return (f"spec {s!r}: {head!r} is not a qpass floating-point format; write "
            f"{_NEAR.get(head, ', '.join(FLOAT_FORMATS))} (form: {FLOAT_FORM})")


def float_format(spec) -> FloatFormat:
    return FLOAT_FORMATS[spec.format]


def check_float_spec(spec, set_field, error) -> None:
    """Validate (and complete) a floating-point QuantSpec in place: `set_field(name, value)`
    sets a frozen field, `error(msg)` raises SpecError. Called by QuantSpec.__post_init__."""
    fmt = FLOAT_FORMATS.get(spec.format)
    if fmt is None:
        error(f"unknown format {spec.format!r}; valid: int, {', '.join(FLOAT_FORMATS)}")
    bits = spec.bits
    if bits is None:
        set_field("bits", fmt.bits)
    elif isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or bits != fmt.bits:
        error(f"{fmt.name} has {fmt.bits}-bit {fmt.element.upper()} elements; bits={bits!r} "
              f"contradicts it (leave bits out; 4-bit floats are nvfp4 / mxfp4, 8-bit fp8 / "
              f"mxfp8)")
    if not spec.symmetric:
        error(f"{fmt.name} is symmetric (its elements carry a sign bit); drop 'asym'")
    if spec.grid != "full":
        error(f"':{spec.grid}' is an integer grid; {fmt.name} rounds to its own value set, "
              f"drop it")
    if spec.scale_dtype != "float32":
        error(f"':f16scale' rounds integer weight scales to float16; {fmt.name} stores "
              f"{fmt.scale} scales, drop it")
    if fmt.block is None:
        _check_fp8_layout(spec, set_field, error)
    else:
        _check_block_layout(spec, fmt, set_field, error)
    try:
        clip = float(spec.clip_ratio)
    except (TypeError, ValueError):
        clip = float("nan")
    if not 0.0 < clip <= 1.0:
        error(f"clip_ratio must be in (0, 1] (a fraction of the observed range), got "
              f"{spec.clip_ratio!r}")
    set_field("clip_ratio", clip)
    if spec.observer not in ("minmax", "percentile", "mse"):
        error(f"unknown observer {spec.observer!r}; valid: minmax, percentile, mse")


def _positive_size(g, what: str, error) -> int:
    if isinstance(g, bool) or not isinstance(g, numbers.Integral) or g <= 0:
        error(f"{what} needs a positive integer size, got {g!r}")
    return int(g)


def _check_fp8_layout(spec, set_field, error) -> None:
    gran = spec.granularity
    if gran not in ("tensor", "channel", "group", "token", "block"):
        error(f"unknown granularity {gran!r} for fp8; valid: tensor, channel, group, token, "
              f"block")
    if gran in ("group", "block"):
        set_field("group_size", _positive_size(spec.group_size, f"fp8 {gran} granularity "
                                               f"('fp8:g128', 'fp8:b128')", error))
    elif spec.group_size is not None:
        error(f"group_size={spec.group_size} only makes sense with granularity 'group' or "
              f"'block' (write 'fp8:g{spec.group_size}' or 'fp8:b{spec.group_size}')")
    if gran == "token":
        set_field("dynamic", True)
    if gran == "block" and spec.dynamic:
        error("fp8 b<size> blocks are a weight layout (128x128 in DeepSeek-V3 / llm-compressor "
              "FP8_BLOCK); dynamic activations use 'fp8:token:dyn'")


def _check_block_layout(spec, fmt: FloatFormat, set_field, error) -> None:
    gran, g = spec.granularity, spec.group_size
    if g is not None and g != fmt.block:
        error(f"{fmt.name} scales blocks of {fmt.block} elements along K; a group size of {g!r} "
              f"contradicts it (drop g{g})")
    if gran in ("channel", "group"):
        if spec.dynamic:
            error(f"dynamic {fmt.name} is for activations: write '{fmt.name}:token:dyn'")
        set_field("granularity", "group")
        set_field("group_size", fmt.block)
    elif gran == "token":
        set_field("dynamic", True)
        set_field("group_size", None)
    elif gran == "tensor" and fmt.name == "nvfp4":
        # activations: a calibrated global scale per tensor, block scales from each input
        if spec.dynamic:
            error("nvfp4:tensor calibrates its global scale (static); a global scale taken "
                  "from each input is 'nvfp4:token:dyn'")
        set_field("group_size", None)
    else:
        acts = f"'{fmt.name}:token:dyn'" + (" or 'nvfp4:tensor'" if fmt.name == "nvfp4" else "")
        error(f"{fmt.name} has {fmt.block}-element blocks along K: weights are '{fmt.name}', "
              f"activations {acts}; granularity {gran!r} is none of them")


def float_text(spec) -> str:
    """The canonical text of a floating-point spec (parses back to an equal spec)."""
    fmt = FLOAT_FORMATS[spec.format]
    parts = [fmt.name]
    if fmt.block is None:
        gran = spec.granularity
        parts.append({"group": f"g{spec.group_size}", "block": f"b{spec.group_size}"}
                     .get(gran, gran))
    elif spec.granularity in ("token", "tensor"):
        parts.append(spec.granularity)
    if spec.dynamic:
        parts.append("dyn")
    if spec.clip_ratio != 1.0:
        parts.append(f"clip{spec.clip_ratio!r}")
    if spec.observer != "minmax":
        parts.append(spec.observer)
    return ":".join(parts)


def float_parse_fields(head: str, tokens_kw: dict, s: str, error) -> dict:
    """QuantSpec fields of a float spec string from its head and parsed tokens."""
    why = float_head_error(head, s)
    if why:
        error(why)
    fmt = FLOAT_FORMATS[head]
    gran = tokens_kw.get("granularity")
    if fmt.block is not None and (gran == "channel" or gran == "tensor" and head != "nvfp4"):
        error(f"{s!r}: {fmt.name} has {fmt.block}-element blocks along K (weights '{fmt.name}', "
              f"activations '{fmt.name}:token:dyn'), not {tokens_kw['granularity']} scales")
    if tokens_kw.get("granularity") == "token" and tokens_kw.get("dynamic") is False:
        error(f"{s!r}: per-token scales are computed at run time, so 'token' is always dynamic")
    return {"format": head, "bits": None, **tokens_kw}


def float_check_shape(spec, K: int, name: str | None, error) -> None:
    """Refuse a reduction dim K a float spec cannot quantize: its block formats and groups need
    K divisible by the block; fp8 b<size> blocks take any shape (edge blocks are partial)."""
    fmt = FLOAT_FORMATS[spec.format]
    g = fmt.block or (spec.group_size if spec.granularity == "group" else None)
    if g is None or K % g == 0:
        return
    where = f"layer {name!r}" if name else "tensor"
    error(f"{where}: in_features K={K} is not divisible by the {g}-element blocks of "
          f"{float_text(spec)}; keep this layer in high precision with an override, or use "
          f"fp8 per channel")


def is_static_global(spec) -> bool:
    """nvfp4:tensor: activations with one calibrated global scale per tensor and 16-block
    scales computed from each input (what `act_scale` holds is that global scale)."""
    return spec.format == "nvfp4" and spec.granularity == "tensor"


def spec_head(spec) -> str:
    """'int8', 'fp8', 'nvfp4': how a spec's text begins (for messages)."""
    return f"int{spec.bits}" if spec.format == "int" else spec.format

"""llama.cpp's K-quant formats a QuantSpec may name (DESIGN §4): rules and text; the arithmetic
is qpass/formats/kquant.py, the GGUF bytes qpass/interop/gguf_blocks.py.

A K-quant splits each row into 256-weight super-blocks (QK_K) of equal sub-blocks; every
sub-block has an integer scale (and Q4_K an integer min) that is itself quantized under one
float16 number per super-block:

  q4_k  8 sub-blocks of 32, 4-bit codes u in 0..15, 6-bit scale sc and 6-bit min m per
        sub-block under float16 d and dmin:  w = (d·sc)·u − (dmin·m)        (GGML Q4_K, 144 B)
  q6_k  16 sub-blocks of 16, 6-bit codes u in 0..63, int8 scale sc per sub-block under
        float16 d:                           w = (d·sc)·(u − 32)            (GGML Q6_K, 210 B)

(float32 arithmetic in that order, as ggml's dequantize_row_q4_K / _q6_K and gguf-py compute
it: d·sc and dmin·m are exact in float32, so one rounding at the end.)

Text: `q4_k`, `q6_k` — weight specs only, no tokens: the super-block layout, the grid and the
scale search are the format's. A row whose length K is not a multiple of 256 cannot be a
K-quant; a scheme then uses llama.cpp's own fallback for it (llama-quantize's
tensor_type_fallback): q4_k -> q5_0, q6_k -> q8_0 (32-weight blocks, `fallback`), and keeps K
not a multiple of 32 in float (llama.cpp: F16). A strict scheme refuses instead.

Mixes (`MIXES`): a scheme whose K-quant type varies per tensor by llama.cpp's rule, e.g.
`q4_k_m` (llama-quantize Q4_K_M): q4_k everywhere except attn_v and ffn_down of the layers
llama.cpp's use_more_bits picks (i < n/8, i >= 7n/8, (i − n/8) % 3 == 2), which are q6_k, and
an untied output head, q6_k (qpass.pipeline.group_fit expands it for one model).
"""
from __future__ import annotations

from dataclasses import dataclass

QK_K = 256


@dataclass(frozen=True)
class KQuantFormat:
    name: str               # spec head: "q4_k"
    ggml: str               # GGML type name: "Q4_K"
    bits: int               # code bits
    sub: int                # weights per sub-block (the spec's group size)
    with_min: bool          # a per-sub-block min (asymmetric codes) under fp16 dmin
    scale_bits: int         # sub-block scale codes: 6 (unsigned 0..63) or 8 (int8)
    block_bytes: int        # bytes per 256-weight super-block in GGUF
    fallback: str           # llama.cpp's 32-block type (a SCHEMES name) for K % 256 != 0

    @property
    def n_sub(self) -> int:
        return QK_K // self.sub

    @property
    def super_parts(self) -> int:
        """float16 numbers per super-block: d (and dmin)."""
        return 2 if self.with_min else 1


KQUANT_FORMATS = {f.name: f for f in (
    KQuantFormat("q4_k", "Q4_K", 4, 32, True, 6, 144, "q5_0"),
    KQuantFormat("q6_k", "Q6_K", 6, 16, False, 8, 210, "q8_0"),
)}
KQUANT_FORM = "q4_k | q6_k (weights; 256-weight super-blocks)"


@dataclass(frozen=True)
class KQuantMix:
    """A per-tensor mix of K-quant types (llama-quantize's *_M ftypes)."""
    name: str
    base: str               # the type of every tensor the rule does not pick
    more_bits: str          # the type of the tensors it picks
    about: str


MIXES = {m.name: m for m in (
    KQuantMix("q4_k_m", "q4_k", "q6_k",
              "llama.cpp Q4_K_M: q4_k; q6_k for attn_v and ffn_down of the layers "
              "use_more_bits picks and for an untied output head"),
)}


def use_more_bits(i: int, n: int) -> bool:
    """llama.cpp's rule (llama-quant.cpp) for the layers a *_M mix gives more bits."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def is_kquant_head(head: str) -> bool:
    return head in KQUANT_FORMATS


def kquant_format(spec) -> KQuantFormat:
    return KQUANT_FORMATS[spec.format]


def check_kquant_spec(spec, set_field, error) -> None:
    """Validate and complete a K-quant QuantSpec in place (`set_field(name, value)` sets a
    frozen field, `error(msg)` raises SpecError): bits, symmetry and the sub-block group
    follow from the format; anything else set is a contradiction."""
    fmt = KQUANT_FORMATS[spec.format]
    if spec.bits is not None and (isinstance(spec.bits, bool) or spec.bits != fmt.bits):
        error(f"{fmt.name} has {fmt.bits}-bit codes; bits={spec.bits!r} contradicts it (leave "
              f"bits out)")
    set_field("bits", fmt.bits)
    if spec.granularity not in ("group", "channel") or spec.dynamic:
        error(f"{fmt.name} is a weight format of {QK_K}-weight super-blocks along K; "
              f"granularity {spec.granularity!r}{' (dynamic)' if spec.dynamic else ''} is "
              f"none of it")
    if spec.group_size not in (None, fmt.sub):
        error(f"{fmt.name} has sub-blocks of {fmt.sub} weights; a group size of "
              f"{spec.group_size!r} contradicts it (drop g{spec.group_size})")
    set_field("granularity", "group")
    set_field("group_size", fmt.sub)
    set_field("symmetric", not fmt.with_min)
    for field, default in (("clip_ratio", 1.0), ("observer", "minmax"), ("grid", "full"),
                           ("scale_dtype", "float32")):
        if getattr(spec, field) != default:
            error(f"{fmt.name} chooses its own sub-block scales (a search like llama.cpp's) "
                  f"under float16 super-block scales; {field}={getattr(spec, field)!r} does "
                  f"not apply, drop it")


def kquant_parse_fields(head: str, tokens: list[str], s: str, error) -> dict:
    if tokens:
        error(f"spec {s!r}: {head} takes no tokens (its sub-blocks, grid and scales are the "
              f"format's); write {head!r}")
    return {"format": head, "bits": None, "symmetric": not KQUANT_FORMATS[head].with_min,
            "granularity": "group", "group_size": KQUANT_FORMATS[head].sub}


def kquant_check_shape(spec, K: int, name: str | None, error) -> None:
    if K % QK_K == 0:
        return
    fmt = KQUANT_FORMATS[spec.format]
    where = f"layer {name!r}" if name else "tensor"
    error(f"{where}: in_features K={K} is not a multiple of {fmt.name}'s {QK_K}-weight "
          f"super-blocks; quantize it with {fmt.fallback} as llama.cpp does (a non-strict "
          f"scheme does this itself), or keep it in high precision with an override")

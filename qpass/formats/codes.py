"""Integer formats: scales/zero points, quantize/dequantize (packing: packing.py; the packed
weight: quantized_weight.py).

The one owner of the code convention (docs/FORMATS.md): passes produce codes with it and
backends consume them with it, so the two can never disagree. Summary for a weight W (N, K),
quantized along K, b bits:
  symmetric   s = clip*absmax / d, q = clamp(round(w/s), -2^(b-1), 2^(b-1)-1),
              stored u = q + 2^(b-1), implicit zero z = 2^(b-1); d = spec.sym_divisor:
              (2^b-1)/2 on the full grid (default), 2^(b-1)-1 on the restricted one
  asymmetric  lo = clip*min(min w, 0), hi = clip*max(max w, 0), s = (hi-lo)/(2^b-1),
              z = clamp(round(-lo/s), 0, 2^b-1), u = clamp(round(w/s) + z, 0, 2^b-1)
  both        w ~ (u - z) * s; round half to even (torch.round); scales float32, zeros int32.
  f16scale    s is rounded to the nearest float16 (kept as float32) before any code is chosen
              with it, so fp16-scale formats (GGUF) hold the same weights.
  signed      (symmetric grid "signed", llama.cpp's Q4_0 choice) m = the group's first element
              of largest magnitude, s = m / -2^(b-1) (negative when m > 0), so m lands on the
              code -2^(b-1) exactly; u = min(2^b-1, trunc(w*(1/s) + (z + 1/2))) with llama.cpp's
              roundings (quantize_row_q4_0: the reciprocal, the product, the sum): round half
              up, ties decided exactly as llama.cpp decides them.
"""
from __future__ import annotations

import math

import torch

from ..errors import SpecError
from ..specs import QuantSpec
from ..specs.float_spec import is_static_global
from .floating import (float_dequantize, float_fake_quantize, float_qparams, float_quantize,
                       static_global_scale)
from . import kquant

# Floor for scales of all-zero rows/groups: w/s stays 0, so dequantization returns exact zeros.
SCALE_FLOOR = torch.finfo(torch.float32).tiny
F16_SCALE_FLOOR = 2.0 ** -24        # the smallest float16 (subnormal): the fp16 floor
PERCENTILE = 0.999          # fraction of |x| kept by the "percentile" observer
MSE_GRID = [1.0 - 0.025 * i for i in range(21)]  # range shrink factors tried by "mse"


def _spec(spec) -> QuantSpec:
    return QuantSpec.parse(spec)


def _grouped(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """View x as (R, G, gs): rows = leading dims flattened, G groups of gs along the last dim."""
    if spec.granularity == "tensor":
        return x.reshape(1, 1, -1)
    if x.dim() == 0:
        raise SpecError(f"{spec} needs a tensor with a last (reduction) dim, got a scalar")
    K = x.shape[-1]
    if spec.granularity == "group":
        spec.check_shape(K)
        return x.reshape(-1, K // spec.group_size, spec.group_size)
    return x.reshape(-1, 1, K)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def qparams_from_range(lo: torch.Tensor, hi: torch.Tensor, spec
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (float32) and zero (int32) from observed min/max; observers use this too, so
    calibrated and on-the-fly parameters follow the same convention. clip is applied here."""
    spec = _spec(spec)
    # float64 for these few numbers: the stored float32 scale is then the (nearly always
    # correctly) rounded exact formula, on every device and for every input dtype.
    dt = torch.float64
    lo = torch.clamp(lo.to(dt), max=0.0) * spec.clip_ratio   # 0 must be representable
    hi = torch.clamp(hi.to(dt), min=0.0) * spec.clip_ratio
    if spec.grid == "signed":
        # the extreme of larger magnitude (the negative one on a tie) lands on -2^(b-1)
        scale = _stored_scale(torch.where(hi > -lo, hi, lo) / -spec.sym_divisor, spec)
        zero = torch.full(scale.shape, 1 << (spec.bits - 1), dtype=torch.int32, device=scale.device)
    elif spec.symmetric:
        scale = _stored_scale(torch.maximum(hi, -lo) / spec.sym_divisor, spec)
        zero = torch.full(scale.shape, 1 << (spec.bits - 1), dtype=torch.int32, device=scale.device)
    else:
        scale = _stored_scale((hi - lo) / (spec.levels - 1), spec)
        zero = torch.round(-lo / scale.to(dt)).clamp(0, spec.levels - 1).to(torch.int32)
    return scale, zero


def _stored_scale(exact: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """The float32 scale that is stored: the exact one rounded to float32, or to float16 under
    ':f16scale' (never 0; a range past float16's largest number is a SpecError). Rounding and
    the floor act on the magnitude: a signed-grid scale keeps its sign (0 becomes +floor)."""
    sign = torch.where(exact < 0, -1.0, 1.0).to(torch.float32)
    scale = exact.abs().to(torch.float32)
    if spec.scale_dtype != "float16":
        return scale.clamp(min=SCALE_FLOOR) * sign
    half = scale.to(torch.float16)
    if torch.isinf(half).any():
        raise SpecError(f"{spec}: a weight range needs a scale above float16's largest number "
                        f"(65504); drop ':f16scale' for this tensor")
    return half.to(torch.float32).clamp(min=F16_SCALE_FLOOR) * sign


def _observe(g: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(row, group) lo/hi of a grouped view (R, G, gs) by the spec's observer."""
    if spec.observer == "percentile":
        n = g.shape[-1]
        k_hi = max(1, min(n, math.ceil(PERCENTILE * n)))
        if spec.symmetric:
            a = g.abs().kthvalue(k_hi, dim=-1).values
            return -a, a
        return g.kthvalue(n + 1 - k_hi, dim=-1).values, g.kthvalue(k_hi, dim=-1).values
    return g.amin(dim=-1), g.amax(dim=-1)


def _signed_range(g: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The observed range made one-sided for the signed grid: magnitude max(hi, −lo), on the
    side of the sign of the group's first element of largest |w| (llama.cpp's quantize_row_q4_0
    scans for it with a strict '<', so the first one wins a tie between +a and −a)."""
    a = torch.maximum(hi, -lo)
    first = g.gather(-1, g.abs().argmax(dim=-1, keepdim=True)).squeeze(-1)
    zero = torch.zeros_like(a)
    pos = first > 0
    return torch.where(pos, zero, -a), torch.where(pos, a, zero)


def compute_qparams(w: torch.Tensor, spec) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero for `w` under `spec`: (N, K//g) for group, (rows, 1) for channel/token
    (rows = leading dims flattened), (1, 1) for tensor. zero is int32 (2^(b-1) if symmetric).
    Floating-point specs: the effective float32 scale per cell (formats/floating.py), zero 0;
    nvfp4:tensor its global scale (1, 1)."""
    spec = _spec(spec)
    if spec.is_float:
        # nvfp4:tensor keeps its calibrated global scale; the block scales come at run time
        scale = static_global_scale(w, spec) if is_static_global(spec) else \
            float_qparams(w, spec).scale
        return scale, torch.zeros(scale.shape, dtype=torch.int32, device=scale.device)
    _no_kquant(spec, "compute_qparams")
    g = _grouped(w.detach().to(_compute_dtype(w)), spec)
    lo, hi = _observe(g, spec)
    if spec.grid == "signed":
        lo, hi = _signed_range(g, lo, hi)
    if spec.observer != "mse":
        return qparams_from_range(lo, hi, spec)
    # MSE observer: try shrunken ranges, keep per (row, group) the one with least squared error.
    best_err = best_s = best_z = None
    for f in MSE_GRID:
        s, z = qparams_from_range(lo * f, hi * f, spec)
        err = (_fq_grouped(g, spec, s, z) - g).pow(2).sum(-1)
        if best_err is None:
            best_err, best_s, best_z = err, s, z
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_s, best_z = torch.where(better, s, best_s), torch.where(better, z, best_z)
    return best_s, best_z


def _codes_grouped(g: torch.Tensor, spec: QuantSpec, scale, zero) -> torch.Tensor:
    s = scale.to(g.dtype).unsqueeze(-1)
    z = zero.to(g.dtype).unsqueeze(-1)
    if spec.grid == "signed":
        # llama.cpp's arithmetic (quantize_row_q4_0: id = 1/d, (int)(x*id + 8.5f), three
        # separately rounded ops), so its ties fall as they do there: same codes, bit for bit
        inv = torch.ones_like(s) / s
        return torch.trunc(g * inv + (z + 0.5)).clamp(0, spec.levels - 1)
    # round first, then add the integer zero: identical for sym, and the documented asym order
    return (torch.round(g / s) + z).clamp(0, spec.levels - 1)


def _fq_grouped(g, spec, scale, zero):
    u = _codes_grouped(g, spec, scale, zero)
    return (u - zero.to(g.dtype).unsqueeze(-1)) * scale.to(g.dtype).unsqueeze(-1)


def _zero_or_default(zero, scale, spec: QuantSpec) -> torch.Tensor:
    if zero is None:
        if not spec.symmetric:
            raise SpecError(f"asymmetric spec {spec} needs explicit zero points")
        return torch.full(scale.shape, 1 << (spec.bits - 1), dtype=torch.int32, device=scale.device)
    return zero


def quantize(w: torch.Tensor, spec, scale: torch.Tensor,
             zero: torch.Tensor | None = None) -> torch.Tensor:
    """Unsigned codes u (uint8, same shape as w). zero may be None for symmetric specs.
    Floating-point specs: the element bit patterns under effective scales (zero unused)."""
    spec = _spec(spec)
    if spec.is_float:
        return float_quantize(w, spec, scale)
    _no_kquant(spec, "quantize")
    zero = _zero_or_default(zero, scale, spec)
    g = _grouped(w.detach().to(_compute_dtype(w)), spec)
    return _codes_grouped(g, spec, scale, zero).to(torch.uint8).reshape(w.shape)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, spec,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(u - z) * s in float32, then cast to dtype (floating-point specs: value(u) * s)."""
    spec = _spec(spec)
    if spec.is_float:
        return float_dequantize(codes, spec, scale, dtype)
    _no_kquant(spec, "dequantize")
    zero = _zero_or_default(zero, scale, spec)
    g = _grouped(codes, spec).to(torch.float32)
    out = (g - zero.to(torch.float32).unsqueeze(-1)) * scale.to(torch.float32).unsqueeze(-1)
    return out.reshape(codes.shape).to(dtype)


def fake_quantize(x: torch.Tensor, spec, scale: torch.Tensor | None = None,
                  zero: torch.Tensor | None = None) -> torch.Tensor:
    """quantize -> dequantize in x's dtype. Without scale, parameters come from x itself (the
    dynamic case: per-token rows for token granularity)."""
    spec = _spec(spec)
    if spec.is_float:
        return float_fake_quantize(x, spec, scale)
    if spec.is_kquant and scale is None:
        return kquant.kquant_fake_quantize(x, spec)
    _no_kquant(spec, "fake_quantize with given scales")
    if scale is None:
        scale, zero = compute_qparams(x, spec)
    return dequantize(quantize(x, spec, scale, zero), scale, zero, spec, dtype=x.dtype)


def _no_kquant(spec: QuantSpec, what: str) -> None:
    if spec.is_kquant:
        raise SpecError(f"{spec} is a K-quant: its scales are sub-block codes under float16 "
                        f"super-block scales, not (scale, zero) groups; {what} does not take "
                        f"it (QuantizedWeight.from_float / formats.kquant do)")


def quantize_per_token(x: torch.Tensor, bits: int = 8, grid: str = "full"
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric dynamic per-token activation quantization: signed q (int8, x's shape) and
    scale (float32, x.shape[:-1] + (1,)); s = absmax/d with d = QuantSpec.sym_divisor of
    `grid` ((2^b-1)/2 full, 2^(b-1)-1 restricted), x ~ q * s."""
    spec = QuantSpec(bits, granularity="token", dynamic=True, grid=grid)
    xf = x.detach().to(_compute_dtype(x))
    amax = xf.abs().amax(dim=-1, keepdim=True)
    # Divide by a same-device tensor, not a Python scalar: torch turns scalar division into a
    # multiplication by the reciprocal on some devices (1 ulp off), while kernels divide exactly.
    s = (amax / torch.full_like(amax, spec.sym_divisor)).to(torch.float32).clamp(min=SCALE_FLOOR)
    q = torch.round(xf / s.to(xf.dtype)).clamp(spec.qmin, spec.qmax).to(torch.int8)
    return q, s


def to_signed(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned symmetric codes u -> signed int8 q = u - 2^(b-1) (e.g. for int8 matmuls)."""
    return (codes.to(torch.int16) - (1 << (bits - 1))).to(torch.int8)

"""Floating-point grids (DESIGN §4, docs/FORMATS.md "Floating-point formats"): scales, codes
and dequantization for fp8 (E4M3), nvfp4 (E2M1 + E4M3 block scales + a float32 global
scale) and mxfp4 / mxfp8 (E2M1 / E4M3 + E8M0 block scales).

Every layout is a grid of cells over the (R, K) view of a tensor (rows = leading dims
flattened): one cell per tensor, per row (channel / token), per g consecutive elements of a
row (group; nvfp4 16, mx 32), or per b x b block (fp8 b<size>; edge blocks partial). A cell's
*effective* scale s (float32) is what multiplies its element values:

    fp8     s = amax / 448                          (float32 division; stored as is)
    nvfp4   G = 448·6 · (1/amax_tensor) (per token for activations; 1 if not finite;
            nvfp4:tensor activations: calibrated once, static_global_scale)
            b = e4m3(amax/6 · G) (0 becomes 0.125), s = b / G   (stored: b's E4M3 code, G)
    mx      e = floor(log2 amax) + [amax's mantissa ≥ 1.75] − emax(element) (2 E2M1, 8 E4M3)
            s = 2^e                                 (stored: E8M0 code e + 127)

(the nvfp4 and mx rules are compressed-tensors 0.20's calculate_qparams / generate_gparam /
generate_mx_scales, in the same float32 operations, so its exports hold qpass's scales bit
for bit). Elements: code = encode(round_to(x / s)) — x / s one correctly rounded division,
then the nearest format value, ties to even, saturating — and x ≈ decode(code) · s in float32.
amax comes from the spec's observer (minmax, percentile, mse) times its clip ratio.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import SpecError
from ..specs import QuantSpec
from ..specs.float_spec import FLOAT_FORMATS, is_static_global
from .minifloat import ELEMENTS, E4M3, MiniFloat, decode, e8m0_decode, e8m0_encode, encode, round_to

SCALE_FLOOR = torch.finfo(torch.float32).tiny
NVFP4_ZERO_SCALE = 0.125        # compressed-tensors' E4M3 block scale for an all-zero block
PERCENTILE = 0.999
MSE_GRID = [1.0 - 0.025 * i for i in range(21)]


@dataclass
class FloatScales:
    """A float spec's scales for one tensor: `scale` the effective float32 scale per cell,
    `stored` what a checkpoint keeps (float32 for fp8, uint8 E4M3 codes for nvfp4, uint8 E8M0
    codes for mx), `global_scale` nvfp4's float32 global scale ((1,) per tensor, (R, 1) per
    token), else None."""
    scale: torch.Tensor
    stored: torch.Tensor
    global_scale: torch.Tensor | None = None


def element(spec: QuantSpec) -> MiniFloat:
    return ELEMENTS[FLOAT_FORMATS[spec.format].element]


def cell_shape(R: int, K: int, spec: QuantSpec) -> tuple[int, int]:
    """(rows, columns) of one cell of the (R, K) view."""
    fmt = FLOAT_FORMATS[spec.format]
    gran = spec.granularity
    if fmt.block is not None:            # nvfp4 / mx: their blocks along K at any granularity
        if K % fmt.block:
            spec.check_shape(K)                               # raises
        return 1, fmt.block
    if gran == "tensor":
        return max(R, 1), max(K, 1)
    if gran == "block":
        return spec.group_size, spec.group_size
    g = spec.group_size if gran == "group" else None
    if g is not None and K % g:
        spec.check_shape(K)                               # raises
    return 1, g or max(K, 1)


def float_scale_shape(R: int, K: int, spec: QuantSpec) -> tuple[int, int]:
    br, bc = cell_shape(R, K, spec)
    return -(-R // br), -(-K // bc)


def _cells(x: torch.Tensor, br: int, bc: int) -> torch.Tensor:
    """(R, K) -> (Rc, Kc, br·bc), zero-padded at the bottom/right edges."""
    R, K = x.shape
    Rc, Kc = -(-R // br), -(-K // bc)
    x = torch.nn.functional.pad(x, (0, Kc * bc - K, 0, Rc * br - R))
    return x.reshape(Rc, br, Kc, bc).permute(0, 2, 1, 3).reshape(Rc, Kc, br * bc)


def _uncells(v: torch.Tensor, br: int, bc: int, R: int, K: int) -> torch.Tensor:
    Rc, Kc, _ = v.shape
    return v.reshape(Rc, Kc, br, bc).permute(0, 2, 1, 3).reshape(Rc * br, Kc * bc)[:R, :K]


def _rows(x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 0:
        raise SpecError("a floating-point spec needs a tensor with a last (reduction) dim")
    return x.reshape(-1, x.shape[-1])


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _div(a: torch.Tensor, b: float) -> torch.Tensor:
    """a / b correctly rounded: by a same-device tensor, never a reciprocal multiply."""
    return a / torch.full_like(a, b)


# ----- scales ----------------------------------------------------------------------------
def nvfp4_global_scale(amax: torch.Tensor) -> torch.Tensor:
    """448·6 / amax in float32 as compressed-tensors' generate_gparam computes it (torch's
    scalar / tensor: the reciprocal, then the product); 1 where not finite."""
    amax = amax.to(torch.float32).clamp(min=SCALE_FLOOR)
    g = torch.reciprocal(amax) * torch.full_like(amax, E4M3.max * 6.0)
    return torch.nan_to_num(g, nan=1.0, posinf=1.0, neginf=1.0)


def _scales_from_amax(amax: torch.Tensor, spec: QuantSpec, global_scale) -> FloatScales:
    """Effective and stored scales of cells with magnitude bounds `amax` (float32)."""
    fmt = FLOAT_FORMATS[spec.format]
    if fmt.scale == "float32":
        s = _div(amax, element(spec).max).clamp(min=SCALE_FLOOR)
        return FloatScales(s, s)
    if fmt.scale == "e4m3":
        b = round_to(_div(amax, element(spec).max) * global_scale, E4M3)
        b = torch.where(b == 0, torch.full_like(b, NVFP4_ZERO_SCALE), b)
        return FloatScales(b / global_scale, encode(b, E4M3))
    frac, exp = torch.frexp(amax)                 # amax = frac · 2^exp, frac in [0.5, 1)
    e = exp - 1 + (frac >= 0.875).to(exp.dtype) - int(math.floor(math.log2(element(spec).max)))
    e = torch.where(amax > 0, e, torch.full_like(e, -127))
    codes = e8m0_encode(e)
    return FloatScales(e8m0_decode(codes), codes)


def _amax(cells: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    a = cells.abs()
    if spec.observer == "percentile":
        n = a.shape[-1]
        return a.kthvalue(max(1, min(n, math.ceil(PERCENTILE * n))), dim=-1).values
    return a.amax(dim=-1)


def static_global_scale(x: torch.Tensor, spec) -> torch.Tensor:
    """nvfp4:tensor's calibrated global scale (1, 1) from calibration inputs x (..., K): 448·6
    over the tensor's amax by the spec's observer (minmax: the absmax, llm-compressor's
    static_minmax; percentile: the 99.9th percentile of |x|; mse: the shrink of the absmax
    with the least squared error under the run-time block scales) times its clip ratio."""
    spec = QuantSpec.parse(spec)
    x2 = _rows(x.detach()).to(_work_dtype(x))
    a = x2.abs().flatten()
    if spec.observer == "percentile":
        amax = a.kthvalue(max(1, min(a.numel(), math.ceil(PERCENTILE * a.numel())))).values
    else:
        amax = a.amax()
    amax = (amax * spec.clip_ratio).to(torch.float32).reshape(1, 1)
    if spec.observer != "mse":
        return nvfp4_global_scale(amax)
    best = err_best = None
    for f in MSE_GRID:
        g = nvfp4_global_scale(amax * f)
        err = float((float_fake_quantize(x2, spec, g) - x2).pow(2).sum())
        if err_best is None or err < err_best:
            best, err_best = g, err
    return best


def _block_scales(x2: torch.Tensor, spec: QuantSpec, global_scale) -> FloatScales:
    """nvfp4:tensor's run-time 16-block scales under a given global scale: each block's own
    absmax (compressed-tensors' dynamic "local" scales; the observer and clip ratio chose the
    global scale only)."""
    if global_scale is None:
        global_scale = nvfp4_global_scale(x2.abs().amax().reshape(1))
    g = global_scale.to(torch.float32).reshape(-1, 1)
    amax = _cells(x2, 1, FLOAT_FORMATS[spec.format].block).abs().amax(-1).to(torch.float32)
    out = _scales_from_amax(amax, spec, g)
    out.global_scale = global_scale.to(torch.float32)
    return out


def float_qparams(x: torch.Tensor, spec, global_scale: torch.Tensor | None = None
                  ) -> FloatScales:
    """The scales of `x` (..., K) under a float spec, per cell of its (R, K) view. nvfp4's
    global scale is computed from x (per tensor, or per token for activations) unless given."""
    spec = QuantSpec.parse(spec)
    x2 = _rows(x.detach()).to(_work_dtype(x))
    if is_static_global(spec):
        return _block_scales(x2, spec, global_scale)
    br, bc = cell_shape(*x2.shape, spec)
    cells = _cells(x2, br, bc)
    amax = (_amax(cells, spec) * spec.clip_ratio).to(torch.float32)
    if FLOAT_FORMATS[spec.format].scale == "e4m3" and global_scale is None:
        whole = x2.abs().amax(dim=-1, keepdim=True) if spec.granularity == "token" else \
            x2.abs().amax().reshape(1)
        global_scale = nvfp4_global_scale(whole)
    if global_scale is not None:
        global_scale = global_scale.to(torch.float32)
    g = None if global_scale is None else global_scale.reshape(-1, 1)
    best = _scales_from_amax(amax, spec, g)
    best.global_scale = global_scale
    if spec.observer != "mse":
        return best
    err_best = None
    for f in MSE_GRID:
        cand = _scales_from_amax(amax * f, spec, g)
        err = (_dequant_cells(_quant_cells(cells, cand.scale, spec), cand.scale) - cells
               ).pow(2).sum(-1)
        if err_best is None:
            err_best = err
            continue
        better = err < err_best
        err_best = torch.where(better, err, err_best)
        best = FloatScales(torch.where(better, cand.scale, best.scale),
                           torch.where(better, cand.stored, best.stored), best.global_scale)
    return best


def effective_scale(stored: torch.Tensor, global_scale: torch.Tensor | None, spec) -> torch.Tensor:
    """The float32 scale per cell from what a checkpoint stores (float_qparams' `stored`)."""
    spec = QuantSpec.parse(spec)
    kind = FLOAT_FORMATS[spec.format].scale
    if kind == "float32":
        return stored.to(torch.float32)
    if kind == "e4m3":
        return decode(stored, E4M3) / global_scale.to(torch.float32).reshape(-1, 1)
    return e8m0_decode(stored)


# ----- elements ----------------------------------------------------------------------------
def _quant_cells(cells: torch.Tensor, scale: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Element values (on the element grid, cells' dtype) of cells under per-cell scales."""
    return round_to(cells / scale.to(cells.dtype).unsqueeze(-1), element(spec))


def _dequant_cells(values: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return values * scale.to(values.dtype).unsqueeze(-1)


def float_quantize(x: torch.Tensor, spec, scale: torch.Tensor) -> torch.Tensor:
    """uint8 element codes (x's shape) of x under effective per-cell scales `scale`."""
    spec = QuantSpec.parse(spec)
    x2 = _rows(x.detach()).to(_work_dtype(x))
    br, bc = cell_shape(*x2.shape, spec)
    values = _uncells(_quant_cells(_cells(x2, br, bc), scale, spec), br, bc, *x2.shape)
    return encode(values, element(spec)).reshape(x.shape)


def float_dequantize(codes: torch.Tensor, spec, scale: torch.Tensor,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """decode(codes) · s in float32 per cell, cast to dtype."""
    spec = QuantSpec.parse(spec)
    v = _rows(decode(codes, element(spec)))
    br, bc = cell_shape(*v.shape, spec)
    out = _uncells(_dequant_cells(_cells(v, br, bc), scale), br, bc, *v.shape)
    return out.reshape(codes.shape).to(dtype)


def float_fake_quantize(x: torch.Tensor, spec, scale: torch.Tensor | None = None) -> torch.Tensor:
    """Quantize -> dequantize in x's dtype (in float32, float64 for float64 x); without
    `scale` the scales come from x itself (dynamic: per token for token specs). For
    nvfp4:tensor `scale` is the calibrated global scale and the block scales come from x."""
    spec = QuantSpec.parse(spec)
    x2 = _rows(x.detach()).to(_work_dtype(x))
    if is_static_global(spec):
        scale = _block_scales(x2, spec, scale).scale
    elif scale is None:
        scale = float_qparams(x2, spec).scale
    br, bc = cell_shape(*x2.shape, spec)
    cells = _cells(x2, br, bc)
    out = _dequant_cells(_quant_cells(cells, scale, spec), scale)
    return _uncells(out, br, bc, *x2.shape).reshape(x.shape).to(x.dtype)


def stored_layout(N: int, K: int, spec) -> dict[str, tuple[torch.dtype, tuple]]:
    """{tensor suffix: (dtype, shape)} a float-spec weight (N, K) keeps besides its codes."""
    spec = QuantSpec.parse(spec)
    kind = FLOAT_FORMATS[spec.format].scale
    shape = float_scale_shape(N, K, spec)
    out = {"scales": (torch.float32 if kind == "float32" else torch.uint8, shape)}
    if kind == "e4m3":
        out["global_scale"] = (torch.float32, (1,))
    return out

"""The grid GPTQ's column solve rounds to (passes/_gptq_solve.py, _gptq_refine.py).

The solve keeps, per walk column, a value u on the grid's own scale and per group a scale s
(and for integers a zero point z): q = (u − z)·s. An integer grid rounds w/s, adds z and clamps
to the codes; a floating-point grid (fp8, nvfp4, mxfp4, mxfp8) rounds w/s to the nearest value
of its element format (ties to even, saturating; z = 0), so GPTQ decides every column inside
scales fixed per group exactly as RTN computes them from that group (qpass/formats/floating.py:
nvfp4's E4M3 block scales under one global scale taken from the whole weight before the walk,
mx's E8M0 powers of two, fp8's float32 ones). The refinement moves a value to the grid point
nearest the column's minimizer on the line, the best grid point of a 1-D quadratic for any
grid, so it never raises the objective there either.

`aux` is what a group keeps besides its float32 scale: integer zero points, or a float format's
stored scale codes (E4M3 / E8M0, int32 here), from which the packed weight is built at the end.

K-quants (q4_k, q6_k) take their parameters per 256-column super-block (`k_group`, the unit
whose scales are decided together: float16 d, dmin and the sub-block codes, by the same search
as RTN, formats/kquant.py) while the arithmetic runs per sub-block (`k_cell`, 32 or 16
columns): `params` returns one scale per sub-block, s = d·sc, and an int64 aux per sub-block
packing sc, m and the float16 bits of d and dmin; the arithmetic zero is mn/s (q4_k: u =
round(w/s + mn/s), q = (u − mn/s)·s = s·u − mn) or 32 (q6_k). So GPTQ decides every code
inside scales fixed per super-block when the walk reaches it (dynamic groups) or before it
(static groups, act-order), as it does for groups.
"""
from __future__ import annotations

import dataclasses

import torch

from qpass.formats import QuantizedWeight, compute_qparams, float_qparams
from qpass.formats.floating import element, nvfp4_global_scale
from qpass.formats.kquant import kformat, kquant_rtn
from qpass.formats.minifloat import encode, round_to
from qpass.specs import QuantSpec
from qpass.specs.kquant_spec import QK_K


def k_group(spec: QuantSpec) -> int | None:
    """Columns per parameter group along K (the columns whose parameters are decided
    together): a group spec's size, an fp8 b<size> block's side, a K-quant's super-block,
    else None."""
    if spec.is_kquant:
        return QK_K
    return spec.group_size if spec.granularity in ("group", "block") else None


def k_cell(spec: QuantSpec) -> int | None:
    """Columns per scale along K inside a parameter group: a K-quant's sub-block, else the
    group itself."""
    return spec.group_size if spec.is_kquant else k_group(spec)


class IntGrid:
    """Integer codes u = clamp(round(w/s) + z, 0, 2^b − 1)."""
    aux_dtype = torch.int32

    def __init__(self, spec: QuantSpec, W: torch.Tensor):
        self.spec, self.top = spec, float(spec.levels - 1)

    def params(self, cols: torch.Tensor, k0: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale/zero (N, 1) for a slab of columns quantized as one group per row."""
        spec = self.spec
        if spec.granularity == "tensor":
            s, z = compute_qparams(cols, spec)
            return s.expand(cols.shape[0], 1), z.expand(cols.shape[0], 1)
        # the same spec (grid, observer, clip, scale dtype) with one group per row of the slab
        return compute_qparams(cols, dataclasses.replace(spec, granularity="channel",
                                                         group_size=None))

    def arith_zero(self, aux: torch.Tensor) -> torch.Tensor:
        return aux

    def snap_(self, u: torch.Tensor, z: torch.Tensor) -> None:
        """u = w/s on entry, its code on return."""
        u.round_().add_(z).clamp_(0.0, self.top)

    def snap_moved_(self, t: torch.Tensor) -> None:
        """t: a code-scale value (zero point included) -> the nearest code."""
        t.round_().clamp_(0.0, self.top)

    def weight(self, codes: torch.Tensor, scale: torch.Tensor, aux: torch.Tensor
               ) -> QuantizedWeight:
        """The packed weight from the solve's codes (N, K floats) and (N, n_groups) params."""
        spec = self.spec
        if spec.granularity != "group":
            scale, aux = scale[:, :1], aux[:, :1]
            if spec.granularity == "tensor":
                scale, aux = scale[:1], aux[:1]
        return QuantizedWeight.from_codes(codes.to(torch.uint8), scale, aux, spec)


class FloatGrid:
    """A floating-point format's element values under per-group scales (z = 0)."""
    aux_dtype = torch.int32

    def __init__(self, spec: QuantSpec, W: torch.Tensor,
                 global_scale: torch.Tensor | None = None):
        self.spec, self.element = spec, element(spec)
        if spec.format == "nvfp4" and global_scale is None:      # else shared with siblings
            global_scale = nvfp4_global_scale(W.abs().amax().reshape(1))
        self.global_scale = global_scale if spec.format == "nvfp4" else None
        self.row_spec = spec if spec.granularity in ("tensor", "block") or spec.format != "fp8" \
            else dataclasses.replace(spec, granularity="channel", group_size=None)

    def params(self, cols: torch.Tensor, k0: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        N = cols.shape[0]
        fs = float_qparams(cols, self.row_spec, self.global_scale)
        # weight rows per scale row: all (tensor), a block's (b<size>), else one
        rows = N if self.spec.granularity == "tensor" else \
            self.spec.group_size if self.spec.granularity == "block" else 1
        scale = fs.scale.repeat_interleave(rows, 0)[:N]
        aux = (fs.stored.to(torch.int32).repeat_interleave(rows, 0)[:N]
               if fs.stored.dtype == torch.uint8 else torch.zeros_like(scale, dtype=torch.int32))
        return scale, aux

    def arith_zero(self, aux: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(aux)

    def snap_(self, u: torch.Tensor, z: torch.Tensor) -> None:
        round_to(u, self.element, out=u)

    def snap_moved_(self, t: torch.Tensor) -> None:
        round_to(t, self.element, out=t)

    def weight(self, values: torch.Tensor, scale: torch.Tensor, aux: torch.Tensor
               ) -> QuantizedWeight:
        spec = self.spec
        if spec.format != "fp8":
            stored = aux.to(torch.uint8)                         # E4M3 / E8M0 codes
        elif spec.granularity == "block":
            stored = scale[::spec.group_size]                    # one row per block row
        elif spec.granularity == "group":
            stored = scale
        else:
            stored = scale[:1, :1] if spec.granularity == "tensor" else scale[:, :1]
        return QuantizedWeight.from_codes(encode(values, self.element), stored.contiguous(), None,
                                          spec, self.global_scale)


class KQuantGrid:
    """A K-quant's codes under per-sub-block scales s = d·sc (and mins mn = dmin·m), chosen per
    super-block by formats/kquant.py's search; aux (int64) per sub-block: sc (8 bits, two's
    complement for q6_k) | m << 8 | float16 bits of d << 16 | of dmin << 32."""
    aux_dtype = torch.int64

    def __init__(self, spec: QuantSpec, W: torch.Tensor, importance: torch.Tensor | None = None):
        self.spec, self.fmt = spec, kformat(spec)
        self.top = float((1 << self.fmt.bits) - 1)
        self.importance = importance

    def params(self, cols: torch.Tensor, k0: int | None = None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scales (N, 256/sub) and aux of one super-block of columns (N, 256); `k0`: its first
        column in K order (where `importance` is read)."""
        imp = None if self.importance is None or k0 is None else \
            self.importance[k0:k0 + cols.shape[1]]
        _, p = kquant_rtn(cols, self.spec, imp)
        n = cols.shape[1] // self.fmt.sub
        d = p.sup[..., 0].repeat_interleave(n, 1)
        scale = d * p.sc.to(torch.float32)
        aux = p.sc.to(torch.int64) & 0xFF
        aux |= _f16_bits(d) << 16
        if self.fmt.with_min:
            aux |= p.m.to(torch.int64) << 8
            aux |= _f16_bits(p.sup[..., 1].repeat_interleave(n, 1)) << 32
        return scale, aux

    def arith_zero(self, aux: torch.Tensor) -> torch.Tensor:
        if not self.fmt.with_min:
            return torch.full(aux.shape, float(1 << (self.fmt.bits - 1)), device=aux.device)
        sc, m, d, dmin = _unpack_aux(aux, self.fmt)
        return (dmin * m) / (d * sc)

    def snap_(self, u: torch.Tensor, z: torch.Tensor) -> None:
        u.add_(z).round_().clamp_(0.0, self.top)

    def snap_moved_(self, t: torch.Tensor) -> None:
        t.round_().clamp_(0.0, self.top)

    def weight(self, codes: torch.Tensor, scale: torch.Tensor, aux: torch.Tensor
               ) -> QuantizedWeight:
        sc, m, d, dmin = _unpack_aux(aux, self.fmt)
        n = self.fmt.n_sub
        sup = d[:, ::n, None] if not self.fmt.with_min else \
            torch.stack([d[:, ::n], dmin[:, ::n]], dim=-1)
        return QuantizedWeight.from_codes(
            codes.to(torch.uint8), sc.to(torch.int64).to(torch.uint8 if self.fmt.with_min
                                                          else torch.int8),
            m.to(torch.uint8) if self.fmt.with_min else None, self.spec, super_scale=sup)


def _f16_bits(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float16).view(torch.int16).to(torch.int64) & 0xFFFF


def _unpack_aux(aux: torch.Tensor, fmt):
    """(sc, m, d, dmin) as float32 (sc signed for q6_k) from KQuantGrid's aux."""
    sc = (aux & 0xFF).to(torch.int64)
    if not fmt.with_min:
        sc = torch.where(sc >= 128, sc - 256, sc)
    m = (aux >> 8) & 0xFF
    half = lambda bits: bits.to(torch.int16).view(torch.float16).to(torch.float32)  # noqa: E731
    d = half(((aux >> 16) & 0xFFFF) - (((aux >> 16) & 0x8000) << 1))
    dmin = half(((aux >> 32) & 0xFFFF) - (((aux >> 32) & 0x8000) << 1))
    return sc.to(torch.float32), m.to(torch.float32), d, dmin


def column_grid(spec: QuantSpec, W: torch.Tensor, importance: torch.Tensor | None = None,
                global_scale: torch.Tensor | None = None):
    """The grid for weight W (N, K, dead inputs already zeroed) under `spec`; `importance`
    (K,), a K-quant's per-column weights for its scale search (e.g. diag H); `global_scale`
    nvfp4's when shared with sibling linears (else from W)."""
    if spec.is_kquant:
        return KQuantGrid(spec, W, importance)
    if spec.is_float:
        return FloatGrid(spec, W, global_scale)
    return IntGrid(spec, W)

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
"""
from __future__ import annotations

import dataclasses

import torch

from qpass.formats import QuantizedWeight, compute_qparams, float_qparams
from qpass.formats.floating import element, nvfp4_global_scale
from qpass.formats.minifloat import encode, round_to
from qpass.specs import QuantSpec


def k_group(spec: QuantSpec) -> int | None:
    """Columns per group along K: a group spec's size, an fp8 b<size> block's side, else None."""
    return spec.group_size if spec.granularity in ("group", "block") else None


class IntGrid:
    """Integer codes u = clamp(round(w/s) + z, 0, 2^b − 1)."""

    def __init__(self, spec: QuantSpec, W: torch.Tensor):
        self.spec, self.top = spec, float(spec.levels - 1)

    def params(self, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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

    def __init__(self, spec: QuantSpec, W: torch.Tensor,
                 global_scale: torch.Tensor | None = None):
        self.spec, self.element = spec, element(spec)
        if spec.format == "nvfp4" and global_scale is None:      # else shared with siblings
            global_scale = nvfp4_global_scale(W.abs().amax().reshape(1))
        self.global_scale = global_scale if spec.format == "nvfp4" else None
        self.row_spec = spec if spec.granularity in ("tensor", "block") or spec.format != "fp8" \
            else dataclasses.replace(spec, granularity="channel", group_size=None)

    def params(self, cols: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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


def column_grid(spec: QuantSpec, W: torch.Tensor, global_scale: torch.Tensor | None = None):
    """The grid for weight W (N, K, dead inputs already zeroed) under `spec`; `global_scale`
    nvfp4's when shared with sibling linears (else from W)."""
    if spec.is_float:
        return FloatGrid(spec, W, global_scale)
    return IntGrid(spec, W)

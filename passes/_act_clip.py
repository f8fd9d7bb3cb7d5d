"""Per-linear activation clip search (QuaRot/SpinQuant's a-clip) for dynamic activation specs.

For one quantized linear with kept calibration inputs X (rows) and its (already rounded)
weight Wq, each candidate ratio r gives the output error ‖X·Wqᵀ − Q_r(X)·Wqᵀ‖², Q_r the
spec's dynamic fake quantization with clip_ratio r; the least error wins. 1.0 (no clipping)
is always a candidate, so the chosen ratio never does worse than unclipped on the sample."""
from __future__ import annotations

import dataclasses
import math

import torch

from qpass.errors import SpecError
from qpass.formats import fake_quantize

def check_candidates(candidates) -> tuple[float, ...]:
    """The candidate ratios, descending, with 1.0 added; a SpecError names a bad list."""
    try:
        vals = [float(c) for c in candidates]
    except (TypeError, ValueError):
        raise SpecError(f"clip_search must be a list of clip ratios in (0, 1], e.g. "
                        f"(1.0, 0.95, 0.9, 0.85, 0.8), got {candidates!r}") from None
    bad = [v for v in vals if not (math.isfinite(v) and 0.0 < v <= 1.0)]
    if not vals or bad:
        raise SpecError(f"clip_search must be a non-empty list of clip ratios in (0, 1] (a "
                        f"fraction of each token's absmax), got {candidates!r}"
                        + (f"; out of range: {bad}" if bad else ""))
    return tuple(sorted(set(vals) | {1.0}, reverse=True))


@torch.no_grad()
def output_errors(rows: torch.Tensor, w: torch.Tensor, spec, candidates) -> dict[float, float]:
    """‖X·Wᵀ − Q_r(X)·Wᵀ‖² per candidate r, in float64 (rows (n, K), w (N, K))."""
    x = rows.to(torch.float64)
    w = w.to(torch.float64)
    out = {}
    for r in candidates:
        d = x - fake_quantize(x, dataclasses.replace(spec, clip_ratio=r))
        out[r] = float((d @ w.T).square().sum())
    return out


def best_ratio(errors: dict[float, float]) -> float:
    """The ratio of least error; on a tie the larger one (less clipping)."""
    return min(errors, key=lambda r: (errors[r], -r))

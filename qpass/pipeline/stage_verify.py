"""The per-stage check of an exact pass in a streaming run (DESIGN §3, §12).

A stage's outputs over its cached inputs are taken before and after the pass; the largest
relative change over every floating-point output must stay within the tolerance (1e-4 in
float32, 1e-9 in float64), else VerificationError naming the pass and the stage.

A pass that changes the coordinates of the values crossing stage boundaries (Rotate: the
residual stream becomes x·Q, Pass.stage_basis) cannot keep f'(x) = f(x); its identity is
f'(x·Q) = f(x)·Q. The cache already holds the earlier stages' outputs in the new basis, so
the stage before the pass runs on those inputs taken back (x·Qᵀ), and its outputs are taken
to the new basis before the comparison."""
from __future__ import annotations

import torch

from qpass.errors import VerificationError


class StageCheck:
    """Outputs of `stage` before an exact pass `p`; `finish()` compares them after it."""

    def __init__(self, p, g, stage, runner, cache, dtype):
        self.p, self.stage, self.runner, self.cache, self.dtype = p, stage, runner, cache, dtype
        self.basis = p.stage_basis(g, stage)
        inputs = cache if self.basis is None else _Mapped(cache, self.basis, new=False)
        self.before = stage_outputs(runner, stage, inputs)
        if self.basis is not None:
            self.before = [self.basis.map(values, new=True) for values in self.before]

    def finish(self) -> float:
        """The relative change (VerificationError above the tolerance)."""
        after = stage_outputs(self.runner, self.stage, self.cache)
        rel = max((float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp(min=1e-30))
                   for a, b in zip(after, self.before) for k in b), default=0.0)
        tol = 1e-9 if self.dtype == torch.float64 else 1e-4
        if rel > tol:
            raise VerificationError(f"{self.p.name} is declared exact but changed "
                                    f"{self.stage.name}'s outputs by {rel:.2e} (relative, "
                                    f"tolerance {tol:g})")
        return rel


def stage_outputs(runner, stage, cache) -> list[dict[str, torch.Tensor]]:
    """Per batch, the stage's floating-point outputs {node name: float64 tensor}."""
    from qpass.calibration.sequential import BoundaryCache
    out = BoundaryCache()
    runner.run_stage(stage, cache, collect=out, keep=stage.live_out)
    return [{n.name: values[n.name].double() for n in stage.live_out
             if isinstance(values.get(n.name), torch.Tensor) and values[n.name].is_floating_point()}
            for values in out]


class _Mapped:
    """A boundary cache seen in the basis' new (or old) coordinates, batch by batch as it is
    read (no second copy of the cached activations)."""

    def __init__(self, cache, basis, new: bool):
        self.cache, self.basis, self.new = cache, basis, new

    def __len__(self) -> int:
        return len(self.cache)

    def __iter__(self):
        for values in self.cache:
            yield self.basis.map(values, self.new)

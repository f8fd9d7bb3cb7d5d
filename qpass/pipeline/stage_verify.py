"""The per-stage check of an exact pass (DESIGN §3, §12), done by the executor in both forms.

A stage's outputs over its cached inputs are taken before and after the pass; the largest
relative change over every floating-point output must stay within the tolerance (1e-4 in
float32, 1e-9 in float64), else VerificationError naming the pass, the stage and the first
node of the stage whose output changed on the first batch.

A pass that changes the coordinates of the values crossing stage boundaries (Rotate: the
residual stream becomes x·Q, Pass.stage_basis) cannot keep f'(x) = f(x); its identity is
f'(x·Q) = f(x)·Q. The cache already holds the earlier stages' outputs in the new basis, so
the stage before the pass runs on those inputs taken back (x·Qᵀ), and its outputs are taken
to the new basis before the comparison."""
from __future__ import annotations

from itertools import islice

import torch

from qpass.errors import VerificationError
from qpass.pipeline.verify import relative_change, tolerance_for


class StageCheck:
    """Outputs of `stage` before an exact pass `p`; `finish()` compares them after it."""

    def __init__(self, p, g, stage, runner, cache, dtype, run=None):
        self.p, self.stage, self.runner, self.cache, self.dtype = p, stage, runner, cache, dtype
        self.basis = p.stage_basis(g, stage, run)
        inputs = cache if self.basis is None else _Mapped(cache, self.basis, new=False)
        self.trace: dict = {}              # node outputs of the first batch, to name a culprit
        self.before = stage_outputs(runner, stage, inputs,
                                    self.trace if self.basis is None else None)
        if self.basis is not None:
            self.before = [self.basis.map(values, new=True) for values in self.before]

    def finish(self) -> float:
        """The relative change (VerificationError above the tolerance)."""
        after = stage_outputs(self.runner, self.stage, self.cache)
        rel = max((float((a[k] - b[k]).abs().max() / b[k].abs().max().clamp(min=1e-30))
                   for a, b in zip(after, self.before) for k in b), default=0.0)
        tol = tolerance_for(self.dtype or torch.float32)
        if rel > tol:
            raise VerificationError(f"{self.p.name} is declared exact but changed "
                                    f"{self.stage.name}'s outputs by {rel:.2e} (relative, "
                                    f"tolerance {tol:g}){self._culprit(tol)}")
        return rel

    def _culprit(self, tol: float) -> str:
        """'; first diverging node: ...' from the first batch, node by node in stage order."""
        if not self.trace:
            return ""
        after: dict = {}
        self.runner.run_stage(self.stage, islice(self.cache, 1), trace=after)
        for n in self.stage.nodes:
            if n.name in self.trace and n.name in after:
                rel = relative_change(self.trace[n.name], after[n.name])
                if rel > tol:
                    return f"; first diverging node: {n.name!r} (relative change {rel:.3e})"
        return "; no node present before and after diverges (the change is in new nodes)"


def stage_outputs(runner, stage, cache, trace: dict | None = None) -> list[dict[str, torch.Tensor]]:
    """Per batch, the stage's floating-point outputs {node name: float64 tensor}."""
    from qpass.calibration.sequential import BoundaryCache
    out = BoundaryCache()
    runner.run_stage(stage, cache, collect=out, keep=stage.live_out, trace=trace)
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

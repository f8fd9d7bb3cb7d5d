"""The pass contract (DESIGN §3): facts a pass requires, provides and destroys.

The pipeline checks the whole order against these declarations before any compute, so a
wrong order fails in milliseconds with a message naming the pass, the fact and its provider."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qpass.ir import QGraph


class Fact(str, enum.Enum):
    NORMS_FUSED = "norms_fused"          # norm weights folded into consumers; norms weightless
    ROTATED = "rotated"                  # residual stream rotated (QuaRot) / DuQuant transforms
    SMOOTHED = "smoothed"                # SmoothQuant / AWQ scales folded
    OBSERVED = "observed"                # activation observers inserted
    CALIBRATED = "calibrated"            # observers hold calibration statistics
    WEIGHTS_QUANTIZED = "weights_quantized"
    ACTS_QUANTIZED = "acts_quantized"
    LOWERED = "lowered"                  # quantized nodes replaced by backend kernel ops

    def __str__(self) -> str:
        return self.name


@dataclass
class PassResult:
    """What a pass did: names of nodes it changed, metrics for the report, notes for humans."""
    nodes_changed: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class PassContext:
    """Everything a pass may use besides the graph. `calib` is a CalibrationSet or None;
    `probe` the probe batch (tuple of model inputs) used for verification and metrics;
    `state` carries data between passes (e.g. activation statistics)."""
    calib: Any = None
    probe: tuple | None = None
    seed: int = 0
    progress: Any = None                 # a rich Progress, or None when quiet
    state: dict[str, Any] = field(default_factory=dict)

    def task(self, description: str, total: int | None = None):
        """A progress task id (or None); passes call advance(task) as they go."""
        if self.progress is None:
            return None
        return self.progress.add_task(description, total=total)

    def advance(self, task, n: int = 1) -> None:
        if self.progress is not None and task is not None:
            self.progress.advance(task, n)


class Pass:
    requires: frozenset = frozenset()
    provides: frozenset = frozenset()
    destroys: frozenset = frozenset()
    exact: bool = False                  # semantics-preserving up to float rounding: verified
    needs_calibration: bool = False
    changes_weights: bool = False        # rotation/smoothing: must run before weight rounding
    is_lowering: bool = False            # must be last

    @property
    def name(self) -> str:
        return type(self).__name__

    def config(self) -> dict:
        """JSON-able parameters, recorded in the manifest."""
        return {k: (str(v) if not isinstance(v, (int, float, str, bool, type(None))) else v)
                for k, v in vars(self).items() if not k.startswith("_")}

    def run(self, g: "QGraph", ctx: PassContext) -> PassResult:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{self.name}({args})"

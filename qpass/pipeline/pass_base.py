"""The pass contract (DESIGN §3): facts a pass requires, provides and destroys.

The pipeline checks the whole order against these declarations before any compute, so a
wrong order fails in milliseconds with a message naming the pass, the fact and its provider."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from qpass.display import progress as progress_lines
from qpass.errors import PipelineError

if TYPE_CHECKING:
    from qpass.ir import QGraph


class Fact(str, enum.Enum):
    NORMS_FUSED = "norms_fused"          # norm weights folded into consumers; norms weightless
    ROTATED = "rotated"                  # residual stream rotated (QuaRot) / DuQuant transforms
    SMOOTHED = "smoothed"                # SmoothQuant / AWQ scales folded
    WEIGHTS_QUANTIZED = "weights_quantized"
    ACTS_QUANTIZED = "acts_quantized"    # activation specs set (static ones with their scales)
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
    """Everything a pass may use besides the graph, for the stage it runs on.

    calib: the CalibrationSet or None; scheme: the pipeline's scheme (None when it has none);
    stage: the Stage (prefix, block i, suffix; qpass.calibration.sequential) whose nodes the
    pass may change — the only nodes whose weights are real when the run streams; runner: the
    SequentialRunner that executes a stage over `inputs`, the stage's cached inputs as this
    pass must see them (Pass.stage_inputs; None when no pass of the run needs activations);
    reference: the second cache a pass asked for (Pass.reference_inputs), else None;
    run: what the pass's `start` returned for this run (its per-run state, owned by the
    executor); work_dir: the run's locked work folder (work_dir.py) when it writes an output,
    else None — where a pass keeps resumable state of its own (LearnedRotate's training)."""
    calib: Any = None
    scheme: Any = None
    seed: int = 0
    progress: Any = None                 # the run's progress flag; passes use task()/advance()
    stage: Any = None
    runner: Any = None
    inputs: Any = None
    reference: Any = None                # Pass.reference_inputs' cache, else None
    run: Any = None
    work_dir: Any = None
    _tasks: list = field(default_factory=list, repr=False)

    @property
    def nodes(self) -> set:
        """The stage's nodes as a set (membership tests)."""
        return set(self.stage.nodes) if self.stage is not None else set()

    def task(self, description: str, total: int | None = None, unit: str = ""):
        """A qpass.display.progress phase inside the stage's; passes call advance(task) as they go
        and the executor closes it when the pass returns."""
        ph = progress_lines.begin(description, total=total, unit=unit)
        self._tasks.append(ph)
        return ph

    def advance(self, task, n: int = 1) -> None:
        if task is not None:
            task.advance(n)

    def close_tasks(self) -> None:
        while self._tasks:
            self._tasks.pop().close()


@dataclass(frozen=True)
class BasisChange:
    """How a pass changes the coordinates of values crossing a stage's boundaries (see
    Pass.stage_basis): the boundary values named in `names` (graph node names) are mapped
    from the coordinates before the pass to those after it by `to_new`, back by `to_old`."""
    names: frozenset
    to_new: Callable
    to_old: Callable

    def map(self, values: dict, new: bool) -> dict:
        """A boundary-cache entry {node name: value} in the new (or the old) coordinates."""
        fn = self.to_new if new else self.to_old
        return {k: fn(v) if k in self.names else v for k, v in values.items()}


PASSES: dict[str, type] = {}          # every Pass subclass by name (Pipeline.from_manifest)


class Pass:
    """A pass: its parameters are dataclass fields (subclasses are `@dataclass(eq=False,
    repr=False)`), recorded in the manifest with the class's VERSION, so that
    `Pass.from_config` / `Pipeline.from_manifest` rebuild exactly the pass that ran.

    requires: every fact must hold before; requires_any: at least one of them must (e.g.
    Lower needs weights or activations quantized); provides: facts that hold after — the
    executor checks each one on every stage and over the run (qpass/pipeline/facts.py) and
    raises PipelineError naming the pass and the fact when it does not; destroys: facts no longer true after."""
    VERSION: ClassVar[int] = 1
    requires: frozenset = frozenset()
    requires_any: frozenset = frozenset()
    provides: frozenset = frozenset()
    destroys: frozenset = frozenset()
    exact: bool = False                  # semantics-preserving up to float rounding: verified
    needs_calibration: bool = False
    changes_weights: bool = False        # rotation/smoothing: must run before weight rounding
    is_lowering: bool = False            # must be last

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        if not cls.__name__.startswith("_") and not cls.__dict__.get("ABSTRACT", False):
            PASSES[cls.__name__] = cls

    @property
    def name(self) -> str:
        return type(self).__name__

    # ---- parameters -------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """The pass's parameters (its dataclass fields), as given."""
        return {f.name: getattr(self, f.name) for f in fields(self)} if is_dataclass(self) else {}

    def config(self) -> dict:
        """JSON-able parameters with the config version, recorded in the manifest."""
        return {"version": self.VERSION, **{k: _to_json(v) for k, v in self.params().items()}}

    @classmethod
    def from_config(cls, config: dict) -> "Pass":
        """The pass `config()` describes (PipelineError for another version or unknown keys)."""
        cfg = dict(config)
        version = cfg.pop("version", None)
        if isinstance(version, int) and not isinstance(version, bool) and version < cls.VERSION:
            cfg, version = cls.upgrade_config(cfg, version), cls.VERSION
        if version != cls.VERSION:
            raise PipelineError(f"{cls.__name__} config version {version} cannot be rebuilt by "
                                f"this qpass ({cls.__name__} config version {cls.VERSION}); use "
                                f"the qpass version that wrote it")
        known = {f.name for f in fields(cls)} if is_dataclass(cls) else set()
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise PipelineError(f"{cls.__name__} config has unknown parameters {unknown}; "
                                f"known: {sorted(known)}")
        return cls(**{k: _from_json(v) for k, v in cfg.items()})

    # parameters older VERSIONs recorded that are not part of the result (e.g. where a run
    # kept its caches, its batch size): dropped when an older config is rebuilt
    DROPPED: ClassVar[tuple] = ()

    @classmethod
    def upgrade_config(cls, config: dict, version: int) -> dict:
        """A config recorded by an older VERSION of this pass, in today's terms: DROPPED
        parameters left out; a pass without any cannot rebuild an older config."""
        if cls.DROPPED:
            return {k: v for k, v in config.items() if k not in cls.DROPPED}
        raise PipelineError(f"{cls.__name__} config version {version} cannot be rebuilt by "
                            f"this qpass ({cls.__name__} config version {cls.VERSION}); use "
                            f"the qpass version that wrote it")

    # ---- scheme -------------------------------------------------------------------------
    def with_scheme(self, scheme) -> "Pass":
        """This pass reading the pipeline's `scheme` where it has none of its own (a copy;
        passes without a scheme parameter are returned unchanged)."""
        return self

    # ---- the one entry point (DESIGN §3) ------------------------------------------------
    def run(self, g: "QGraph", ctx: PassContext) -> PassResult:
        """Do this pass's work on the stage `ctx.stage` of `g` (its nodes only) and say what
        changed. Called by the executor (qpass/pipeline/executor.py) once per stage, in
        pipeline order; the executor alone recompiles, verifies and checks `provides`."""
        raise NotImplementedError

    # Which cached inputs `ctx.inputs` holds for a stage, i.e. the earlier stages in which state:
    # "processed": after every pass of the pipeline (sequential GPTQ, the default);
    # "before": as they were just before this pass (statistics of the model this pass
    #           transforms: SmoothQuant, DuQuant, static observers, GPTQ(sequential=False));
    # "after": right after this pass, before the later ones (AWQ: smoothed, not yet rounded).
    stage_inputs: ClassVar[str] = "processed"
    # A second cache a pass may compare against, `ctx.reference`: None (none), or "before":
    # the earlier stages as they were just before this pass, i.e. the float model's own
    # trajectory for a pass that comes before every quantizing pass (LearnedAffine's
    # target="model": blocks trained on the quantized inputs to give the float outputs).
    reference_inputs: ClassVar[str | None] = None

    def start(self, g: "QGraph", ctx: PassContext, saved: Any = None) -> Any:
        """Called once per run before the first stage, on the whole graph as captured
        (structure only when streaming), also when a streamed run resumes: what every stage
        must share (Rotate's Q, DuQuant's group numbering, AWQ's fitted scheme) is fixed here.
        Returns the pass's run state (handed back as `ctx.run` at every stage) or None. A
        state with a `record()` method is saved with a streamed run's progress; a resumed run
        passes that record back as `saved`."""
        return None

    @staticmethod
    def merged_metrics(metrics: dict) -> dict:
        """The run's metrics for the report, from its stages' results merged
        (executor_records.merge_results: counts add, tables merge); a pass whose summary is
        not a sum over stages (a max, a mean) recomputes it here."""
        return metrics

    def stage_basis(self, g: "QGraph", stage, run: Any) -> Any:
        """A pass that changes the coordinates of values crossing stage boundaries (Rotate:
        the residual stream becomes x·Q) returns a BasisChange for `stage`, so the stage's
        exactness is checked as f'(x·Q) = f(x)·Q instead of f'(x) = f(x); None otherwise."""
        return None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{self.name}({args})"


def _to_json(v):
    from qpass.specs import QuantSpec, Scheme
    if isinstance(v, Scheme):
        return {"scheme": v.to_dict()}
    if isinstance(v, QuantSpec):
        return {"spec": str(v)}
    if isinstance(v, (tuple, list)):
        return [_to_json(x) for x in v]
    if isinstance(v, (int, float, str, bool, type(None))):
        return v
    raise PipelineError(f"pass parameter value {v!r} ({type(v).__name__}) cannot be recorded; "
                        f"use numbers, strings, schemes or specs")


def _from_json(v):
    from qpass.specs import QuantSpec, Scheme
    if isinstance(v, dict) and set(v) == {"scheme"}:
        return Scheme.from_dict(v["scheme"])
    if isinstance(v, dict) and set(v) == {"spec"}:
        return QuantSpec.parse(v["spec"])
    if isinstance(v, list):
        return tuple(_from_json(x) for x in v)
    return v


class SchemedPass(Pass):
    """A pass parameterised by a quantization scheme (field `scheme`): its own when given,
    else the pipeline's (`Pipeline([...], scheme="w4a4")` binds it), else DEFAULT_SCHEME.
    Subclasses compute facts that depend on the scheme in `scheme_provides`."""
    ABSTRACT: ClassVar[bool] = True
    DEFAULT_SCHEME: ClassVar[str | None] = "w4a16g128"
    SCHEME_FIELD: ClassVar[str] = "scheme"

    def __post_init__(self):
        self.bind_scheme()

    def bind_scheme(self) -> None:
        """Parse the scheme field (from __post_init__); record whether it was given."""
        given = getattr(self, self.SCHEME_FIELD)
        self._explicit_scheme = given is not None
        value = given if given is not None else self.DEFAULT_SCHEME
        setattr(self, self.SCHEME_FIELD, None if value is None else self.parse_scheme(value))
        self.provides = self.scheme_provides()

    def parse_scheme(self, value):
        from qpass.specs import Scheme
        return Scheme.parse(value)

    def scheme_provides(self) -> frozenset:
        return type(self).provides

    def with_scheme(self, scheme) -> "Pass":
        if scheme is None or self._explicit_scheme:
            return self
        bound = replace(self, **{self.SCHEME_FIELD: scheme})
        bound._explicit_scheme = False   # the pipeline's: another pipeline may bind its own
        return bound

"""ObserveActivations (DESIGN §3): activation specs, calibrated scales, input statistics.

For every covered linear the pass sets `act_spec` on its QuantLinear (a float linear is wrapped
in a QuantLinear with weight_spec None, i.e. weights kept in high precision). Dynamic specs
(per-token, or any `:dyn` spec) compute their scales from each input at run time; static specs
get `act_scale`/`act_zero` from the calibration set with the spec's observer:

  minmax      the range of every calibration input of the linear
  percentile  the 99.9th percentile of |x| (sym) or the 0.1/99.9 percentiles (asym)
  mse         the range shrink (1.0, 0.975, …, 0.5) with the least squared rounding error

all computed by qpass.formats.compute_qparams on the gathered calibration inputs (a seeded
subsample of at most `max_values` numbers per linear, so the cost stays bounded). In every case
the per-linear input statistics (absmax, max/median ratio of per-channel absmax, top-5 outlier
channels) go to the report; they come from the one collector, qpass.calibration.stats.

Activation clipping (QuaRot/SpinQuant's a-clip): `clip_ratio=r` sets one ratio on every
observed spec (QuaRot's 0.9); `clip_search=(1.0, 0.95, …)` chooses, per linear with a
dynamic spec, the ratio of least output error ‖X·Wqᵀ − Q_r(X)·Wqᵀ‖² on a seeded sample of at
most `clip_rows` of its calibration inputs (passes/_act_clip.py). With neither, a ratio an
earlier pass learned for the linear (LearnedAffine's, node meta "act_clip") is used. The ratio
is part of the linear's act_spec, so it is saved, loaded and exported (or refused) with it."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Any

from qpass.calibration.stats import InputStats, all_reduce_stats
from qpass.errors import CalibrationError, SpecError
from qpass.formats import compute_qparams
from qpass.ir.qlinear import QuantLinear
from qpass.pipeline.pass_base import Fact, PassContext, PassResult, SchemedPass
from qpass.specs import QuantSpec, Scheme
from qpass.specs.float_spec import is_float_head, spec_head

from ._act_clip import best_ratio, check_candidates, output_errors
from ._quantize_common import replace_linear

@dataclass(eq=False, repr=False)
class ObserveActivations(SchemedPass):
    """ObserveActivations(spec_or_scheme=None, observer=None): an activation spec string
    (`"int8:token:dyn"`, `"int8:tensor:static"`), a scheme name / Scheme (its act spec and
    overrides apply; head and embeddings stay high precision), a QuantSpec, or None for the
    pipeline's scheme (int8:token:dyn without one). `observer` overrides the spec's observer
    (minmax | percentile | mse). `clip_ratio` sets one activation clip ratio; `clip_search`
    (candidate ratios) searches one per linear with a dynamic spec, on `clip_rows` inputs."""
    spec_or_scheme: Any = None
    observer: str | None = None
    max_values: int = 1 << 22
    clip_ratio: float | None = None
    clip_search: tuple | None = None
    clip_rows: int = 256
    DEFAULT_SCHEME = "int8:token:dyn"
    SCHEME_FIELD = "spec_or_scheme"
    needs_calibration = True
    VERSION = 2                       # 2: batch_size is the run's (Pipeline.run)
    DROPPED = ("batch_size",)
    provides = frozenset({Fact.ACTS_QUANTIZED})

    def __post_init__(self):
        if self.clip_search is not None:
            if self.clip_ratio is not None:
                raise SpecError("ObserveActivations: give clip_ratio (one ratio) or clip_search "
                                "(candidates to choose from per linear), not both")
            self.clip_search = check_candidates(self.clip_search)
            if not isinstance(self.clip_rows, int) or self.clip_rows < 1:
                raise SpecError(f"clip_rows must be a positive number of calibration rows, got "
                                f"{self.clip_rows!r}")
        super().__post_init__()
        self.scheme = self.spec_or_scheme

    def parse_scheme(self, spec_or_scheme) -> Scheme:
        """The scheme whose activation spec (with `observer` applied) this pass sets."""
        head = spec_or_scheme.strip().lower().split(":")[0] if isinstance(spec_or_scheme, str) \
            else ""
        is_spec = isinstance(spec_or_scheme, QuantSpec) or head.startswith("int") or \
            is_float_head(head)
        if is_spec:
            spec = QuantSpec.parse(spec_or_scheme)
            scheme = Scheme(name=str(spec), weight=None, act=self._with_observer(spec))
        else:
            sch = Scheme.parse(spec_or_scheme)
            if sch.act is None:
                raise SpecError(f"scheme {sch.name!r} has no activation spec to observe; use "
                                f"e.g. 'w4a8' or an activation spec like 'int8:token:dyn'")
            scheme = replace(sch, act=self._with_observer(sch.act))
        act = scheme.act
        if not act.dynamic and act.granularity != "tensor":
            raise SpecError(f"static activation spec {act} must be per-tensor: a per-channel "
                            f"activation scale cannot be applied by an integer matmul; use "
                            f"'{spec_head(act)}:tensor' (static) or '{spec_head(act)}:token:dyn'")
        return scheme

    def _with_observer(self, spec: QuantSpec) -> QuantSpec:
        if self.observer is not None:
            spec = dataclasses.replace(spec, observer=self.observer)
        if self.clip_ratio is not None:
            spec = dataclasses.replace(spec, clip_ratio=self.clip_ratio)
        return spec

    def __repr__(self) -> str:
        clip = "" if self.clip_search is None else f", clip_search={list(self.clip_search)}"
        return f"ObserveActivations({str(self.scheme.act)!r}{clip})"

    def _targets(self, g) -> list[tuple]:
        out = []
        for node in g.linears(include_head=True):
            role = node.meta.get("qpass", {}).get("role")
            _, aspec, reason = self.scheme.spec_for(node.target, role)
            if aspec is not None:
                out.append((node, g.module(node), aspec, reason))
        return out

    def _static_rows(self, targets) -> dict[str, int]:
        """Rows kept per static target for its observer (bounded by max_values numbers)."""
        return {n.target: self.max_values // m.in_features for n, m, a, _ in targets if not a.dynamic}

    def _kept_rows(self, targets) -> dict[str, int]:
        """Rows kept per target: the static observers' and the clip search's."""
        rows = self._static_rows(targets)
        if self.clip_search is not None:
            for n, m, a, _ in targets:
                if a.dynamic:
                    rows[n.target] = min(self.clip_rows, self.max_values // m.in_features)
        return rows

    # static observers calibrate on the earlier stages as they were before this pass (weights
    # rounded, activations still float), the model whose activations they are set for
    stage_inputs = "before"

    def run(self, g, ctx: PassContext) -> PassResult:
        """This stage's linears, statistics over the stage's cached inputs."""
        nodes = ctx.nodes
        targets = [t for t in self._targets(g) if t[0] in nodes]
        rows = self._kept_rows(targets)
        stats = {n.target: InputStats(n.target, keep_rows=rows.get(n.target, 0), seed=ctx.seed)
                 for n, *_ in targets}
        if stats:
            ctx.runner.run_stage(ctx.stage, ctx.inputs,
                                 watch={t: st.add for t, st in stats.items()})
            all_reduce_stats(stats.values())
        return self._apply(g, ctx, targets, stats)

    def _apply(self, g, ctx: PassContext, targets, stats) -> PassResult:
        static = self._static_rows(targets)
        res = PassResult()
        task = ctx.task("ObserveActivations", total=len(targets))
        for node, mod, aspec, reason in targets:
            st = stats[node.target]
            if not st.tokens and not aspec.dynamic:
                raise CalibrationError(f"{node.target}: no calibration token was routed to it, so "
                                       f"its static activation scale cannot be observed; "
                                       f"calibrate on more data or use dynamic activations")
            q = mod if isinstance(mod, QuantLinear) else None
            if q is None:
                q = QuantLinear.from_linear(mod, None, aspec)
            learned = node.meta.get("qpass", {}).get("act_clip")
            if learned is not None and self.clip_ratio is None and self.clip_search is None:
                aspec = dataclasses.replace(aspec, clip_ratio=learned)   # LearnedAffine's
                res.metrics.setdefault("act_clip", {})[node.target] = {"ratio": learned,
                                                                       "learned": True}
            if self.clip_search is not None and aspec.dynamic and st.tokens:
                errs = output_errors(st.rows, q.dequantized_weight(), aspec, self.clip_search)
                aspec = dataclasses.replace(aspec, clip_ratio=best_ratio(errs))
                res.metrics.setdefault("act_clip", {})[node.target] = {
                    "ratio": aspec.clip_ratio, "error": errs[aspec.clip_ratio],
                    "error_unclipped": errs[1.0]}
            q.act_spec = aspec
            if not aspec.dynamic:
                scale, zero = compute_qparams(st.rows, aspec)
                dev = next(iter(list(q.buffers()) + list(q.parameters()))).device
                q.act_scale, q.act_zero = scale.to(dev), zero.to(dev)
            replace_linear(g, node, q, reason=reason)
            res.metrics.setdefault("act_stats", {})[node.target] = \
                st.to_dict() if st.tokens else {"tokens": 0}
            res.nodes_changed.append(node.name)
            ctx.advance(task)
        res.metrics["observed"] = len(targets)
        res.metrics["static"] = len(static)
        return res

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
channels) go to the report and to ctx.state["act_stats"]; `collect_input_stats(g, calib)` is
the reusable collector (SmoothQuant, AWQ and `qpass inspect --outliers` use it)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from qpass.errors import CalibrationError, SpecError
from qpass.formats import compute_qparams
from qpass.ir.qlinear import QuantLinear
from qpass.pipeline.pass_base import Fact, Pass, PassContext, PassResult
from qpass.specs import QuantSpec, Scheme

from ._quantize_common import replace_linear

TOP_OUTLIERS = 5


@dataclass
class Stats:
    """Statistics of one linear's input over the calibration set."""
    channel_absmax: torch.Tensor            # (K,) float32: max |x| per input channel
    lo: float = float("inf")                # overall min / max
    hi: float = float("-inf")
    tokens: int = 0
    samples: list = field(default_factory=list, repr=False)   # kept rows (static observers)

    @property
    def absmax(self) -> float:
        return float(self.channel_absmax.max())

    @property
    def max_median_ratio(self) -> float:
        """How far the largest channel sticks out: max / median of per-channel absmax."""
        med = float(self.channel_absmax.median())
        return float("inf") if med == 0 else self.absmax / med

    def top_outliers(self, k: int = TOP_OUTLIERS) -> list[tuple[int, float]]:
        vals, idx = self.channel_absmax.topk(min(k, self.channel_absmax.numel()))
        return [(int(i), float(v)) for i, v in zip(idx, vals)]

    def to_dict(self) -> dict:
        return {"absmax": self.absmax, "max_median_ratio": self.max_median_ratio,
                "top_outliers": self.top_outliers(), "min": self.lo, "max": self.hi,
                "tokens": self.tokens}


class _Recorder:
    """Forward pre-hook accumulating Stats; optionally keeps rows for static observers."""

    def __init__(self, K: int, keep_rows: int = 0, seed: int = 0):
        self.stats = Stats(torch.zeros(K))
        self.keep_rows = keep_rows
        self.gen = torch.Generator().manual_seed(seed)

    def __call__(self, module, args) -> None:
        x = args[0].detach()
        x2 = x.reshape(-1, x.shape[-1])
        if not bool(torch.isfinite(x2).all()):
            raise CalibrationError(f"NaN/Inf in the calibration input of a linear "
                                   f"({type(module).__name__} {tuple(x.shape)})")
        s = self.stats
        s.channel_absmax = torch.maximum(s.channel_absmax, x2.abs().amax(0).float().cpu())
        s.lo, s.hi = min(s.lo, float(x2.min())), max(s.hi, float(x2.max()))
        s.tokens += x2.shape[0]
        if self.keep_rows:
            s.samples.append(x2.double().cpu())
            if sum(r.shape[0] for r in s.samples) > 4 * self.keep_rows:   # bound the memory
                s.samples = [self.gathered()]

    def gathered(self) -> torch.Tensor:
        """All kept rows, subsampled (seeded) to at most keep_rows rows."""
        rows = torch.cat(self.stats.samples)
        if rows.shape[0] > self.keep_rows:
            idx = torch.randperm(rows.shape[0], generator=self.gen)[:self.keep_rows]
            rows = rows[idx.sort().values]
        return rows


def _run_calibration(g, calib, recorders: dict, batch_size: int = 8) -> None:
    if calib is None or len(calib) == 0:
        raise CalibrationError("activation statistics need calibration data: pass a "
                               "qpass.calibration.CalibrationSet")
    handles = [g.gm.get_submodule(t).register_forward_pre_hook(r) for t, r in recorders.items()]
    dev = next(iter(g.gm.parameters())).device
    try:
        with torch.no_grad():
            for batch in calib.batches(batch_size):
                g.gm(*(b.to(dev) for b in batch))
    finally:
        for h in handles:
            h.remove()


def collect_input_stats(g, calib, batch_size: int = 8, include_head: bool = True
                        ) -> dict[str, Stats]:
    """{linear module name: Stats of its input} over one pass of `calib` through the graph."""
    recorders = {n.target: _Recorder(_in_features(g.module(n)))
                 for n in g.linears(include_head=include_head)}
    _run_calibration(g, calib, recorders, batch_size)
    return {t: r.stats for t, r in recorders.items()}


def _in_features(m: nn.Module) -> int:
    return int(getattr(m, "in_features"))


class ObserveActivations(Pass):
    """ObserveActivations(spec_or_scheme, observer=None): an activation spec string
    (`"int8:token:dyn"`, `"int8:tensor:static"`), a scheme name / Scheme (its act spec and
    overrides apply; head and embeddings stay high precision), or a QuantSpec. `observer`
    overrides the spec's observer (minmax | percentile | mse)."""

    needs_calibration = True
    provides = frozenset({Fact.OBSERVED, Fact.CALIBRATED, Fact.ACTS_QUANTIZED})

    def __init__(self, spec_or_scheme="int8:token:dyn", observer: str | None = None,
                 batch_size: int = 8, max_values: int = 1 << 22):
        self.observer = observer
        self.batch_size, self.max_values = batch_size, max_values
        is_spec = isinstance(spec_or_scheme, QuantSpec) or (
            isinstance(spec_or_scheme, str) and spec_or_scheme.strip().lower().startswith("int"))
        if is_spec:
            spec = QuantSpec.parse(spec_or_scheme)
            self.scheme = Scheme(name=str(spec), weight=None, act=self._with_observer(spec))
        else:
            sch = Scheme.parse(spec_or_scheme)
            if sch.act is None:
                raise SpecError(f"scheme {sch.name!r} has no activation spec to observe; use "
                                f"e.g. 'w4a8' or an activation spec like 'int8:token:dyn'")
            self.scheme = Scheme(sch.name, sch.weight, self._with_observer(sch.act), sch.attn,
                                 sch.overrides, sch.keep_roles)
        act = self.scheme.act
        if not act.dynamic and act.granularity != "tensor":
            raise SpecError(f"static activation spec {act} must be per-tensor: a per-channel "
                            f"activation scale cannot be applied by an integer matmul; use "
                            f"'int{act.bits}:tensor' (static) or 'int{act.bits}:token:dyn'")

    def _with_observer(self, spec: QuantSpec) -> QuantSpec:
        if self.observer is None:
            return spec
        return QuantSpec(spec.bits, spec.symmetric, spec.granularity, spec.group_size,
                         spec.dynamic, spec.clip_ratio, self.observer)

    def config(self) -> dict:
        return {"act": str(self.scheme.act), "scheme": self.scheme.name,
                "observer": self.scheme.act.observer}

    def __repr__(self) -> str:
        return f"ObserveActivations({str(self.scheme.act)!r})"

    def _targets(self, g) -> list[tuple]:
        out = []
        for node in g.linears(include_head=True):
            role = node.meta.get("qpass", {}).get("role")
            _, aspec, reason = self.scheme.spec_for(node.target, role)
            if aspec is not None:
                out.append((node, g.module(node), aspec, reason))
        return out

    def run(self, g, ctx: PassContext) -> PassResult:
        targets = self._targets(g)
        static = {n.target for n, _, a, _ in targets if not a.dynamic}
        recorders = {n.target: _Recorder(_in_features(m), self.max_values // _in_features(m)
                                         if n.target in static else 0, ctx.seed)
                     for n, m, _, _ in targets}
        _run_calibration(g, ctx.calib, recorders, self.batch_size)
        res = PassResult()
        task = ctx.task("ObserveActivations", total=len(targets))
        stats_out = ctx.state.setdefault("act_stats", {})
        for node, mod, aspec, reason in targets:
            rec = recorders[node.target]
            q = mod if isinstance(mod, QuantLinear) else None
            if q is None:
                q = QuantLinear.from_linear(mod, None, aspec)
            q.act_spec = aspec
            if not aspec.dynamic:
                scale, zero = compute_qparams(rec.gathered(), aspec)
                dev = next(iter(list(q.buffers()) + list(q.parameters()))).device
                q.act_scale, q.act_zero = scale.to(dev), zero.to(dev)
                rec.stats.samples = []
            replace_linear(g, node, q, reason=reason)
            stats_out[node.target] = rec.stats
            res.metrics.setdefault("act_stats", {})[node.target] = rec.stats.to_dict()
            res.nodes_changed.append(node.name)
            ctx.advance(task)
        res.metrics["observed"] = len(targets)
        res.metrics["static"] = len(static)
        return res

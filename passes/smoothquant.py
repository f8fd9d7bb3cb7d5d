"""SmoothQuant: migrate activation outliers into the weights, folded into the previous op (exact).

For every smoothing pair found in the graph (passes/_smoothing_pairs.py: norm → q/k/v and
gate/up by default; up → down through the gated activation, v → o under MHA and linear →
linear with `kinds=`) and every input channel j of its consumers:
    s_j = max|X_j|^α / max_c max_i |W_c[i, j]|^(1−α)        (clamped to [1e-5, 1e5])
X·diag(1/s) is folded into the producer (norm weight, or the producer's rows and bias) and
diag(s) into the consumers' columns, so the model computes the same function with no extra
node — the pass is exact and the pipeline verifies it. The quantization itself is done by a
following pass (RTN, GPTQ, ObserveActivations), which then sees flatter activations.

α is a float (the study used 0.5) or "search": per pair, the α in 0.3..0.8 minimising the
relative output error of the pair's consumers under fake quantization with `scheme` (default
w8a8: int8 per-channel weights, int8 per-token activations) on sampled calibration rows.

Interplay with FuseNorms: it does not matter whether FuseNorms ran before (norm weight 1) or
not (norm weight γ) — the scale is folded into the norm weight either way and the resulting
model is the same. But afterwards the norms are no longer weightless, so SmoothQuant destroys
NORMS_FUSED: Rotate (which requires weightless norms) must run before it, or not at all, and
a FuseNorms placed AFTER SmoothQuant would fold the scales back into the consumers and undo
the smoothing — keep FuseNorms first."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from qpass.errors import SpecError
from qpass.formats import fake_quantize
from qpass.calibration.stats import (InputStats, all_reduce_stats, channel_ratio,
                                     collect_input_stats)
from qpass.ir.regions import KINDS, Region, smoothing_regions
from qpass.pipeline.pass_base import Fact, PassContext, PassResult, SchemedPass
from qpass.specs import Scheme

from ._smoothing_pairs import consumer_weight_absmax, fold_scale, record_folded, record_skipped

ALPHA_GRID = tuple(round(0.3 + 0.05 * i, 2) for i in range(11))     # 0.3, 0.35, …, 0.8
SCALE_RANGE = (1e-5, 1e5)


def smoothing_scale(x_absmax: torch.Tensor, w_absmax: torch.Tensor, alpha: float) -> torch.Tensor:
    """s = max|X|^α / max|W|^(1−α) per channel (float64); channels with no activation or no
    weight keep s = 1 (nothing to migrate, and a huge s would blow up other inputs)."""
    xa, wa = x_absmax.double(), w_absmax.double()
    s = xa.clamp(min=1e-12) ** alpha / wa.clamp(min=1e-12) ** (1.0 - alpha)
    s = torch.where((xa > 0) & (wa > 0), s, torch.ones_like(s))
    return s.clamp(*SCALE_RANGE)


def smoothed_error(X: torch.Tensor, weights: list[torch.Tensor], s: torch.Tensor, scheme: Scheme
                   ) -> float:
    """Σ_c ‖X·W_cᵀ − Q_a(X/s)·Q_w(W_c·diag(s))ᵀ‖² / ‖X·W_cᵀ‖² on the sample rows X."""
    s = s.to(X.dtype)
    Xs = X / s
    if scheme.act is not None:
        Xs = fake_quantize(Xs, scheme.act)
    err = 0.0
    for W in weights:
        W = W.to(X.dtype)
        Ws = W * s[None, :]
        if scheme.weight is not None:
            Ws = fake_quantize(Ws, scheme.weight)
        ref = X @ W.T
        err += float((ref - Xs @ Ws.T).pow(2).sum() / ref.pow(2).sum().clamp(min=1e-30))
    return err


@dataclass(eq=False, repr=False)
class SmoothQuant(SchemedPass):
    """SmoothQuant(alpha=0.5 | "search", scheme=None, kinds=("norm",)): per-channel smoothing
    of the pairs found in the graph whose producer kind is in `kinds`; `scheme` is only used by
    the α search (default w8a8).

    The default smooths the norm → linears pairs only, SmoothQuant's own recipe for LLaMA-like
    blocks (and the study's). up → down ("linear_rows") and v → o ("v_rows") are opt-in: on
    tiny-llada at w8a8, α = 0.5 on up → down pushed so much of down's input range into its
    per-channel int8 weights that the result lost to plain RTN (masked-token KL to FP 0.00063
    vs 0.00059; norm pairs only: 0.00053)."""

    provides = frozenset({Fact.SMOOTHED})
    destroys = frozenset({Fact.NORMS_FUSED})     # norm weights become 1/s (see module doc)
    exact = True
    needs_calibration = True
    changes_weights = True

    alpha: Any = 0.5
    scheme: Any = None
    kinds: tuple = ("norm",)
    sample_rows: int = 512
    VERSION = 2                       # 2: batch_size is the run's (Pipeline.run)
    DROPPED = ("batch_size",)
    DEFAULT_SCHEME = None          # the scheme only steers alpha="search" (w8a8 when none)

    def __post_init__(self):
        alpha = self.alpha
        if alpha != "search" and not (isinstance(alpha, (int, float)) and 0.0 <= alpha <= 1.0):
            raise SpecError(f"SmoothQuant alpha must be a number in [0, 1] or 'search', got {alpha!r}")
        unknown = set(self.kinds) - set(KINDS)
        if unknown:
            raise SpecError(f"SmoothQuant kinds {sorted(unknown)} unknown; use some of {KINDS}")
        self.kinds = tuple(self.kinds)
        super().__post_init__()

    def __repr__(self) -> str:
        kinds = "" if self.kinds == ("norm",) else f", kinds={self.kinds!r}"
        return f"SmoothQuant(alpha={self.alpha!r}{kinds})"

    def _alpha_for(self, pair: Region, g, stats: dict, absmax, w_absmax) -> float:
        if self.alpha != "search":
            return float(self.alpha)
        X = stats[str(pair.consumers[0].target)].rows.float()
        weights = [g.module(c).weight.detach() for c in pair.consumers]
        scheme = self.scheme or Scheme.parse("w8a8")
        errs = [smoothed_error(X, weights, smoothing_scale(absmax, w_absmax, a).float(), scheme)
                for a in ALPHA_GRID]
        return ALPHA_GRID[min(range(len(errs)), key=errs.__getitem__)]

    stage_inputs = "before"         # statistics of the earlier stages before this pass

    def run(self, g, ctx: PassContext) -> PassResult:
        """The pairs whose producer is in this stage (the fold stays inside the stage),
        statistics over this stage's inputs from the earlier stages before this pass."""
        nodes = ctx.nodes
        pairs = [p for p in smoothing_regions(g) if p.producer in nodes]
        todo = self._todo(pairs)
        targets = list(dict.fromkeys(str(p.consumers[0].target) for p in todo))
        stats = {t: InputStats(t, keep_rows=self._rows(), seed=ctx.seed) for t in targets}
        if stats:
            ctx.runner.run_stage(ctx.stage, ctx.inputs,
                                 watch={t: st.add for t, st in stats.items()})
            all_reduce_stats(stats.values())
        return self._smooth(g, ctx, pairs, todo, stats)

    def _todo(self, pairs) -> list[Region]:
        return [p for p in pairs if p.exact and p.kind in self.kinds]

    def _rows(self) -> int:
        return self.sample_rows if self.alpha == "search" else 0

    def _smooth(self, g, ctx: PassContext, pairs, todo, stats) -> PassResult:
        res = PassResult()
        res.notes += [f"skipped {p.label}: {p.reason}" for p in pairs if not p.exact]
        task = ctx.task("SmoothQuant: smoothing pairs", total=len(todo))
        # every scale is computed from the original weights first, then all are folded, so the
        # result does not depend on the order of pairs sharing a linear (up is both a consumer
        # of the MLP norm and the producer of up → down)
        plans = []
        for p in todo:
            absmax = stats[str(p.consumers[0].target)].channel_absmax
            w_absmax = consumer_weight_absmax(g, p)
            alpha = self._alpha_for(p, g, stats, absmax, w_absmax)
            plans.append((p, smoothing_scale(absmax, w_absmax, alpha), alpha, absmax))
        records = []
        for p, s, alpha, absmax in plans:
            fold_scale(g, p, s)
            records.append(record_folded(p, s, "SmoothQuant", alpha=alpha,
                                         ratio_before=channel_ratio(absmax),
                                         ratio_after=channel_ratio(absmax / s)))
            res.nodes_changed += [p.producer.name] + [c.name for c in p.consumers]
            ctx.advance(task)
        res.nodes_changed = list(dict.fromkeys(res.nodes_changed))
        skipped = record_skipped(pairs, "SmoothQuant")
        res.metrics.update(pairs=records, skipped_pairs=skipped, smoothed=len(records),
                           skipped=len(skipped))
        return res

"""AWQ: activation-aware per-channel scales and weight clipping, folded into the weights.

Block by block (qpass/calibration/sequential.py), for the block's calibration inputs:
1. Statistics. For every distinct linear input X of the block: mean|X| per channel and the
   Gram matrix Σ = XᵀX over all calibration tokens (float64). With Σ, the output error of a
   weight change D = W − W' is ‖X·Dᵀ‖² = Σ_rows (D·Σ·Dᵀ)_ii, so the search never revisits the
   tokens.
2. Scale search per smoothing pair found in the graph (norm → q/k/v and gate/up, up → down,
   v → o under MHA; qpass/ir/regions.py): for α = i/n_grid, i = 0..n_grid−1,
       s = mean|X|^α, normalised by √(max s · min s),
       W'_c = Q(W_c·diag(s))·diag(1/s)          (Q: round-to-nearest fake quantization per the
                                                  scheme's weight spec)
   and keep the α minimising Σ_c ‖X·W_cᵀ − X·W'_cᵀ‖² — the output error of the pair's quantized
   layer group (its consumer linears, not the whole attention/MLP module as in the original,
   which keeps the search a closed form in Σ). α = 0 is s = 1, so AWQ never does worse than RTN
   on this objective. The scale is folded exactly like SmoothQuant (producer / s, consumers'
   columns · s), and the consumers' Σ and mean|X| are rescaled to the smoothed inputs.
3. Clipping search per linear (except q and k, found by `g.qk(attention)`: their error shows
   up through the attention scores, which a per-linear output error misjudges — as in AWQ):
   per output row and quantization group, the max-clip ratio r in 1, 1 − 1/n_grid, …, 0.5
   minimising that group's share of the output error dᵀ·Σ_gg·d; the weights are then clamped
   in float to r·range. Rounding clamped weights gives exactly the codes of quantizing with
   the clipped range, so the following RTN/GPTQ pass (same scheme) needs no extra state.

AWQ only rewrites float weights: it provides SMOOTHED and never rounds (add RTN or GPTQ with
the same scheme after it; the presets do). What flows to the next block: the runner recomputes
the block with the smoothed (exact) and clipped (float) weights, so the next block calibrates
on the outputs it will see after clipping, but before rounding."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx as fx

from qpass.errors import CalibrationError
from qpass.formats import fake_quantize
from qpass.calibration.stats import InputStats, all_reduce_stats, channel_ratio, watch_regions
from qpass.ir.regions import Region, input_regions, region_of, smoothing_regions
from qpass.ir.structure import role
from qpass.pipeline.group_fit import scheme_fitted_to
from qpass.pipeline.pass_base import Fact, PassContext, PassResult, SchemedPass
from qpass.specs import QuantSpec

from ._smoothing_pairs import fold_scale, record_folded, record_skipped


def output_error(W: torch.Tensor, W_new: torch.Tensor, gram: torch.Tensor) -> float:
    """‖X·Wᵀ − X·W_newᵀ‖² from Σ = XᵀX (float64)."""
    D = (W.double() - W_new.double())
    return float(((D @ gram) * D).sum())


def awq_scale_search(X_mean: torch.Tensor, gram, weights: list[torch.Tensor],
                     specs: list[QuantSpec | None], n_grid: int) -> tuple[torch.Tensor, float, list[float]]:
    """(best s, best α, errors per α) for one pair: weights (N_c, K) of the consumers, their
    weight specs (None = kept in high precision), Σ of the shared input — or one Σ per consumer
    (MoE experts each see only the tokens routed to them)."""
    grams = list(gram) if isinstance(gram, (list, tuple)) else [gram] * len(weights)
    errors, best = [], (math.inf, None, 0.0)
    for i in range(n_grid):
        alpha = i / n_grid
        s = X_mean.double().clamp(min=1e-4) ** alpha
        s = s / (s.max() * s.min()).sqrt()
        err = 0.0
        for W, spec, G in zip(weights, specs, grams):
            if spec is None:
                continue                                     # kept in high precision: no error
            W64 = W.double()
            err += output_error(W64, fake_quantize(W64 * s[None, :], spec) / s[None, :], G)
        errors.append(err)
        if err < best[0]:
            best = (err, s, alpha)
    return best[1], best[2], errors


def _grouped_view(W: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, int]:
    gs = spec.group_size if spec.granularity == "group" else W.shape[1]
    return W.reshape(W.shape[0], W.shape[1] // gs, gs), gs


def _clamp_groups(Wg: torch.Tensor, r: torch.Tensor | float, spec: QuantSpec) -> torch.Tensor:
    """Each (row, group) of Wg clamped to r times its range (±r·absmax when symmetric)."""
    if spec.symmetric:
        m = r * Wg.abs().amax(-1, keepdim=True)
        return torch.maximum(torch.minimum(Wg, m), -m)
    hi, lo = Wg.amax(-1, keepdim=True).clamp(min=0), Wg.amin(-1, keepdim=True).clamp(max=0)
    return torch.minimum(torch.maximum(Wg, r * lo), r * hi)


def clip_search(W: torch.Tensor, spec: QuantSpec, gram: torch.Tensor, n_grid: int,
                max_shrink: float = 0.5) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """(clamped float W, ratio per (row, group), error before, error after): per row and
    group the clip ratio minimising dᵀ·Σ_gg·d, the group's own share of the output error."""
    Wg, gs = _grouped_view(W.double(), spec)
    G = Wg.shape[1]
    blocks = torch.stack([gram[g * gs:(g + 1) * gs, g * gs:(g + 1) * gs] for g in range(G)])
    best_err = best_ratio = err0 = None
    for i in range(int(max_shrink * n_grid) + 1):
        r = 1.0 - i / n_grid
        Wq = fake_quantize(_clamp_groups(Wg, r, spec).reshape(W.shape), spec).reshape(Wg.shape)
        D = Wg - Wq
        err = torch.einsum("ngk,gkl,ngl->ng", D, blocks, D)
        if best_err is None:
            best_err, best_ratio, err0 = err, torch.full_like(err, r), err
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_ratio = torch.where(better, torch.full_like(err, r), best_ratio)
    Wc = _clamp_groups(Wg, best_ratio.unsqueeze(-1), spec)
    return Wc.reshape(W.shape), best_ratio, float(err0.sum()), float(best_err.sum())


@dataclass(eq=False, repr=False)
class AWQ(SchemedPass):
    """AWQ(scheme=None, n_grid=20, clip=True): activation-aware scales + clipping for the
    scheme's weight spec (None: the pipeline's), folded into float weights; round with
    RTN/GPTQ afterwards under the same scheme."""
    scheme: Any = None
    n_grid: int = 20
    clip: bool = True
    max_shrink: float = 0.5

    VERSION = 2                       # 2: batch_size is the run's (Pipeline.run)
    DROPPED = ("batch_size",)
    provides = frozenset({Fact.SMOOTHED})
    destroys = frozenset({Fact.NORMS_FUSED})     # norm weights carry the scales afterwards
    needs_calibration = True
    changes_weights = True

    def __post_init__(self):
        self.n_grid = int(self.n_grid)
        super().__post_init__()

    def __repr__(self) -> str:
        return f"AWQ({self.scheme.name!r}, n_grid={self.n_grid}, clip={self.clip})"

    def start(self, g, ctx: PassContext, saved=None) -> "_AWQRun":
        """What every stage shares: each linear's K and the scheme fitted to the whole model
        (one group size where a layer's K needs it), fixed on the graph as captured."""
        if self.scheme.weight is None:
            raise CalibrationError(f"AWQ needs a scheme with a weight spec, got {self.scheme.name}")
        return _AWQRun({str(n.target): g.module(n).in_features for n in g.linears()},
                       scheme_fitted_to(g, self.scheme))

    stage_inputs = "after"     # earlier stages smoothed and clipped, not rounded

    def run(self, g, ctx: PassContext) -> PassResult:
        """This stage's pairs and linears, statistics over the stage's inputs from the earlier
        stages right after AWQ (before any rounding)."""
        stage, nodes = ctx.stage, ctx.nodes
        all_pairs = [p for p in smoothing_regions(g) if p.producer in nodes]
        pairs = [p for p in all_pairs if p.exact]
        skipped = [p for p in all_pairs if not p.exact]
        res = PassResult(notes=[f"skipped {p.label}: {p.reason}" for p in skipped])
        res.metrics.update(pairs=[], clipped=[])
        if not stage.linears:
            return self._finish(res, all_pairs, skipped)
        qk = {n for att in g.nodes("attention") for n in g.qk(att) if n is not None}
        regions = region_of(input_regions(g, include_head=True))
        linears = [n for n in stage.linears if role(n) == "linear"]
        watched = {regions[n].tensor: regions[n] for n in linears + [c for p in pairs
                                                                     for c in p.consumers]}
        stats, watch = watch_regions(list(watched.values()), gram=True,
                                     gram_device=torch.device("cpu"))
        ctx.runner.run_stage(stage, ctx.inputs, watch=watch)
        all_reduce_stats(stats.values())
        spec = ctx.run.spec
        for p in pairs:
            self._smooth_pair(g, spec, p, [stats[regions[c].tensor] for c in p.consumers], res)
        if self.clip:
            for n in linears:
                if n not in qk and spec(n) is not None and \
                        spec(n).granularity in ("group", "channel"):
                    self._clip_linear(g, spec(n), n, stats[regions[n].tensor], res)
        return self._finish(res, all_pairs, skipped)

    @staticmethod
    def _finish(res: PassResult, all_pairs, skipped) -> PassResult:
        res.nodes_changed = list(dict.fromkeys(res.nodes_changed))
        res.metrics.update(smoothed=len(res.metrics["pairs"]), skipped=len(skipped),
                           skipped_pairs=record_skipped(all_pairs, "AWQ"))
        return res

    def _smooth_pair(self, g, spec, p: Region, per_consumer: list[InputStats],
                     res: PassResult) -> None:
        """per_consumer: each consumer's input statistics — one object for plain groups; MoE
        experts each read their routed rows, the router (the first) all tokens."""
        specs = [spec(c) for c in p.consumers]
        if all(s is None for s in specs):
            res.notes.append(f"{p.label}: no consumer is quantized by {self.scheme.name}; not scaled")
            return
        st = max(per_consumer, key=lambda x: x.tokens)      # the producer's whole output
        weights = [g.module(c).weight.detach() for c in p.consumers]
        s, alpha, errors = awq_scale_search(st.mean_abs, [x.gram for x in per_consumer], weights,
                                            specs, self.n_grid)
        ratio_before = channel_ratio(st.channel_absmax)
        fold_scale(g, p, s)
        for x in {id(x): x for x in per_consumer}.values():
            x.rescale(s)
        rec = record_folded(p, s, "AWQ", alpha=alpha, ratio_before=ratio_before,
                            ratio_after=channel_ratio(st.channel_absmax), error_rtn=errors[0],
                            error_awq=min(errors))
        res.metrics["pairs"].append(rec)
        res.nodes_changed += [p.producer.name] + [c.name for c in p.consumers]

    def _clip_linear(self, g, spec: QuantSpec, n: fx.Node, st: InputStats,
                     res: PassResult) -> None:
        lin = g.module(n)
        Wc, ratio, e0, e1 = clip_search(lin.weight.detach(), spec, st.gram, self.n_grid,
                                        self.max_shrink)
        with torch.no_grad():
            lin.weight.copy_(Wc.to(lin.weight.dtype))
        rec = {"linear": str(n.target), "mean_clip_ratio": float(ratio.mean()),
               "min_clip_ratio": float(ratio.min()), "error_before": e0, "error_after": e1}
        res.metrics["clipped"].append(rec)
        n.meta.setdefault("qpass", {})["awq_clip"] = rec
        res.nodes_changed.append(n.name)


@dataclass(frozen=True)
class _AWQRun:
    """AWQ's state for one run (Pass.start): K per linear, the scheme fitted to the model."""
    k: dict
    fitted: Any

    def spec(self, node: fx.Node) -> QuantSpec | None:
        """The weight spec the rounding pass will use (group size fitted to the layer's K)."""
        return self.fitted.specs_for(str(node.target), role(node), self.k[str(node.target)])[0]

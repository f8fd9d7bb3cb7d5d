"""GPTQ (DESIGN §3): Hessian-aware weight rounding, block by block through the sequential runner.

Hessians H = 2·X Xᵀ / n come from the calibration inputs of the graph AS IT IS NOW — after
FuseNorms / Rotate / smoothing — so GPTQ corrects the errors of the weights that actually run.
Blocks are processed in order: inside a block, linears that read the same tensor (q/k/v,
gate/up) form a group; groups are quantized in graph order, each from inputs produced by the
already-quantized earlier groups ("true sequential"); the quantized block's outputs then feed
the next block. The single-matrix algorithm is `quantize_weight` (public, DESIGN §11):

    Wq, info = qpass.passes.gptq.quantize_weight(W, H, "int4:g128:sym", block_size=128)
"""
from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from qpass.errors import SpecError
from qpass.formats import QuantizedWeight
from qpass.ir.qlinear import QuantLinear
from qpass.ir.regions import input_regions, region_of
from qpass.pipeline.pass_base import PassContext, PassResult
from qpass.calibration.stats import all_reduce_stats, watch_regions

from ._gptq_math import (_compute_dtype, _factor_key, factor_hessian, hessian_root,
                         quantize_weight, reconstruction_error, reconstruction_errors)
from ._quantize_common import (WeightRounding, mark_attention, quantize_targets, replace_linear,
                               shared_global_scales)

__all__ = ["GPTQ", "quantize_weight", "factor_hessian", "reconstruction_error",
           "hessian_root"]


# "auto" refinement needs this many calibration tokens per input channel: below it the sweep
# lowered the calibration error but raised the error on held-out inputs (docs/RESULTS.md).
REFINE_MIN_TOKENS_PER_INPUT = 2


@dataclass(eq=False, repr=False)
class GPTQ(WeightRounding):
    """GPTQ(scheme=None): a scheme name (`"w4a16g128"`, `"w4a8"`), a Scheme or a weight spec
    string; None reads the pipeline's.
    Weights get GPTQ; the scheme's (dynamic) activation spec is set on the QuantLinear as RTN
    does. act_order=True + group specs use static groups (the packed layout keeps groups in the
    original K order); act_order="group" is group-aware reordering (groups walked by
    importance, their parameters taken as the walk reaches them). sequential=False takes every
    Hessian from the float model instead of feeding quantized blocks forward; with
    true_sequential=False the blocks are fed forward quantized but a block's linears all take
    their Hessians from its float computation (one round per block, llm-compressor's flow).
    threads: solves run side by side (where the run keeps its cached stage inputs is the
    run's choice: Pipeline.run(offload_dir=)).
    observer: the weight scale observer replacing the scheme's (`"mse"`: the least-error range
    shrink of each row, measured far better than minmax for per-channel int4; RESULTS).
    refine: sweeps of coordinate descent on GPTQ's own damped objective after each solve (only
    codes move; passes/_gptq_refine.py); "auto" does one sweep for a linear whose Hessian saw
    at least REFINE_MIN_TOKENS_PER_INPUT tokens per input channel — with fewer, H is close to
    rank-deficient and the sweep fits the calibration set instead of the layer (measured:
    docs/RESULTS.md "GPTQ against the peers").
    stage_act_quant: inside a stage, the later rounds' Hessians come from inputs computed
    with the earlier rounds' activations quantized (True) or in float (False, QuaRot's GPTQ,
    whose activation quantizers are set after the weights): the scheme's activation spec is
    then set on the stage's linears once all of them are rounded."""

    scheme: Any = None
    block_size: int = 128
    act_order: bool | str = False      # False, True or "group"
    damp: float = 0.01
    static_groups: bool = False
    sequential: bool = True
    true_sequential: bool = True      # inside a block too (False: per block, as llm-compressor)
    threads: int | None = None        # solves side by side; None = torch.get_num_threads()
    refine: int | str = "auto"        # sweeps after the solve; "auto": 1 with enough tokens
    observer: str | None = None       # the weight spec's scale observer, e.g. "mse"
    stage_act_quant: bool = True      # later rounds of a stage see quantized activations
    needs_calibration = True

    # 2: offload_dir (a path on the machine that made the checkpoint, never adopted) and
    # batch_size left the config: the run chooses them (Pipeline.run(offload_dir=, batch_size=))
    VERSION = 2
    DROPPED = ("offload_dir", "batch_size")

    def __post_init__(self):
        refine = self.refine
        if refine != "auto" and (isinstance(refine, bool) or not isinstance(refine, int)
                                 or refine < 0):
            raise SpecError(f"GPTQ refine must be 'auto' or a number of sweeps >= 0, got "
                            f"{refine!r}")
        super().__post_init__()
        w = self.scheme.weight if self.scheme is not None else None
        if self.observer is not None and w is not None and w.observer != self.observer:
            # the scheme's weight spec with this observer (its overrides keep their own)
            self.scheme = replace(self.scheme, weight=replace(w, observer=self.observer))
    def __repr__(self) -> str:
        extra = "".join(f", {k}={getattr(self, k)!r}" for k, d in
                        (("act_order", False), ("static_groups", False), ("sequential", True),
                         ("true_sequential", True), ("refine", "auto"), ("observer", None),
                         ("stage_act_quant", True))
                        if getattr(self, k) != d)
        return f"GPTQ({self.scheme.name!r}{extra})"

    @property
    def stage_inputs(self) -> str:
        """Sequential GPTQ calibrates a stage on the quantized earlier stages; with
        sequential=False every Hessian comes from the earlier stages as they were before
        GPTQ (the float model, after the transforms before it)."""
        return "processed" if self.sequential else "before"

    def round_weight(self, W, H, spec, n_tokens: int = 0):
        """One weight matrix (N, K) GPTQ-rounded to `spec` given H ∝ X Xᵀ of its inputs
        (`n_tokens` of them): the QuantizedWeight. What a model captured as it is calls per
        linear and per expert (qpass.pipeline.as_is_run)."""
        refine = self.refine
        if refine == "auto":
            refine = int(n_tokens >= REFINE_MIN_TOKENS_PER_INPUT * W.shape[1])
        _, info = quantize_weight(W.float(), H.float(), spec, self.block_size, self.act_order,
                                  self.damp, self.static_groups, refine=refine)
        return info.qweight

    # ------------------------------------------------------------------------------------
    def run(self, g, ctx: PassContext) -> PassResult:
        """This stage's linears, Hessians from the stage's cached inputs (ctx.inputs)."""
        if self.act_order not in (False, True, "group"):
            raise SpecError(f"GPTQ act_order must be False, True or 'group', got "
                            f"{self.act_order!r}")
        nodes = ctx.nodes
        targets = [t for t in quantize_targets(g, self.scheme) if t[0] in nodes]
        work = _StageWork({n.target: _Target(w, a, r) for n, _, w, a, r in targets
                           if w is not None})
        for node, lin, wspec, aspec, reason in targets:         # activation-only: nothing to solve
            if wspec is None and aspec is not None:
                replace_linear(g, node, QuantLinear.from_linear(lin, None, aspec), reason=reason)
                work.res.nodes_changed.append(node.name)
        self._stage(g, ctx, work)
        layers = work.res.metrics.get("layers", {})
        better = sum(1 for v in layers.values() if v["gptq_error"] <= v["rtn_error"])
        marked = mark_attention(g, self.scheme, ctx.stage.nodes)       # kv8/kv4: after the solve
        work.res.nodes_changed += marked
        work.res.metrics.update(quantized=len(layers), better_than_rtn=better,
                                kept=sum(1 for t in targets if t[2] is None and t[3] is None),
                                kv_quantized_attention=len(marked))
        return work.res

    def _stage(self, g, ctx: PassContext, work: "_StageWork") -> None:
        stage = ctx.stage
        nodes = [n for n in stage.linears if n.target in work.todo]
        if not nodes:
            return
        regions = region_of(input_regions(g, include_head=True))
        groups: dict = {}
        for n in nodes:                    # linears reading the same tensor share one Hessian
            groups.setdefault(regions[n].tensor, []).append(n)
        ordered = sorted(groups.values(), key=lambda grp: stage.nodes.index(grp[0]))
        true_seq = self.sequential and self.true_sequential
        rounds = ordered if true_seq else [sum(ordered, [])]
        task = ctx.task("GPTQ", total=len(rounds), unit="rounds")
        for round_nodes in rounds:
            sums = self._collect(g, ctx, round_nodes, regions)
            items = []
            for n in round_nodes:
                st = sums[regions[n].tensor]
                n.meta.setdefault("qpass", {})["calib_tokens"] = st.tokens
                items.append((n, regions[n].tensor))
            # an MoE expert no calibration token was routed to has no Hessian: RTN
            hessians = {t: st.hessian() for t, st in sums.items() if st.tokens}
            self._replace_all(g, work, items, hessians)
            ctx.advance(task)
        for target, aspec in work.deferred:          # stage_act_quant=False: now, not before
            g.gm.get_submodule(target).act_spec = aspec

    def _collect(self, g, ctx: PassContext, nodes, regions) -> dict:
        """Σ xᵀx per input of `nodes` (float64 for fp64 models, else float32, on their device)."""
        w = g.module(nodes[0]).weight
        dt = torch.float64 if w.dtype == torch.float64 else torch.float32
        round_regions = list({regions[n].tensor: regions[n] for n in nodes}.values())
        sums, watch = watch_regions(round_regions, gram=True, gram_dtype=dt, gram_device=w.device)
        last = max(nodes, key=ctx.stage.nodes.index)
        stop = last.name if self.sequential else None     # later linears are not needed yet
        ctx.runner.run_stage(ctx.stage, ctx.inputs, watch=watch, stop_after=stop)
        all_reduce_stats(sums.values())                 # data-parallel ranks agree (no-op alone)
        return sums

    def _replace_all(self, g, work: "_StageWork", items, hessians) -> None:
        """Quantize the linears `items` [(node, input tensor)] of one round: H is factored once
        per input (q/k/v and gate/up share it), then the solves run side by side on up to
        `threads` threads, each single-threaded inside, so the result does not depend on how
        many run at once; the graph is changed afterwards, in order, on this thread."""
        todo = [(n, t) for n, t in items if t in hessians]
        for n, t in items:
            if t not in hessians:
                self._replace_rtn(g, work, n)
        if not todo:
            return
        specs = {n: work.todo[n.target].wspec for n, _ in todo}
        dtype = {n: _compute_dtype(g.module(n).weight) for n, _ in todo}
        key = {n: (t, _factor_key(specs[n], self.act_order, self.damp, dtype[n],
                                  hessians[t].shape[0])) for n, t in todo}
        tokens = {n: n.meta["qpass"].get("calib_tokens") for n, _ in todo}
        sweeps = {n: self.sweeps_for(tokens[n], hessians[t].shape[0]) for n, t in todo}
        made_for, refined = {}, set()                    # factor key -> (tensor, spec, dtype)
        for n, t in todo:
            made_for.setdefault(key[n], (t, specs[n], dtype[n]))
            if sweeps[n]:
                refined.add(key[n])                      # its factor keeps Hd for the sweep
        threads = max(1, int(self.threads or torch.get_num_threads()))
        # nvfp4: siblings on one input (q/k/v, gate/up) share one global scale
        shared = shared_global_scales([(n, g.module(n), specs[n]) for n, _ in todo])
        with _side_by_side(threads) as pool:
            factors = dict(zip(made_for, pool.map(
                lambda k: factor_hessian(hessians[made_for[k][0]], made_for[k][1],
                                         self.act_order, self.damp, made_for[k][2],
                                         keep_hessian=k in refined), made_for)))
            solved = list(pool.map(
                lambda item: self._solve(g.module(item[0]), specs[item[0]], hessians[item[1]],
                                         factors[key[item[0]]], sweeps[item[0]],
                                         shared.get(item[0])), todo))
        for (n, _), result in zip(todo, solved):
            self._install(g, work, n, *result)

    def sweeps_for(self, tokens: int | None, K: int) -> int:
        """Refinement sweeps for a linear with K inputs whose Hessian saw `tokens` tokens."""
        if self.refine != "auto":
            return int(self.refine)
        return int(tokens is not None and tokens >= REFINE_MIN_TOKENS_PER_INPUT * K)

    def _solve(self, lin, wspec, hess, factor, sweeps, global_scale=None):
        W = lin.weight.detach()
        Wq, info = quantize_weight(W, hess, wspec, block_size=self.block_size,
                                   act_order=self.act_order, damp=self.damp,
                                   static_groups=self.static_groups, factor=factor,
                                   refine=sweeps, global_scale=global_scale)
        rtn = QuantizedWeight.from_float(W.float(), wspec, global_scale).dequantize(W.dtype)
        errors = reconstruction_errors(W, [Wq, rtn], hess)
        return info, errors

    def _replace_rtn(self, g, work: "_StageWork", node) -> None:
        t = work.todo[node.target]
        replace_linear(g, node, QuantLinear.from_linear(g.module(node), t.wspec,
                                                        work.act_spec(node.target, t.aspec,
                                                                      self.stage_act_quant)),
                       reason=f"{t.reason} (RTN: no calibration token reached it)")
        work.res.metrics.setdefault("rtn_fallback", []).append(node.target)
        work.res.notes.append(f"{node.target}: no calibration token was routed to it; "
                              f"rounded to nearest (calibrate on more data to cover it)")
        work.res.nodes_changed.append(node.name)

    def _install(self, g, work: "_StageWork", node, info, errors) -> None:
        t = work.todo[node.target]
        err, err_rtn = errors
        new = QuantLinear.from_linear(g.module(node), t.wspec,
                                      work.act_spec(node.target, t.aspec, self.stage_act_quant),
                                      qweight=info.qweight)
        replace_linear(g, node, new, reason=f"{t.reason} (GPTQ)")
        stats = {"gptq_error": err, "rtn_error": err_rtn, "damp": info.damp_used,
                 "escalations": info.escalations, "dead_inputs": info.dead,
                 "loss": info.loss, "tokens": node.meta["qpass"].get("calib_tokens"),
                 "refine_sweeps": info.refine_sweeps, "refine_gain": info.refine_gain}
        node.meta.setdefault("qpass", {})["gptq"] = stats
        res = work.res
        res.metrics.setdefault("layers", {})[node.target] = stats
        res.nodes_changed.append(node.name)
        if info.escalations:
            res.notes.append(f"{node.target}: Cholesky failed, damping escalated "
                             f"{info.escalations}x to {info.damp_used:g}·mean(diag H)")
        if info.static_groups_forced:
            note = "act_order with group quantization: static groups used (packed layout)"
            if note not in res.notes:
                res.notes.append(note)


@dataclass(frozen=True)
class _Target:
    """A linear GPTQ rounds: its weight and activation specs, and the coverage rule."""
    wspec: Any
    aspec: Any
    reason: str


@dataclass
class _StageWork:
    """What one stage's GPTQ run works through: the linears to round and the result."""
    todo: dict                                   # module target -> _Target
    res: PassResult = field(default_factory=PassResult)
    deferred: list = field(default_factory=list)  # (target, act spec) set after the stage

    def act_spec(self, target: str, aspec, now: bool):
        """The activation spec a linear gets when it is rounded: its own, or None with the
        spec kept for the end of the stage (GPTQ(stage_act_quant=False))."""
        if now or aspec is None:
            return aspec
        self.deferred.append((target, aspec))
        return None


@contextlib.contextmanager
def _side_by_side(threads: int):
    """A map over independent solves: a thread pool of `threads` with torch's own intra-op
    pool at one thread meanwhile (each solve is single-threaded anyway), or a plain map."""
    if threads <= 1:
        yield _Serial()
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            yield pool
    finally:
        torch.set_num_threads(n)


class _Serial:
    @staticmethod
    def map(fn, items):
        return map(fn, items)

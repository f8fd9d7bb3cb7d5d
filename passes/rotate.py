"""QuaRot: rotate the residual stream with one random orthogonal Hadamard Q (exact).

Conventions (nn.Linear computes y = x·Wᵀ + b; the rotated stream is x·Q):
  embedding            E' = E·Q
  stream readers       W' = W·Q              (linears fed by the weightless norms, the head)
  stream writers       W' = Qᵀ·W, b' = b·Q   (branch outputs feeding the residual adds)
  online Hadamard      x → x·Hᵀ before a linear, its weight W' = W·Hᵀ   (H orthonormal)
  per-head v → o       v rows per KV head W_h' = Hₕᵀ·W_h, b_h' = b_h·Hₕ; o columns per query
                       head W_o' = W_o·blockdiag(Hₕ)
A weightless RMSNorm commutes with Q (‖x·Q‖ = ‖x‖), which is why norms must be fused first.
Every fused weight is computed in float64 and cast back once. Structure comes from the graph
(norm groups, residual adds, up→down pairs, v→o pairs), never from module names."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.fx as fx

from qpass import hadamard
from qpass.errors import PipelineError
from qpass.ir.regions import norm_regions
from qpass.ir.roles import reads_metadata_only
from qpass.ir.structure import (branch_writers, role, through_transparent_back,
                                through_transparent_forward)
from qpass.runtime.online import online_hadamard
from qpass.pipeline.pass_base import BasisChange, Fact, Pass, PassContext, PassResult


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64)


def _assign(param: torch.Tensor, value: torch.Tensor) -> None:
    with torch.no_grad():
        param.copy_(value.to(device=param.device, dtype=param.dtype))


def _fold(param: torch.Tensor, fn) -> None:
    """param ← fn(param) computed in float64; nothing to compute for meta (shape-only) models."""
    if param.device.type != "meta":
        _assign(param, fn(_f64(param)))


def _orthonormal_hadamard(n: int, device) -> torch.Tensor:
    return hadamard.matrix(n).to(device=device, dtype=torch.float64) / math.sqrt(n)


def _tag(node: fx.Node, **kv) -> None:
    node.meta.setdefault("qpass", {}).setdefault("rotate", {}).update(kv)


def _norm_is_weightless(mod) -> bool:
    w = getattr(mod, "weight", None)
    if w is None or w.device.type == "meta":      # meta: structure only, FuseNorms ran before
        return True
    return bool(torch.all(w.detach() == 1))


def insert_online_hadamard(g, linear: fx.Node) -> fx.Node:
    """Put x → x·Hᵀ (orthonormal H) in front of `linear` and fold W' = W·Hᵀ (exact). The node
    is named after the linear, so a streamed run (one stage at a time) names it the same."""
    x = linear.args[0]
    with g.graph.inserting_before(linear):
        h = g.graph.create_node("call_function", online_hadamard, (x,), {},
                                name=f"hadamard_{linear.name}")
    h.meta["qpass"] = {"role": "hadamard", "inserted_by": "Rotate"}
    linear.args = (h,) + tuple(linear.args[1:])
    _fold(g.module(linear).weight, hadamard.transform)     # W·Hᵀ, fast: no dense H
    return h


@dataclass
class _Plan:
    """Where Q goes, found once on the whole graph (structure only, so it works on meta):
    the stream values, the embedding, reader and writer linears, the norms in front of the
    readers, the v→o pairs and the linears that get an online Hadamard."""
    hidden_size: int
    stream: list
    embed: fx.Node
    readers: list
    writers: list
    norms: list
    vo: list
    online: list                     # (kind "down" | "o", linear node)


@dataclass(eq=False, repr=False)
class Rotate(Pass):
    """QuaRot rotation of the residual stream, online Hadamards before down-projections
    (and o-projections with `online_heads`), and an offline per-head Hadamard between v and o.

    Q = H·diag(signs)/√d is one matrix for the whole run, its signs drawn from `seed` in
    `start`, before the first stage, and recorded with a streamed run's progress (a resumed
    run reads them back); each stage folds Q into its own embedding, readers and writers and
    does its blocks' per-head and online Hadamards."""

    requires = frozenset({Fact.NORMS_FUSED})
    provides = frozenset({Fact.ROTATED})
    exact = True
    changes_weights = True

    seed: int = 0
    online_down: bool = True
    online_heads: bool = True

    # ---- structure ----------------------------------------------------------------------
    def _stream(self, g) -> _Plan:
        """The rotation plan, checked for exactness (every stream reader a weightless norm's
        linear or a residual add, every branch a sum of linear outputs)."""
        embeds = g.nodes("embed")
        if len(embeds) != 1:
            raise PipelineError(f"Rotate needs exactly one embedding feeding the residual stream, "
                                f"found {len(embeds)}; this model layout is not supported")
        adds = [a for b in g.blocks() for a in b.residual_adds]
        stream = [embeds[0]] + adds
        stream_set = set(stream)
        norms = {r.producer: r for r in norm_regions(g)}
        readers: list[fx.Node] = []
        writers: list[fx.Node] = []
        reader_norms: list[fx.Node] = []
        for s in stream:
            for u in through_transparent_forward(s):
                if u in stream_set or reads_metadata_only(u):
                    continue
                if u in norms:
                    region = norms[u]
                    if region.others:
                        raise PipelineError(
                            f"Rotate: norm {u.target} feeds non-linear consumers "
                            f"{[o.name for o in region.others]}; the rotation cannot be folded there")
                    reader_norms.append(u)
                    readers.extend(region.consumers)
                else:
                    raise PipelineError(
                        f"Rotate: residual-stream value {s.name} is read by {u.name} "
                        f"(role {role(u)}), which is neither a norm nor a residual add; "
                        f"the rotation would not be exact")
        for a in adds:
            prev = [x for x in a.args if isinstance(x, fx.Node) and x in stream_set]
            branch = [x for x in a.args if isinstance(x, fx.Node) and x not in stream_set]
            if len(prev) != 1 or len(branch) != 1:
                raise PipelineError(f"Rotate: residual add {a.name} does not look like stream + branch")
            found, problem = branch_writers(branch[0])
            if problem:
                raise PipelineError(f"Rotate: the branch feeding residual add {a.name} is not a "
                                    f"sum of linear outputs: {problem}")
            writers.extend(found)
        d = g.module(embeds[0]).weight.shape[1]
        if not hadamard.supported(d):
            raise PipelineError(f"Rotate: hidden size {d} has no supported Hadamard matrix "
                                f"(see qpass.hadamard.CORES); use DuQuant for this model")
        for n in writers:
            out = g.module(n).weight.shape[0]
            if out != d:
                raise PipelineError(f"Rotate: writer {n.target} produces {out} channels, the "
                                    f"stream has {d}")
        online = []
        if self.online_down:
            online += [("down", p.down) for p in g.pairs_through_activation()]
        if self.online_heads:
            online += [("o", p.o) for p in g.v_to_o()]
        return _Plan(d, stream, embeds[0], readers, writers, reader_norms, list(g.v_to_o()), online)

    # ---- run ----------------------------------------------------------------------------
    def start(self, g, ctx: PassContext, saved=None) -> "_RotateRun":
        """Fix Q for the whole run, on the graph as captured: its signs from `seed`, or, when
        a streamed run resumes, the signs the interrupted run recorded (so every stage of one
        checkpoint has the same Q)."""
        plan = self._stream(g)
        if saved is None:
            return _RotateRun(plan, hadamard.random_signs(plan.hidden_size, self.seed), self.seed)
        if saved.get("hidden_size") != plan.hidden_size or \
                len(saved.get("signs", "")) != plan.hidden_size:
            raise PipelineError(f"Rotate: the interrupted run recorded a rotation for hidden "
                                f"size {saved.get('hidden_size')}, this model has "
                                f"{plan.hidden_size}; delete the run's .qpass-stream "
                                f"directory and rerun")
        signs = torch.tensor([1.0 if c == "+" else -1.0 for c in saved["signs"]],
                             dtype=torch.float64)
        return _RotateRun(plan, signs, self.seed)

    def run(self, g, ctx: PassContext) -> PassResult:
        """Q into this stage's embedding, readers and writers; per-head and online Hadamards
        of this stage's attention and MLP."""
        return self._rotate(g, ctx, ctx.run, ctx.nodes)

    def stage_basis(self, g, stage, run: "_RotateRun") -> BasisChange:
        """The stream values leave every stage as x·Q: verified as f'(x·Q) = f(x)·Q."""
        def to_new(t):                               # x·Q in float64
            return run.times_q(t.double())

        def to_old(t):                               # x·Qᵀ, in the value's own dtype
            return run.times_qt(t.double()).to(t.dtype)
        return BasisChange(frozenset(n.name for n in run.plan.stream), to_new, to_old)

    def _rotate(self, g, ctx: PassContext, run, nodes: set) -> PassResult:
        """Fold the run's Q (and do the per-head and online Hadamards) in the stage's `nodes`:
        the one fusing code of every residual rotation (Rotate's Hadamard, LearnedRotate's
        trained R1/R2), which only differ in the run state's `times_q` and `head`."""
        plan = run.plan

        def mine(n) -> bool:
            return n in nodes
        for u in filter(mine, plan.norms):          # real weights only: checked before any fold
            if not _norm_is_weightless(g.module(u)):
                raise PipelineError(
                    f"{self.name}: norm {u.target} still has a weight; run FuseNorms before "
                    f"{self.name}")
        readers = [n for n in plan.readers if mine(n)]
        writers = [n for n in plan.writers if mine(n)]
        emb = g.module(plan.embed)
        times_q = run.times_q
        res = PassResult(metrics={"readers": len(readers), "writers": len(writers)})
        done: set[int] = set()  # tensors shared inside the stage are folded once (the
        # executor gives each stage its own copy of a tensor tied across stages)

        def fold(param, fn):
            if id(param) not in done:
                _fold(param, fn)
                done.add(id(param))

        task = ctx.task(f"{self.name}: fuse Q", total=int(mine(plan.embed)) + len(readers) + len(writers))
        if mine(plan.embed):
            res.metrics["hidden_size"] = plan.hidden_size     # once per run, also when streamed
            fold(emb.weight, times_q)
            _tag(plan.embed, stream="E·Q")
            res.nodes_changed.append(plan.embed.name)
            ctx.advance(task)
        for n in readers:
            fold(g.module(n).weight, times_q)
            _tag(n, stream="read W·Q")
            res.nodes_changed.append(n.name)
            ctx.advance(task)
        for n in writers:
            lin = g.module(n)
            fold(lin.weight, lambda W: times_q(W.T).T)
            if lin.bias is not None:
                fold(lin.bias, times_q)
            _tag(n, stream="write Qᵀ·W")
            res.nodes_changed.append(n.name)
            ctx.advance(task)

        self._per_head(g, res, [p for p in plan.vo if mine(p.v)], run.head)
        self._online(g, res, [(k, lin) for k, lin in plan.online if mine(lin)])
        res.metrics["online_hadamards"] = (res.metrics.get("online_hadamard_down", 0)
                                           + res.metrics.get("online_hadamard_o", 0))
        return res     # the executor recompiles the edited graph

    def head_dim(self, g, p) -> tuple[int | None, str]:
        """(head dim of the v→o pair p, "") when its per-head rotation can be folded, else
        (None, why not)."""
        v, o = g.module(p.v), g.module(p.o)
        hd = self._head_dim(g, p.attention)
        if hd is None or v.out_features % hd or o.in_features % hd:
            return None, f"per-head v→o Hadamard skipped for {p.v.target}: head dim unknown"
        if not hadamard.supported(hd):
            return None, f"per-head v→o Hadamard skipped: head dim {hd} unsupported"
        return hd, ""

    def _per_head(self, g, res: PassResult, pairs, head) -> None:
        """Offline per-head rotation Hₕ = head(p, hd, device) on v's outputs, its inverse in
        o's columns (GQA-exact: every query head reads one KV head, and all heads of a layer
        use the same Hₕ)."""
        count = 0
        for p in pairs:
            v, o = g.module(p.v), g.module(p.o)
            hd, why = self.head_dim(g, p)
            if hd is None:
                res.notes.append(why)
                continue
            Hh = head(p, hd, v.weight.device)
            _fold(v.weight, lambda W: torch.einsum("ji,kjd->kid", Hh, W.reshape(-1, hd, W.shape[1]))
                  .reshape(W.shape))                                # per KV head Hₕᵀ·W_h
            if v.bias is not None:
                _fold(v.bias, lambda b: (b.reshape(-1, hd) @ Hh).reshape(-1))
            _fold(o.weight, lambda W: (W.reshape(W.shape[0], -1, hd) @ Hh).reshape(W.shape))
            _tag(p.v, per_head="Hₕᵀ·W_v")
            _tag(p.o, per_head="W_o·Hₕ")
            count += 1
        res.metrics["per_head_vo"] = count

    @staticmethod
    def _head_dim(g, att: fx.Node) -> int | None:
        tm = att.args[2].meta.get("tensor_meta") if isinstance(att.args[2], fx.Node) else None
        if tm is not None and hasattr(tm, "shape") and len(tm.shape) == 4:
            return int(tm.shape[-1])
        cfg = getattr(g, "config", None)
        return getattr(cfg, "head_dim", None)

    def _online(self, g, res: PassResult, targets) -> None:
        counts = {"down": 0, "o": 0}
        for kind, lin in targets:
            n = g.module(lin).in_features
            if not hadamard.supported(n):
                res.notes.append(f"online Hadamard before {lin.target} skipped: size {n} is "
                                 f"not 2^k·m for a supported m (qpass.hadamard.CORES)")
                continue
            h = insert_online_hadamard(g, lin)
            _tag(lin, online_hadamard=n)
            res.nodes_changed.append(h.name)
            counts[kind] += 1
        res.metrics["online_hadamard_down"] = counts["down"]
        res.metrics["online_hadamard_o"] = counts["o"]


@dataclass(frozen=True)
class _RotateRun:
    """Rotate's state for one run (Pass.start): the plan and Q's signs."""
    plan: _Plan
    signs: torch.Tensor
    seed: int

    def times_q(self, x: torch.Tensor) -> torch.Tensor:
        """x·Q with Q = H·diag(signs)/√d, by the fast transform."""
        return hadamard.transform(x, signs=self.signs.to(device=x.device, dtype=x.dtype),
                                  inverse=True)

    def times_qt(self, x: torch.Tensor) -> torch.Tensor:
        return hadamard.transform(x, signs=self.signs.to(device=x.device, dtype=x.dtype))

    @staticmethod
    def head(p, hd: int, device) -> torch.Tensor:
        return _orthonormal_hadamard(hd, device)

    def record(self) -> dict:
        """What a streamed run keeps to resume with the same Q."""
        return {"hidden_size": self.plan.hidden_size, "seed": self.seed,
                "signs": "".join("+" if v > 0 else "-" for v in self.signs.tolist())}

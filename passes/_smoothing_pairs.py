"""Smoothing pairs discovered from the graph (no names), scale folding, and input statistics.

A smoothing pair is a producer op whose output channels are exactly the input channels of one
or more linears (the consumers), so that a per-channel scale s can move from the activations
into the weights at no run-time cost:  X·diag(1/s) is folded into the producer, diag(s)·W (the
consumers' columns) into the consumers. Producers, found by graph queries:
  "norm"         a norm read only by linears (q/k/v; gate/up): its weight (and bias) / s
  "linear_rows"  up → down through the gated activation (`act(gate) * up`), or a linear read
                 only by one linear through channel-preserving ops: the producer's rows / s
  "v_rows"       v → attention → o with MHA head shapes: v's rows (and bias) / s
Each is exact because the path from producer to consumers is linear per channel. Anything
that looks like a pair but cannot be folded exactly is returned with `skipped_reason` (GQA
v → o, a norm that also feeds a non-linear, a consumer that is the LM head, …), so a coverage
report can list it instead of silently dropping it."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn

from qpass.calibration.stats import linear_input_stats
from qpass.ir.roles import is_transparent
from qpass.ir.structure import (first_arg_node, role, through_transparent_back,
                                through_transparent_forward)

KINDS = ("norm", "linear_rows", "v_rows")
# Ops that keep the last (channel) dim in place; transpose/permute may move it.
_CHANNEL_MOVERS = {"transpose", "permute", "flatten"}


@dataclass
class SmoothPair:
    producer: fx.Node
    producer_kind: str                       # one of KINDS
    consumers: list[fx.Node] = field(default_factory=list)
    skipped_reason: str | None = None

    @property
    def found(self) -> bool:
        return self.skipped_reason is None

    @property
    def label(self) -> str:
        cons = ", ".join(str(c.target) for c in self.consumers)
        return f"{self.producer.target} -> ({cons})"   # no [..]: rich reads it as markup

    def to_row(self) -> dict:
        return {"producer": str(self.producer.target), "kind": self.producer_kind,
                "consumers": [str(c.target) for c in self.consumers],
                "block": self.producer.meta.get("qpass", {}).get("block"),
                "skipped_reason": self.skipped_reason}


def _is_float_linear(g, n: fx.Node) -> bool:
    return n.op == "call_module" and type(g.module(n)) is nn.Linear


def _consumer_problem(g, consumers: list[fx.Node]) -> str | None:
    heads = [c for c in consumers if role(c) == "head"]
    if heads:
        return f"consumer {heads[0].target} is the LM head (kept in high precision)"
    bad = [c for c in consumers if not _is_float_linear(g, c)]
    if bad:
        return (f"consumer {bad[0].target} is not a float nn.Linear (already quantized?); "
                f"smoothing must run before weight rounding")
    return None


def _norm_pairs(g) -> list[SmoothPair]:
    out = []
    order = {n: i for i, n in enumerate(g.graph.nodes)}
    for norm, linears, others in g.norm_groups():
        if not linears:
            continue
        p = SmoothPair(norm, "norm", sorted(linears, key=order.get))
        weight = getattr(g.module(norm), "weight", None)
        if others:
            p.skipped_reason = (f"the norm also feeds {', '.join(o.name for o in others)}, which "
                                f"a per-channel scale would change")
        elif not isinstance(weight, torch.Tensor):
            p.skipped_reason = "the norm has no weight to fold a scale into (elementwise_affine=False)"
        else:
            p.skipped_reason = _consumer_problem(g, linears)
        out.append(p)
    return out


def _only_user(n: fx.Node) -> fx.Node | None:
    users = through_transparent_forward(n)
    return users[0] if len(users) == 1 else None


def _act_pairs(g) -> list[SmoothPair]:
    out = []
    for ap in g.pairs_through_activation():
        p = SmoothPair(ap.up, "linear_rows", [ap.down])
        mul = through_transparent_back(first_arg_node(ap.down))
        if _only_user(ap.up) is not mul or _only_user(mul) is not ap.down:
            p.skipped_reason = "the up projection or the gated product has other readers"
        elif not _is_float_linear(g, ap.up):
            p.skipped_reason = f"producer {ap.up.target} is not a float nn.Linear"
        else:
            p.skipped_reason = _consumer_problem(g, [ap.down])
        out.append(p)
    return out


def _vo_pairs(g) -> list[SmoothPair]:
    out = []
    for vo in g.v_to_o():
        p = SmoothPair(vo.v, "v_rows", [vo.o])
        if not vo.exact:
            p.skipped_reason = vo.reason or "head shapes do not allow per-channel folding"
        elif _only_user(vo.v) is not vo.attention:
            p.skipped_reason = "v's output has readers besides the attention"
        elif not _is_float_linear(g, vo.v):
            p.skipped_reason = f"producer {vo.v.target} is not a float nn.Linear"
        else:
            p.skipped_reason = _consumer_problem(g, [vo.o])
        out.append(p)
    return out


def _channel_path_back(consumer: fx.Node) -> fx.Node | None:
    """The op feeding `consumer`'s input through ops that keep the channel dim in place
    (None if a transpose/permute or a change of the last dim's size lies on the way)."""
    x = first_arg_node(consumer)
    width = _last_dim(x)
    while x is not None and is_transparent(x):
        if str(getattr(x.target, "__name__", x.target)) in _CHANNEL_MOVERS or _last_dim(x) != width:
            return None
        x = first_arg_node(x)
    return x if x is not None and width is not None and _last_dim(x) == width else None


def _last_dim(n: fx.Node | None):
    tm = None if n is None else n.meta.get("tensor_meta")
    return None if tm is None or not hasattr(tm, "shape") or not len(tm.shape) else tm.shape[-1]


def _linear_linear_pairs(g, taken: set) -> list[SmoothPair]:
    """linear → linear where the producer's only reader is the consumer (no op between them
    that mixes or moves channels)."""
    out = []
    for c in g.linears(include_head=False):
        x = _channel_path_back(c)
        if x is None or role(x) not in ("linear",) or x in taken or _only_user(x) is not c:
            continue
        p = SmoothPair(x, "linear_rows", [c])
        p.skipped_reason = None if _is_float_linear(g, x) else f"producer {x.target} is not a float nn.Linear"
        p.skipped_reason = p.skipped_reason or _consumer_problem(g, [c])
        out.append(p)
    return out


def discover_pairs(g, include_skipped: bool = True) -> list[SmoothPair]:
    """Every smoothing pair of `g` in graph order of the producer (skipped ones too unless
    include_skipped=False)."""
    pairs = _norm_pairs(g) + _act_pairs(g) + _vo_pairs(g)
    pairs += _linear_linear_pairs(g, {p.producer for p in pairs if p.producer_kind != "norm"})
    order = {n: i for i, n in enumerate(g.graph.nodes)}
    pairs.sort(key=lambda p: order[p.producer])
    return [p for p in pairs if include_skipped or p.found]


@dataclass
class SmoothingCoverage:
    found: list[SmoothPair]
    skipped: list[SmoothPair]

    def counts(self) -> dict[str, int]:
        c = {f"found {k}": sum(p.producer_kind == k for p in self.found) for k in KINDS}
        c.update({f"skipped {k}": sum(p.producer_kind == k for p in self.skipped) for k in KINDS})
        return c

    def rows(self) -> list[dict]:
        return [p.to_row() for p in self.found + self.skipped]


def smoothing_coverage(g) -> SmoothingCoverage:
    """Found and skipped smoothing pairs (with reasons) of a QGraph; works on meta graphs."""
    pairs = discover_pairs(g)
    return SmoothingCoverage([p for p in pairs if p.found], [p for p in pairs if not p.found])


# ---- folding -------------------------------------------------------------------------------
@torch.no_grad()
def fold_scale(g, pair: SmoothPair, s: torch.Tensor) -> None:
    """Fold X·diag(1/s) into the producer and diag(s) into the consumers' columns (float64
    math, one cast back); the graph keeps exactly its nodes."""
    s = s.detach().double()

    def scale_(t: torch.Tensor | None, factor: torch.Tensor) -> None:
        if t is not None:
            t.copy_((t.double() * factor.to(t.device)).to(t.dtype))

    prod = g.module(pair.producer)
    if pair.producer_kind == "norm":
        scale_(prod.weight, 1.0 / s)
        scale_(getattr(prod, "bias", None), 1.0 / s)
    else:
        scale_(prod.weight, (1.0 / s)[:, None])
        scale_(prod.bias, 1.0 / s)
    for c in pair.consumers:
        scale_(g.module(c).weight, s[None, :])


def consumer_weight_absmax(g, pair: SmoothPair) -> torch.Tensor:
    """max |W[:, j]| over all consumers' column j (float64)."""
    return torch.stack([g.module(c).weight.detach().double().abs().amax(0).cpu()
                        for c in pair.consumers]).amax(0)


# ---- calibration statistics ------------------------------------------------------------------
def collect_inputs(g, nodes: list[fx.Node], calib, sample_rows: int = 512, batch_size: int = 8,
                   seed: int = 0) -> dict[str, dict]:
    """Per linear node name: {"absmax", "mean_abs"} per input channel (float64, over every
    calibration token) and "rows": up to `sample_rows` random input rows (float32)."""
    return linear_input_stats(g, nodes, calib, sample_rows=sample_rows, batch_size=batch_size,
                              seed=seed, rows_dtype=torch.float32)


# ---- records for the report and `qpass inspect --after` (qpass/inspect/smoothing.py) -----
def record_folded(p: SmoothPair, s: torch.Tensor, pass_name: str, **extra) -> dict:
    """The pair's record (scale min/median/max + extra), also stored on the producer node."""
    rec = {"producer": str(p.producer.target), "kind": p.producer_kind,
           "consumers": [str(c.target) for c in p.consumers],
           "block": p.producer.meta.get("qpass", {}).get("block"),
           "scale_min": float(s.min()), "scale_median": float(s.median()),
           "scale_max": float(s.max()), **extra}
    p.producer.meta.setdefault("qpass", {})["smoothing"] = dict(rec, pass_name=pass_name)
    for c in p.consumers:
        c.meta.setdefault("qpass", {})["smoothed_by"] = str(p.producer.target)
    return rec


def record_skipped(pairs: list[SmoothPair], pass_name: str) -> list[dict]:
    """Rows for the pairs that could not be folded, also stored on their producer nodes."""
    rows = []
    for p in pairs:
        if p.found:
            continue
        row = p.to_row()
        p.producer.meta.setdefault("qpass", {})["smoothing_skipped"] = dict(row, pass_name=pass_name)
        rows.append(row)
    return rows

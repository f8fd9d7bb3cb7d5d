"""Regions: a producer and the linears that read its one output tensor (DESIGN §2).

Every pass that moves something between an op and the linears after it asks the same question
— which linears read this tensor, and can a per-channel factor be folded into its producer
exactly? — and this module is the one place that answers it, from the graph, never from names:

  input_regions(g)      linears grouped by the tensor they read (shared Hessian / statistics /
                        DuQuant transform): q/k/v, gate/up, o, down
  norm_regions(g)       every norm and the linears it feeds (FuseNorms, Rotate's stream readers)
  smoothing_regions(g)  producers a per-channel scale folds into — "norm", "linear_rows"
                        (up → down through the gated activation, linear → linear), "v_rows"
                        (v → attention → o with MHA head shapes) — for SmoothQuant and AWQ

A region whose fold is not exact carries the reason (a norm that also feeds a non-linear, GQA
v → o, a consumer that is the LM head, …) so coverage tables list it instead of dropping it."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn

from .roles import is_transparent
from .structure import (first_arg_node, norm_consumers, pairs_through_activation, role,
                        through_transparent_back, through_transparent_forward, v_to_o)

KINDS = ("norm", "linear_rows", "v_rows")
# ops that may move the channel (last) dim: a per-channel scale cannot cross them
_CHANNEL_MOVERS = {"transpose", "permute", "flatten"}


@dataclass
class Region:
    """`producer` → `consumers` (linears reading its output). `kind` says what the producer is
    ("input" for a plain input group, else one of KINDS); `others` are non-linear readers of
    the same tensor; `reason` is None when a per-channel fold into the producer is exact."""
    producer: fx.Node
    kind: str
    consumers: list[fx.Node] = field(default_factory=list)
    others: list[fx.Node] = field(default_factory=list)
    reason: str | None = None

    @property
    def exact(self) -> bool:
        return self.reason is None

    @property
    def tensor(self) -> fx.Node:
        """The node the consumers take as their input (the producer, or a view of it)."""
        return first_arg_node(self.consumers[0]) if self.consumers else self.producer

    @property
    def label(self) -> str:
        cons = ", ".join(str(c.target) for c in self.consumers)
        return f"{self.producer.target} -> ({cons})"   # no [..]: rich reads it as markup

    def to_row(self) -> dict:
        return {"producer": str(self.producer.target), "kind": self.kind,
                "consumers": [str(c.target) for c in self.consumers],
                "block": self.producer.meta.get("qpass", {}).get("block"),
                "skipped_reason": self.reason}


def _graph_order(g) -> dict[fx.Node, int]:
    return {n: i for i, n in enumerate(g.graph.nodes)}


def input_regions(g, include_head: bool = False) -> list[Region]:
    """Linears grouped by the node they take as input, in graph order of the first reader."""
    by_input: dict[fx.Node, list[fx.Node]] = {}
    for lin in g.linears(include_head=include_head):
        x = first_arg_node(lin)
        if x is not None:
            by_input.setdefault(x, []).append(lin)
    return [Region(through_transparent_back(x), "input", lins) for x, lins in by_input.items()]


def region_of(regions: list[Region]) -> dict[fx.Node, Region]:
    """{consumer linear: its region}."""
    return {c: r for r in regions for c in r.consumers}


def is_float_linear(g, n: fx.Node) -> bool:
    return n.op == "call_module" and isinstance(g.module(n), nn.Linear)   # MoE Router too


def _consumer_problem(g, consumers: list[fx.Node]) -> str | None:
    heads = [c for c in consumers if role(c) == "head"]
    if heads:
        return f"consumer {heads[0].target} is the LM head (kept in high precision)"
    bad = [c for c in consumers if not is_float_linear(g, c)]
    if bad:
        return (f"consumer {bad[0].target} is not a float nn.Linear (already quantized?); "
                f"weight folding must run before weight rounding")
    return None


def norm_regions(g) -> list[Region]:
    """Every norm with the linears it feeds (through views); `reason` says why its weight (or
    a scale) cannot be folded into them: other readers, no linear reader, no weight, a
    consumer that is the head or already quantized."""
    out = []
    order = _graph_order(g)
    for norm in g.nodes("norm"):
        linears, others = norm_consumers(norm)
        r = Region(norm, "norm", sorted(linears, key=order.get), others)
        weight = getattr(g.module(norm), "weight", None)
        if others:
            r.reason = (f"the norm also feeds {', '.join(o.name for o in others)}, which a "
                        f"per-channel scale would change")
        elif not linears:
            r.reason = "the norm feeds no linear"
        elif not isinstance(weight, torch.Tensor):
            r.reason = "the norm has no weight to fold into (elementwise_affine=False)"
        else:
            r.reason = _consumer_problem(g, r.consumers)
        out.append(r)
    return out


def _only_user(n: fx.Node) -> fx.Node | None:
    users = through_transparent_forward(n)
    return users[0] if len(users) == 1 else None


def _producer_problem(g, producer: fx.Node) -> str | None:
    return None if is_float_linear(g, producer) else f"producer {producer.target} is not a float nn.Linear"


def _act_regions(g) -> list[Region]:
    out = []
    for ap in pairs_through_activation(g.graph):
        r = Region(ap.up, "linear_rows", [ap.down])
        mul = through_transparent_back(first_arg_node(ap.down))
        if _only_user(ap.up) is not mul or _only_user(mul) is not ap.down:
            r.reason = "the up projection or the gated product has other readers"
        else:
            r.reason = _producer_problem(g, ap.up) or _consumer_problem(g, [ap.down])
        out.append(r)
    return out


def _vo_regions(g) -> list[Region]:
    out = []
    for vo in v_to_o(g.graph, dict(g.gm.named_modules())):
        r = Region(vo.v, "v_rows", [vo.o])
        if not vo.exact:
            r.reason = vo.reason or "head shapes do not allow per-channel folding"
        elif _only_user(vo.v) is not vo.attention:
            r.reason = "v's output has readers besides the attention"
        else:
            r.reason = _producer_problem(g, vo.v) or _consumer_problem(g, [vo.o])
        out.append(r)
    return out


def _last_dim(n: fx.Node | None):
    tm = None if n is None else n.meta.get("tensor_meta")
    return None if tm is None or not hasattr(tm, "shape") or not len(tm.shape) else tm.shape[-1]


def _channel_path_back(consumer: fx.Node) -> fx.Node | None:
    """The op feeding `consumer` through ops that keep the channel dim in place (None if a
    transpose/permute or a change of the last dim's size lies on the way)."""
    x = first_arg_node(consumer)
    width = _last_dim(x)
    while x is not None and is_transparent(x):
        if str(getattr(x.target, "__name__", x.target)) in _CHANNEL_MOVERS or _last_dim(x) != width:
            return None
        x = first_arg_node(x)
    return x if x is not None and width is not None and _last_dim(x) == width else None


def _linear_linear_regions(g, taken: set) -> list[Region]:
    """linear → linear where the producer's only reader is the consumer."""
    out = []
    for c in g.linears(include_head=False):
        x = _channel_path_back(c)
        if x is None or role(x) != "linear" or x in taken or _only_user(x) is not c:
            continue
        out.append(Region(x, "linear_rows", [c],
                          reason=_producer_problem(g, x) or _consumer_problem(g, [c])))
    return out


def smoothing_regions(g, include_skipped: bool = True) -> list[Region]:
    """Every producer a per-channel scale can be folded into, in graph order (the ones that
    cannot, with their reason, unless include_skipped=False)."""
    regions = [r for r in norm_regions(g) if r.consumers] + _act_regions(g) + _vo_regions(g)
    regions += _linear_linear_regions(g, {r.producer for r in regions if r.kind != "norm"})
    order = _graph_order(g)
    regions.sort(key=lambda r: order[r.producer])
    return [r for r in regions if include_skipped or r.exact]

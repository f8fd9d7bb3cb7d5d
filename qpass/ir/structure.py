"""Structure discovered from the graph, never from names (DESIGN §2).

The residual stream is the chain embed → add → add → …; each residual add closes a branch;
a branch with an attention node opens a new transformer block. Norm consumers, up→down pairs
through the gated activation and v→o pairs are found by walking the graph."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch.fx as fx

from .roles import (HIGH_PRECISION_LINEAR_ROLES, function_role, is_add, is_transparent,
                    reads_metadata_only)


def role(n: fx.Node) -> str | None:
    return n.meta.get("qpass", {}).get("role")


def first_arg_node(n: fx.Node) -> fx.Node | None:
    return n.args[0] if n.args and isinstance(n.args[0], fx.Node) else None


def through_transparent_back(n: fx.Node) -> fx.Node:
    """Walk backwards from a node's input through view/reshape/transpose-like ops."""
    while is_transparent(n) and first_arg_node(n) is not None:
        n = first_arg_node(n)
    return n


def through_transparent_forward(n: fx.Node) -> list[fx.Node]:
    """The non-transparent users reached from n through transparent ops."""
    out, todo = [], list(n.users)
    while todo:
        u = todo.pop()
        if is_transparent(u):
            todo.extend(u.users)
        elif u not in out:
            out.append(u)
    return out


def residual_stream(graph: fx.Graph) -> list[fx.Node]:
    """[embed, add_1, add_2, …]: each add takes the previous stream value directly."""
    embeds = [n for n in graph.nodes if role(n) == "embed"]
    if not embeds:
        return []
    stream = [embeds[0]]
    while True:
        adds = [u for u in stream[-1].users if is_add(u)]
        if not adds:
            return stream
        stream.append(adds[0])


def _ancestors(n: fx.Node, stop: set) -> set:
    seen, todo = set(), [n]
    while todo:
        x = todo.pop()
        for a in x.all_input_nodes:
            if a not in seen and a not in stop:
                seen.add(a)
                todo.append(a)
    return seen


@dataclass
class BlockInfo:
    index: int
    branches: list[list[fx.Node]] = field(default_factory=list)  # nodes of each residual branch
    residual_adds: list[fx.Node] = field(default_factory=list)

    @property
    def nodes(self) -> list[fx.Node]:
        return [n for b in self.branches for n in b]

    @property
    def linears(self) -> list[fx.Node]:
        return [n for n in self.nodes if role(n) == "linear"]

    @property
    def input(self) -> fx.Node:
        """The residual-stream value entering the block."""
        return self.residual_adds[0].args[0] if self.residual_adds else None


def discover_blocks(graph: fx.Graph) -> list[BlockInfo]:
    stream = residual_stream(graph)
    order = {n: i for i, n in enumerate(graph.nodes)}
    blocks: list[BlockInfo] = []
    closed = _ancestors(stream[0], set()) | {stream[0]} if stream else set()
    for prev, add in zip(stream, stream[1:]):
        branch = sorted(_ancestors(add, closed | {prev}) - {prev}, key=order.get)
        closed |= set(branch) | {prev}
        has_attn = any(function_role(n.target) == "attention" for n in branch
                       if n.op == "call_function")
        if has_attn or not blocks:
            blocks.append(BlockInfo(len(blocks)))
        blocks[-1].branches.append(branch)
        blocks[-1].residual_adds.append(add)
    return blocks


def _per_row(n) -> bool:
    """A value whose last dim is 1 (a per-token weight): scaling rows commutes with any map of
    the channels."""
    tm = n.meta.get("tensor_meta") if isinstance(n, fx.Node) else None
    return tm is not None and hasattr(tm, "shape") and len(tm.shape) > 0 and tm.shape[-1] == 1


def branch_writers(value: fx.Node) -> tuple[list[fx.Node], str | None]:
    """The linears whose outputs make up a residual branch's value, when that value is a
    channel-linear combination of them: views, sums, per-row scaling and row scatters into
    zeros (an MoE's weighted experts). Each such linear must be read only there.
    ([linears], None), or ([], why not)."""
    from ..ops import scatter_rows
    out, todo, seen = [], [value], set()
    while todo:
        n = through_transparent_back(todo.pop())
        if n in seen:
            continue
        seen.add(n)
        if role(n) == "linear":
            if len(through_transparent_forward(n)) != 1:
                return [], f"{n.target} is also read elsewhere"
            out.append(n)
        elif is_add(n):
            todo.extend(a for a in n.args[:2] if isinstance(a, fx.Node))
        elif n.op == "call_function" and n.target is scatter_rows:
            todo.extend([n.args[0], n.args[2]])
        elif n.op == "call_function" and function_role(n.target) == "mul" and \
                any(_per_row(a) for a in n.args[:2]):
            todo.extend(a for a in n.args[:2] if isinstance(a, fx.Node) and not _per_row(a))
        elif reads_metadata_only(n) and n.op == "call_function":
            continue                                    # zeros_like: the zero start of a sum
        else:
            return [], f"{n.name} ({n.op} {getattr(n.target, '__name__', n.target)}) lies on it"
    return out, None if out else "no linear writes it"


def linear_input(n: fx.Node) -> fx.Node:
    return through_transparent_back(first_arg_node(n))


def norm_consumers(norm: fx.Node) -> tuple[list[fx.Node], list[fx.Node]]:
    """(linears fed by the norm through transparent ops, any other consumers)."""
    users = through_transparent_forward(norm)
    lin = [u for u in users if role(u) in ("linear", *HIGH_PRECISION_LINEAR_ROLES)]
    return lin, [u for u in users if u not in lin and not reads_metadata_only(u)]


@dataclass
class ActPair:
    gate: fx.Node | None
    up: fx.Node
    down: fx.Node
    activation: fx.Node | None


def pairs_through_activation(graph: fx.Graph) -> list[ActPair]:
    """up → down across `act(gate) * up` (or a plain `act(up)`): the MLP's inner pair."""
    pairs = []
    for down in (n for n in graph.nodes if role(n) == "linear"):
        x = linear_input(down)
        if x.op == "call_function" and function_role(x.target) == "mul":
            a, b = (through_transparent_back(y) for y in x.args[:2])
            for act, up in ((a, b), (b, a)):
                if role(up) == "linear" and act.op == "call_function" and \
                        function_role(act.target) == "activation":
                    gate = through_transparent_back(first_arg_node(act))
                    pairs.append(ActPair(gate if role(gate) == "linear" else None, up, down, act))
                    break
    return pairs


@dataclass
class VOPair:
    v: fx.Node
    o: fx.Node
    attention: fx.Node
    exact: bool            # True when head shapes allow per-channel folding (MHA)
    reason: str = ""


def v_to_o(graph: fx.Graph, modules: dict) -> list[VOPair]:
    """v_proj → attention (value input) → o_proj, found through the attention node."""
    out = []
    for att in (n for n in graph.nodes if role(n) == "attention"):
        v = through_transparent_back(att.args[2])
        users = through_transparent_forward(att)
        os_ = [u for u in users if role(u) == "linear"]
        if role(v) != "linear" or len(os_) != 1:
            continue
        o = os_[0]
        vm, om = modules[v.target], modules[o.target]
        if vm.out_features == om.in_features:
            out.append(VOPair(v, o, att, True))
        else:
            out.append(VOPair(v, o, att, False,
                              f"GQA: v produces {vm.out_features} channels shared by "
                              f"{om.in_features // vm.out_features} query heads; o reads "
                              f"{om.in_features}, so a per-channel scale cannot be folded"))
    return out


def qk_of(att: fx.Node) -> tuple[fx.Node | None, fx.Node | None]:
    """The q and k projections feeding an attention node (through RoPE and reshapes)."""
    res = []
    for a in att.args[:2]:
        x = through_transparent_back(a)
        if x.op == "call_function" and function_role(x.target) == "rope":
            x = through_transparent_back(x.args[0])
        res.append(x if role(x) == "linear" else None)
    return res[0], res[1]

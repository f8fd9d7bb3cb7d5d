"""Part of Lower: move the per-token activation quantization of integer linears into the op
that produces their input (DESIGN §6, issue 16).

Two producers are fused when every user of their output is an integer LoweredLinear (W8A8,
W4A8, W4A4) with one activation bit width and grid:
  * an RMSNorm module  -> lowered.NormQuant     (qpass::rmsnorm_quant), e.g. q/k/v, gate/up;
  * silu(gate) · up    -> lowered.SiluMulQuant  (qpass::silu_mul_quant), e.g. down_proj.
The producer then returns (codes, scales) and each consumer is called as
linear(codes, scales, like) — `like` is a float tensor of the activation dtype (the producer's
input), so the output dtype is what the unfused linear would give. The reference kernels are
the unfused formulas (rms_norm, F.silu·up, then formats.quantize_per_token), so a lowered graph
on the reference backend computes bit for bit what it computed before fusion."""
from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F

from qpass.models.denoiser import RMSNorm
from qpass.runtime import lowered

_INT_KINDS = ("w8a8", "w4a8", "w4a4")
_MULS = (operator.mul, torch.mul)


def _act_of_consumers(gm: fx.GraphModule, node: fx.Node) -> tuple[int, str] | None:
    """(bits, grid) shared by every user of `node`, all integer linears taking it as their
    only input; None otherwise."""
    users = list(node.users)
    found = set()
    for u in users:
        if u.op != "call_module" or u.args != (node,) or u.kwargs:
            return None
        m = gm.get_submodule(u.target)
        if not isinstance(m, lowered.LoweredLinear) or m.kind not in _INT_KINDS:
            return None
        found.add((m.act_spec.bits, m.act_spec.grid))
    return found.pop() if len(found) == 1 else None


def _silu_operands(node: fx.Node) -> tuple[fx.Node, fx.Node, fx.Node] | None:
    """(silu node, gate, up) when `node` is silu(gate) · up with the silu used only here."""
    if node.op != "call_function" or node.target not in _MULS or len(node.args) != 2:
        return None
    for a, b in (node.args, node.args[::-1]):
        if isinstance(a, fx.Node) and a.op == "call_function" and a.target is F.silu and \
                len(a.users) == 1 and isinstance(b, fx.Node) and \
                not a.kwargs.get("inplace", False) and len(a.args) >= 1 and \
                not (len(a.args) > 1 and a.args[1]):
            return a, a.args[0], b
    return None


def _rewire(graph: fx.Graph, producer: fx.Node, users: list[fx.Node], like: fx.Node
            ) -> list[fx.Node]:
    with graph.inserting_after(producer):
        scales = graph.call_function(operator.getitem, (producer, 1))
    with graph.inserting_after(producer):
        codes = graph.call_function(operator.getitem, (producer, 0))
    for u in users:
        u.args = (codes, scales, like)
    return [codes, scales]


def _free_name(gm: fx.GraphModule, base: str) -> str:
    name, i = base, 1
    while True:
        try:
            gm.get_submodule(name)
        except AttributeError:
            return name
        i += 1
        name = f"{base}_{i}"


def fuse(gm: fx.GraphModule, nodes: list[fx.Node], backend: str, set_submodule
         ) -> tuple[list[str], list[fx.Node], list[fx.Node]]:
    """Rewrite the producers among `nodes`; returns (names of the fused producer nodes,
    nodes added to the graph, nodes erased from it) so a stage's node list can follow."""
    fused: list[str] = []
    added: list[fx.Node] = []
    erased: list[fx.Node] = []
    for node in nodes:
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), RMSNorm):
            act = _act_of_consumers(gm, node)
            if act is None:
                continue
            norm = gm.get_submodule(node.target)
            m = lowered.NormQuant(norm.weight.shape[0], norm.eps, act[0], act[1], backend)
            m.weight = norm.weight
            set_submodule(gm, node.target, m)
            node.meta.pop("tensor_meta", None)
            added += _rewire(gm.graph, node, list(node.users), node.args[0])
            fused.append(node.name)
            continue
        ops_ = _silu_operands(node)
        act = _act_of_consumers(gm, node) if ops_ is not None else None
        if act is None:
            continue
        silu, gate, up = ops_
        users = list(node.users)
        parent = users[0].target.rpartition(".")[0]
        target = _free_name(gm, f"{parent}.silu_mul_quant" if parent else "silu_mul_quant")
        set_submodule(gm, target, lowered.SiluMulQuant(act[0], act[1], backend))
        with gm.graph.inserting_before(node):
            prod = gm.graph.call_module(target, (gate, up))
        added += [prod] + _rewire(gm.graph, prod, users, gate)
        gm.graph.erase_node(node)
        gm.graph.erase_node(silu)
        erased += [node, silu]
        fused.append(prod.name)
    return fused, added, erased

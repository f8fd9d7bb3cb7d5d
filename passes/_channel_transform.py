"""Fold an input transform into a group of linears and put its activation side in the graph.

For a group of linears reading one tensor x, an invertible transform (M, T) with M·Tᵀ = I
becomes: every weight W' = W·T (float64, cast once) and one inserted node x → x·M (a
`channel_transform` call reading M as a graph buffer), so x·M·W'ᵀ = x·Wᵀ. DuQuant and
LearnedAffine both write their transforms this way."""
from __future__ import annotations

import torch

from qpass.runtime.online import channel_transform


def fold_and_insert(g, region, M: torch.Tensor, T: torch.Tensor, buffer: str, node_name: str,
                    inserted_by: str, info: dict) -> list[str]:
    """Fold T into `region`'s linears and insert x·M before them, M held in the graph buffer
    `buffer`, the node named `node_name` (both fixed by the group, not the stage, so a
    streamed run names them the same). Returns the names of the nodes changed."""
    lins = region.consumers
    mods = [g.module(n) for n in lins]
    for m in mods:
        with torch.no_grad():
            W = m.weight.detach().to(torch.float64)
            m.weight.copy_((W @ T.to(device=W.device, dtype=torch.float64)).to(m.weight.dtype))
    ref = mods[0].weight
    buf = buffer
    while hasattr(g.gm, buf):
        buf += "_"
    g.gm.register_buffer(buf, M.to(device=ref.device, dtype=ref.dtype))
    with g.graph.inserting_before(lins[0]):
        mat = g.graph.create_node("get_attr", buf, name=buf)
        node = g.graph.create_node("call_function", channel_transform, (region.tensor, mat), {},
                                   name=node_name)
    key = inserted_by.lower()
    node.meta["qpass"] = {"role": "transform", "inserted_by": inserted_by, key: info}
    for lin in lins:
        lin.args = (node,) + tuple(lin.args[1:])
        lin.meta.setdefault("qpass", {})[key] = info
    return [lin.name for lin in lins] + [node.name]

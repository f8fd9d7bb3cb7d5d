"""A stage's graph edits, recorded so that a resumed streaming run rebuilds the same graph.

Passes change more than weights: Lower retargets attention and Hadamard nodes to kernel ops,
K/V schemes add `kv_bits` to attention nodes. A stage completed by an earlier (killed) run is
not re-run, so its nodes in the fresh capture are unedited; the stage record keeps every node
of the stage in the checkpoint's node format (qpass.runtime.graph_io) and `restore` puts the
recorded op, target, args and kwargs back on the live nodes. The node set itself must match:
a pass that inserted or removed nodes in a completed stage cannot be replayed this way, which
is said in one error (stage-wise passes edit nodes in place)."""
from __future__ import annotations

import torch.fx as fx

from qpass.errors import CheckpointError
from qpass.runtime import graph_vocab as vocab
from qpass.runtime.graph_io import decode, encode


def record(nodes: list[fx.Node]) -> list[dict]:
    """The stage's nodes as checkpoint node entries, in graph order."""
    out = []
    for n in nodes:
        target = vocab.name_of(n) if n.op in ("call_function", "call_method") else n.target
        out.append({"op": n.op, "name": n.name, "target": target, "args": encode(n.args),
                    "kwargs": encode(dict(n.kwargs))})
    return out


def restore(gm: fx.GraphModule, nodes: list[fx.Node], entries: list[dict]) -> None:
    """Put the recorded edits back on the live `nodes` of one stage (see the module doc)."""
    if [n.name for n in nodes] != [e["name"] for e in entries]:
        raise CheckpointError("a completed stage of the interrupted run has other nodes than "
                              "this run's graph; delete the run's .qpass-stream directory and "
                              "rerun from the start")
    env = {n.name: n for n in gm.graph.nodes}
    table = vocab.vocabulary()
    for n, e in zip(nodes, entries):
        target = e["target"]
        if e["op"] in ("call_function", "call_method"):
            target = table[target].target
        n.op, n.target = e["op"], target
        n.args = decode(e["args"], env)
        kwargs = e["kwargs"]
        n.kwargs = {k: decode(v, env, 1) for k, v in kwargs["dict"]}

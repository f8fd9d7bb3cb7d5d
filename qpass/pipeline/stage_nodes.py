"""A stage's graph edits, recorded so that a resumed run from a checkpoint dir rebuilds the same graph.

Passes change more than weights: Lower retargets attention and Hadamard nodes to kernel ops,
K/V schemes add `kv_bits` to attention nodes, Rotate and DuQuant insert online transforms
(a Hadamard before down_proj, a `channel_transform` reading a graph buffer). A stage completed
by an earlier (killed) run is not re-run, so its nodes in the fresh capture are unedited; the
stage record keeps every node of the stage in the checkpoint's node format
(qpass.runtime.graph_io) and `restore` puts the recorded op, target, args and kwargs back on
the live nodes, creating the inserted ones where they were and erasing the ones a pass
replaced (Lower's fused norm+quantize); a replaced node something still reads is one error.

While a stage runs, `adopt` gives it the nodes its passes inserted, so that the stage's
recomputation, verification and record include them."""
from __future__ import annotations

import torch.fx as fx

from qpass.errors import CheckpointError, PipelineError
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


def restore(gm: fx.GraphModule, nodes: list[fx.Node], entries: list[dict]) -> list[fx.Node]:
    """Put the recorded edits back on the live `nodes` of one stage, inserting the nodes the
    passes had inserted (see the module doc); returns the stage's nodes in graph order."""
    names = [e["name"] for e in entries]
    # nodes a pass replaced (Lower fuses a norm and its quantizer into one op): erased below
    erased = [n for n in nodes if n.name not in set(names)]
    env = {n.name: n for n in gm.graph.nodes}
    table = vocab.vocabulary()
    live = {n.name: n for n in nodes}
    cursor = None                                   # the last stage node placed
    for e in entries:
        if e["name"] in live:
            cursor = live[e["name"]]
            continue
        where = gm.graph.inserting_after(cursor) if cursor is not None else \
            gm.graph.inserting_before(nodes[0])
        with where:
            n = gm.graph.create_node(e["op"], _target(e, table), (), {}, name=e["name"])
        if n.name != e["name"]:
            raise CheckpointError(f"node {e['name']!r} of a completed stage clashes with a node of "
                                  f"this run's graph; delete the run's .qpass-stream directory and "
                                  f"rerun from the start")
        env[n.name] = live[n.name] = cursor = n
    for e in entries:
        n = live[e["name"]]
        n.op, n.target = e["op"], _target(e, table)
        n.args = decode(e["args"], env)
        n.kwargs = {k: decode(v, env, 1) for k, v in e["kwargs"]["dict"]}
    for n in reversed(erased):          # no recorded node reads them any more
        if n.users:
            raise CheckpointError("a completed stage of the interrupted run has other nodes "
                                  "than this run's graph; delete the run's .qpass-stream "
                                  "directory and rerun from the start")
        gm.graph.erase_node(n)
    return [live[name] for name in names]


def _target(entry: dict, table):
    if entry["op"] in ("call_function", "call_method"):
        return table[entry["target"]].target
    return entry["target"]


def adopt(graph: fx.Graph, stage, known: set) -> list[fx.Node]:
    """Make the nodes inserted since `known` was taken part of `stage` (in graph order) and
    drop erased ones; returns the new nodes. An inserted node read by another stage would
    have to cross a boundary the runner has already fixed: one PipelineError."""
    mine = set(stage.nodes)
    new = [n for n in graph.nodes if n.op not in ("placeholder", "output") and n not in known]
    mine.update(new)
    for n in new:
        outside = [u.name for u in n.users if u not in mine]
        if outside:
            raise PipelineError(f"{stage.name}: node {n.name} inserted by a pass is read outside "
                                f"its stage ({', '.join(outside)}); passes work stage by stage "
                                f"and must keep the nodes they insert inside the stage")
        known.add(n)
    stage.nodes[:] = [n for n in graph.nodes if n in mine]
    return new


def attr_targets(graph: fx.Graph, nodes: list[fx.Node]) -> list[str]:
    """The graph attributes only this stage's nodes read (buffers a pass added, such as
    DuQuant's transform matrices); tables every block reads (RoPE) belong to no stage."""
    mine = set(nodes)
    shared = {n.target for n in graph.nodes if n.op == "get_attr" and n not in mine}
    return list(dict.fromkeys(n.target for n in nodes if n.op == "get_attr"
                              and n.target not in shared))

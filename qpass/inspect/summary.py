"""What `qpass inspect` shows: per node role/block/shape/dtype/params, per block its groups."""
from __future__ import annotations

import torch.fx as fx

from ..ir import QGraph

# The node.meta["qpass"] keys passes write (passes/_quantize_common.py, rotate.py, fuse_norms.py,
# _smoothing_pairs.py, duquant.py, gptq.py, awq.py): what each did to the node, shown per row.
PASS_META_KEYS = ("weight_spec", "act_spec", "quant_reason", "weight_sqnr_db", "rotate",
                  "fused_norm", "fused_into", "smoothing", "smoothing_skipped", "smoothed_by",
                  "duquant", "gptq", "awq_clip")


def _shape(n: fx.Node):
    tm = n.meta.get("tensor_meta")
    if tm is None or not hasattr(tm, "shape"):
        return None, None
    return list(tm.shape), str(tm.dtype).replace("torch.", "")


def _params(g: QGraph, n: fx.Node) -> int:
    if n.op != "call_module":
        return 0
    return sum(p.numel() for p in g.module(n).parameters(recurse=True))


def node_rows(g: QGraph, interesting_only: bool = True) -> list[dict]:
    rows = []
    for n in g.graph.nodes:
        meta = n.meta.get("qpass", {})
        role = meta.get("role")
        if interesting_only and role is None and n.op not in ("placeholder", "output"):
            continue
        shape, dtype = _shape(n)
        row = {"name": n.name, "op": n.op, "target": str(n.target) if n.op != "call_function"
               else getattr(n.target, "__name__", str(n.target)),
               "role": role, "block": meta.get("block"), "shape": shape, "dtype": dtype,
               "params": _params(g, n)}
        for k in PASS_META_KEYS:
            if k in meta:
                row[k] = meta[k]
        rows.append(row)
    return rows


def block_rows(g: QGraph) -> list[dict]:
    out = []
    for b in g.blocks():
        groups = g.groups(b)
        out.append({"block": b.index, "linears": [n.target for n in b.linears],
                    "n_linears": len(b.linears), "groups": groups})
    return out


def summarize(g: QGraph, model_name: str = "") -> dict:
    from qpass.runtime.report_summary import float_dtype, module_nbytes
    linears = g.linears()
    return {
        "model": model_name,
        "config": g.config.to_dict() if g.config is not None else None,
        "n_nodes": len(g.graph.nodes),
        "n_blocks": len(g.blocks()),
        "n_linears": len(linears),
        "head": [n.target for n in g.nodes("head")],
        "params": sum(p.numel() for p in g.gm.parameters()),
        "bytes": module_nbytes(g.gm)["total"],     # what `qpass quantize` calls the size before
        "dtype": float_dtype(g.gm),
        "blocks": block_rows(g),
        "nodes": node_rows(g),
    }

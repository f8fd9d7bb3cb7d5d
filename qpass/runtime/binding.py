"""Which kernel runs each lowered node on a device, and why (DESIGN §6).

A lowered graph names ops (`qpass::linear_w4a4`, `qpass::attention`, ...) and, per node, a
backend preference ("auto" or a name); the registry picks the kernel per device and dtype at
run time. `bind(gm, device, dtype)` asks the registry the same question ahead of time for every
lowered node, so the Lower pass can record its choice in the manifest and `load_compiled(dir,
device=)` can say (and check) what the checkpoint will run on the target device."""
from __future__ import annotations

from collections import Counter

import torch
import torch.fx as fx

from qpass.backends import registry
from qpass.runtime import lowered, lowered_float


def linear_request(m: lowered.LoweredLinear, codes_dtype=None) -> tuple[str, dict]:
    """(op name, spec dict) exactly as LoweredLinear.forward (or LoweredFloatLinear.forward)
    hands them to the registry; codes_dtype: the linear takes producer-quantized codes, output
    in that dtype."""
    K, N = m.in_features, m.out_features
    if isinstance(m, lowered_float.LoweredFloatLinear):
        if m.kind == "fp8":
            group = m.weight_spec.group_size if m.weight_spec.granularity in ("group", "block") \
                else 0
            return "linear_fp8", dict(K=K, N=N, group_size=group, static=m.act_scale is not None)
        block, scale = m.fp4_format()
        return "linear_fp4a16", dict(K=K, N=N, block=block, scale_format=scale)
    if codes_dtype is not None:
        return "linear_int_codes", dict(w_bits=8 if m.kind == "w8a8" else 4,
                                        group_size=m.group_size, K=K, N=N, out_dtype=codes_dtype)
    if m.kind == "w4a16":
        return "linear_w4a16", dict(bits=m.bits, group_size=m.group_size or K,
                                    asym=m.zeros is not None, K=K, N=N)
    if m.kind == "w8a8":
        return "linear_w8a8", dict(K=K, N=N)
    return f"linear_{m.kind}", dict(group_size=m.group_size, K=K, N=N)


def _kw(node: fx.Node, name: str, pos: int, default):
    if name in node.kwargs:
        return node.kwargs[name]
    return node.args[pos] if len(node.args) > pos else default


def requests(gm: fx.GraphModule, head_dim: int | None = None, dtype=torch.float32
             ) -> list[tuple[str, str, dict, str]]:
    """(node name, op, spec, backend preference) for every lowered node of the graph."""
    out = []
    for node in gm.graph.nodes:
        if node.op == "call_module":
            m = gm.get_submodule(node.target)
            if isinstance(m, lowered.LoweredLinear):
                op, spec = linear_request(m, dtype if len(node.args) == 3 else None)
                out.append((node.name, op, spec, m.backend))
            elif isinstance(m, lowered_float.LoweredFloatLinear):
                out.append((node.name, *linear_request(m), m.backend))
            elif isinstance(m, lowered.NormQuant):
                out.append((node.name, "rmsnorm_quant",
                            dict(bits=m.bits, grid=m.grid, K=m.weight.shape[0]), m.backend))
            elif isinstance(m, lowered.SiluMulQuant):
                tm = getattr(node.args[0], "meta", {}).get("tensor_meta")
                K = int(tm.shape[-1]) if tm is not None else None
                out.append((node.name, "silu_mul_quant", dict(bits=m.bits, grid=m.grid, K=K),
                            m.backend))
        elif node.op == "call_function" and node.target is lowered.attention:
            tm = getattr(node.args[0], "meta", {}).get("tensor_meta")
            D = int(tm.shape[-1]) if tm is not None else head_dim
            backend = _kw(node, "backend", 6, "auto")
            if _kw(node, "kv_bits", 7, 0):
                out.append((node.name, "attention_kv", dict(D=D), backend))
                continue
            spec = dict(D=D, int8=bool(_kw(node, "int8", 5, False)),
                        causal=bool(_kw(node, "causal", 4, False)))
            out.append((node.name, "attention", spec, backend))
        elif node.op == "call_function" and node.target is lowered.hadamard:
            tm = getattr(node.args[0], "meta", {}).get("tensor_meta")
            spec = dict(n=int(tm.shape[-1])) if tm is not None else {}
            out.append((node.name, "hadamard", spec, _kw(node, "backend", 2, "auto")))
    return out


def choose(node: str, op: str, spec: dict, device, dtype, prefer: str = "auto"
           ) -> tuple[dict, list[tuple[str, str]]]:
    """({node, op, backend, why}, [(skipped backend, reason)]) for one lowered node. `why`
    names the backends passed over with their reasons, or says it was the first choice."""
    chosen, skipped = registry.explain(op, device, spec, dtype, prefer)
    backend = chosen.name if chosen is not None else "none"
    if skipped:
        why = "; ".join(f"{n} passed over: {r}" for n, r in skipped)
    else:
        why = "first choice (" + ("preferred" if prefer not in (None, "auto")
                                  else "highest priority available") + ")"
    return {"node": node, "op": op, "backend": backend, "why": why}, skipped


def bind(gm: fx.GraphModule, device=None, dtype=torch.float32,
         head_dim: int | None = None, prepare: bool = False) -> list[dict]:
    """One row per lowered node of the graph: {node, op, backend, why} on `device`. With
    prepare=True each chosen backend also builds its private weight layouts for the node
    once, now (Backend.prepare), and the row says what it built under "prepared"."""
    rows = [choose(name, op, spec, device, dtype, prefer)[0]
            for name, op, spec, prefer in requests(gm, head_dim, dtype)]
    if prepare:
        modules = {n.name: gm.get_submodule(n.target) for n in gm.graph.nodes
                   if n.op == "call_module"}
        for row in rows:
            m = modules.get(row["node"])
            if m is not None and row["backend"] not in ("none", "simulated"):
                done = registry.get(row["backend"]).prepare(row["op"], m)
                if done:
                    row["prepared"] = done
    return rows


def summary(rows: list[dict]) -> str:
    """'linear_w4a4 ×42 → reference, attention ×6 → reference' (counts per op and backend)."""
    counts = Counter((r["op"], r["backend"]) for r in rows)
    return ", ".join(f"{op} ×{n} → {b}" for (op, b), n in sorted(counts.items()))

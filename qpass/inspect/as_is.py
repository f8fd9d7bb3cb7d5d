"""`qpass inspect` of a model captured as it is, from its structure alone (the meta device:
DiffusionGemma-26B-A4B in seconds): its layer stacks, every linear and expert store with its
shape and tied aliases, and the bytes of its weights under each scheme.

Roles here come from the module tree and shapes (the head is the model's output embedding, a
router is a linear in a layer with an expert store or list whose output size is the number of
experts); a quantizing run finds them from the traced graph (qpass.ir.model_structure)."""
from __future__ import annotations

import torch.nn as nn

from qpass.ir.model_structure import stacks
from qpass.ir.value_trace import is_expert_store
from qpass.specs import Scheme

SCHEMES = ("w8a16", "w4a16g128", "w3a16g128", "w2a16g128", "q4_0")
FLOAT_BYTES = 2                   # bf16 / fp16 for what stays in high precision


def _n_experts(layer: nn.Module) -> set[int]:
    out = set()
    for m in layer.modules():
        if is_expert_store(m):
            out.add(next(p for p in m.parameters(recurse=False) if p.dim() == 3).shape[0])
        if isinstance(m, nn.ModuleList) and len(m) > 1 and \
                any(isinstance(x, nn.Linear) for x in m[0].modules()):
            out.add(len(m))
    return out


def summarize_as_is(model: nn.Module, name: str = "") -> dict:
    layer_lists = stacks(model)
    layer_of = {p: (si, li) for si, s in enumerate(layer_lists) for li, p in enumerate(s)}
    head = getattr(model, "get_output_embeddings", lambda: None)()
    head_w = id(head.weight) if isinstance(head, nn.Linear) else None
    experts_in = {p: _n_experts(model.get_submodule(p)) for p in layer_of}
    seen: dict[int, dict] = {}
    for path, m in model.named_modules():
        if not (isinstance(m, nn.Linear) or is_expert_store(m)):
            continue
        key = id(m.weight) if isinstance(m, nn.Linear) else \
            id(next(p for p in m.parameters(recurse=False) if p.dim() == 3))
        if key in seen:
            seen[key]["aliases"].append(path)
            continue
        lp = next((p for p in layer_of if path.startswith(p + ".")), None)
        if isinstance(m, nn.Linear):
            shapes = [(m.out_features, m.in_features)]
            role = "head" if key == head_w else \
                "router" if lp and m.out_features in experts_in[lp] else "linear"
            kind = "linear"
        else:
            shapes = [tuple(p.shape) for p in m.parameters(recurse=False) if p.dim() == 3]
            role = kind = "experts"
        seen[key] = {"path": path, "kind": kind, "role": role, "aliases": [path],
                     "shapes": shapes, "params": sum(_numel(s) for s in shapes),
                     "layer": lp}
    items = list(seen.values())
    total = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    quantizable = [it for it in items if it["role"] in ("linear", "experts")]
    rest = total - sum(it["params"] for it in quantizable)
    sizes = {"bf16": total * FLOAT_BYTES}
    for s in SCHEMES:
        w = Scheme.parse(s).weight
        sizes[s] = rest * FLOAT_BYTES + sum(_bytes(shape, w) for it in quantizable
                                            for shape in it["shapes"])
    return {"model": name or type(model).__name__, "architecture": type(model).__name__,
            "stacks": [{"first": s[0], "layers": len(s)} for s in layer_lists],
            "items": items, "parameters": total,
            "quantizable_parameters": sum(it["params"] for it in quantizable),
            "bytes": sizes}


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _bytes(shape, spec) -> int:
    """Stored bytes of a (…, N, K) weight under `spec`: packed codes + scales (+ zeros)."""
    *lead, N, K = shape
    copies = _numel(lead) if lead else 1
    g = spec.group_size if spec.granularity == "group" else K
    groups = -(-K // g)
    scale = 2 if "f16" in str(spec) else 4
    zero = 0 if spec.symmetric else 4
    return copies * (N * K * spec.bits // 8 + N * groups * (scale + zero))


def render_as_is(summary: dict, console, max_rows: int = 40) -> None:
    from rich.table import Table

    from qpass.display.units import fmt_bytes
    console.print(f"[bold]{summary['model']}[/bold] — {summary['architecture']}, captured as "
                  f"it is: {summary['parameters']:,} parameters, "
                  f"{summary['quantizable_parameters']:,} in linears and experts")
    for s in summary["stacks"]:
        console.print(f"  stack {s['first'].rsplit('.', 1)[0]}: {s['layers']} layers")
    t = Table(title="Linears and expert stores (first layer of each stack, and outside them)")
    for col in ("path", "kind", "role", "shape", "tied"):
        t.add_column(col)
    firsts = {s["first"] for s in summary["stacks"]}
    rows = [it for it in summary["items"] if it["layer"] is None or it["layer"] in firsts]
    for it in rows[:max_rows]:
        t.add_row(it["path"], it["kind"], it["role"],
                  " + ".join("×".join(map(str, s)) for s in it["shapes"]),
                  str(len(it["aliases"]) - 1) if len(it["aliases"]) > 1 else "")
    console.print(t)
    b = Table(title="Weight bytes per scheme (routers, head, embeddings, norms in 16-bit)")
    b.add_column("scheme")
    b.add_column("bytes", justify="right")
    b.add_column("vs bf16", justify="right")
    for k, v in summary["bytes"].items():
        spec = "" if k == "bf16" else f" ({Scheme.parse(k).weight})"
        b.add_row(k + spec, fmt_bytes(v), f"{v / summary['bytes']['bf16']:.3f}")
    console.print(b)

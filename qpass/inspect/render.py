"""Renderers for `qpass inspect`: rich text tables, JSON and Graphviz dot."""
from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table

from qpass.runtime.report import name_column, wrapping_column
from qpass.display.units import fmt_bytes

from ..ir import QGraph


def _fmt_shape(s) -> str:
    return "×".join(str(x) for x in s) if s else ""


def display_name(row: dict) -> str:
    """A node as the user names it: a module's path (`blocks.0.q_proj`, as in recipes, the
    run report and checkpoints) for a module call, the graph's own name otherwise."""
    return row["target"] if row["op"] == "call_module" else row["name"]


def render_text(summary: dict, console: Console | None = None, max_nodes: int = 200) -> None:
    con = console or Console()
    s = summary
    con.print(f"[bold]{s['model']}[/]: {s['n_blocks']} blocks, {s['n_linears']} linears "
              f"(head: {', '.join(s['head'])}), {s['n_nodes']} graph nodes")
    con.print(f"{s['params'] / 1e6:.2f}M parameters ({fmt_bytes(s['bytes'])}"
              f"{' ' + s['dtype'] if s.get('dtype') else ''})", highlight=False)
    bt = Table(title="Blocks and discovered groups")
    for c in ("block", "linears", "norm → linears", "up → down", "v → o"):
        wrapping_column(bt, c)
    for b in s["blocks"]:
        g = b["groups"]
        norms = "\n".join(f"{n.split('.')[-1]} → {{{', '.join(x.split('.')[-1] for x in ls)}}}"
                          for n, ls in g["norm->linears"])
        ud = "\n".join(f"{u.split('.')[-1]} → {d.split('.')[-1]}" for _, u, d in g["up->down"])
        vo = "\n".join(f"{v.split('.')[-1]} → {o.split('.')[-1]}" for v, o in g["v->o"]) or \
            "\n".join(f"skipped: {r}" for _, _, r in g["v->o skipped"]) or "-"
        bt.add_row(str(b["block"]), str(b["n_linears"]), norms, ud, vo)
    con.print(bt)
    rows = s["nodes"][:max_nodes]
    nt = Table(title=f"Nodes (first {max_nodes} with a role; a module by its path)")
    name_column(nt, "node", [display_name(r) for r in rows])       # whole, never `blocks_0_…`
    for c in ("role", "block", "shape", "dtype", "params"):
        wrapping_column(nt, c, justify="right" if c == "params" else "left")
    for r in rows:
        nt.add_row(display_name(r), str(r["role"] or r["op"]),
                   "" if r["block"] is None else str(r["block"]), _fmt_shape(r["shape"]),
                   r["dtype"] or "", f"{r['params']:,}" if r["params"] else "")
    con.print(nt)


def render_json(summary: dict) -> str:
    return json.dumps(summary, indent=1, default=str)


_COLORS = {"linear": "lightblue", "head": "orange", "norm": "palegreen", "embed": "khaki",
           "attention": "pink", "residual_add": "lightgrey", "hadamard": "violet"}


def render_dot(g: QGraph) -> str:
    lines = ["digraph qpass {", "  rankdir=TB; node [shape=box, style=filled, fillcolor=white];"]
    for n in g.graph.nodes:
        meta = n.meta.get("qpass", {})
        role = meta.get("role")
        label = f"{n.name}\\n{role or n.op}" + (f" [b{meta['block']}]" if meta.get("block") is not None else "")
        lines.append(f'  "{n.name}" [label="{label}", fillcolor="{_COLORS.get(role, "white")}"];')
        for a in n.all_input_nodes:
            lines.append(f'  "{a.name}" -> "{n.name}";')
    lines.append("}")
    return "\n".join(lines)

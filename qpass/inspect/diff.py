"""`qpass inspect MODEL --pipeline P --after PASS [--diff]`: what a pass did, node by node.

`snapshot(g)` records, per node, what passes change: its module class, specs, whether a norm
is weightless, a weight fingerprint, a summary of quantization scales (min / median / max) and
the pass annotations in `node.meta["qpass"]` (fused norms, rotations, smoothing, …).
`diff_snapshots(before, after)` lists added / removed nodes (e.g. Hadamard nodes) and every
changed field; `inspect_after` runs a pipeline up to a pass and returns both."""
from __future__ import annotations

import copy
from typing import Any

import torch

from qpass.errors import PipelineError
from qpass.ir import capture
from qpass.models import on_meta

_SKIP_META = {"role", "block", "weight_sqnr_db"}


def _summary(t: torch.Tensor) -> str:
    v = t.detach().float().flatten()
    return f"{v.min().item():.3g} / {v.median().item():.3g} / {v.max().item():.3g}"


def _short(x: Any, n: int = 80) -> str:
    s = str(x)
    return s if len(s) <= n else s[: n - 1] + "…"


def node_state(g, n) -> dict:
    meta = n.meta.get("qpass", {})
    st: dict[str, Any] = {"op": n.op, "target": n.target if isinstance(n.target, str)
                          else getattr(n.target, "__name__", str(n.target)),
                          "role": meta.get("role"), "inputs": [a.name for a in n.all_input_nodes]}
    for k, v in meta.items():
        if k not in _SKIP_META and v is not None:
            st[f"meta.{k}"] = _short(v)
    if n.op == "call_module":
        m = g.module(n)
        st["module"] = type(m).__name__
        for attr in ("weight_spec", "act_spec"):
            if getattr(m, attr, None) is not None:
                st[attr] = str(getattr(m, attr))
        w = getattr(m, "weight", None)
        if isinstance(w, torch.Tensor) and w.device.type != "meta":
            if meta.get("role") == "norm":
                st["norm weight"] = "weightless (ones)" if torch.all(w == 1) else "learned"
            else:
                st["weight ‖W‖"] = f"{w.detach().double().norm().item():.6g}"
        s = getattr(m, "scales", None)
        if isinstance(s, torch.Tensor) and s.device.type != "meta":
            st["scales min/median/max"] = _summary(s)
    return st


def snapshot(g) -> dict[str, dict]:
    return {n.name: node_state(g, n) for n in g.gm.graph.nodes}


def diff_snapshots(before: dict, after: dict) -> list[dict]:
    """[{"node", "change": added|removed|changed, "detail"}] in the new graph's order, removed
    nodes last."""
    rows = []
    for name, st in after.items():
        if name not in before:
            rows.append({"node": name, "change": "added",
                         "detail": f"{st['op']} {st['target']} (role {st['role']})"})
            continue
        old = before[name]
        diffs = [f"{k}: {old.get(k, '-')} → {st.get(k, '-')}" for k in
                 sorted(set(old) | set(st), key=str) if old.get(k) != st.get(k)]
        if diffs:
            rows.append({"node": name, "change": "changed", "detail": "; ".join(diffs)})
    rows += [{"node": name, "change": "removed", "detail": f"{st['op']} {st['target']}"}
             for name, st in before.items() if name not in after]
    return rows


def find_pass(pipeline, name: str) -> int:
    names = [p.name for p in pipeline.passes]
    for i, n in enumerate(names):
        if n.lower() == name.lower():
            return i
    raise PipelineError(f"the pipeline has no pass {name!r}; its passes: {', '.join(names)}")


def inspect_after(model, pipeline, after: str, calib=None, seed: int = 0) -> dict:
    """Run `pipeline` on a private copy of `model` up to and including pass `after`.
    Returns {"pass", "before", "after", "changes", "result"}."""
    idx = find_pass(pipeline, after)
    need = [p.name for p in pipeline.passes[: idx + 1] if p.needs_calibration]
    if need and calib is None:
        raise PipelineError(f"pass(es) {', '.join(need)} need calibration data (--calib-n)")
    from qpass.pipeline.order import facts_after
    g = capture(model if on_meta(model) else copy.deepcopy(model))
    passes = pipeline.passes
    try:
        if idx:          # the passes before `after`, then `after` alone on what they left
            pipeline.replace(passes=passes[:idx]).apply(g, calib=calib, seed=seed)
        before = snapshot(g)
        last = pipeline.replace(passes=passes[idx:idx + 1],
                                initial_facts=facts_after(passes[:idx], pipeline.initial_facts))
        report = last.apply(g, calib=calib, seed=seed)
    except RuntimeError as e:
        if on_meta(model) and "meta" in str(e):           # a structure-only (meta) model
            raise PipelineError(f"pass {passes[idx].name} (or one before it) needs real "
                                f"weights and cannot run on a structure-only (meta) model; "
                                f"inspect an earlier pass or use a checkpoint directory") from None
        raise
    now = snapshot(g)
    return {"pass": repr(passes[idx]), "before": before, "after": now,
            "changes": diff_snapshots(before, now), "graph": g,
            "notes": list(report.passes[0].notes)}



def _display(name: str, st: dict) -> str:
    """A node as the user names it: a module's path for a module call, else the graph name."""
    return st["target"] if st.get("op") == "call_module" and isinstance(st.get("target"), str) \
        else name


def render_changes(info: dict, console=None, diff: bool = True, max_rows: int = 400) -> None:
    from rich.console import Console
    from rich.table import Table

    from qpass.runtime.report import name_column, wrapping_column
    console = console or Console()
    states = {**info["before"], **info["after"]}
    if diff:
        rows = info["changes"][:max_rows]
        names = [_display(r["node"], states.get(r["node"], {})) for r in rows]
        t = Table(title=f"What {info['pass']} changed ({len(info['changes'])} nodes)")
        name_column(t, "node", names)
        for col in ("change", "detail"):
            wrapping_column(t, col)
        for name, r in zip(names, rows):
            t.add_row(name, r["change"], r["detail"])
    else:
        shown = [(name, st) for name, st in list(info["after"].items())[:max_rows]
                 if st["role"] not in (None, "residual_add", "mul", "activation", "rope")
                 or any(k.startswith("meta.") for k in st)]
        t = Table(title=f"Graph after {info['pass']} (linears, norms and pass-made nodes)")
        name_column(t, "node", [_display(name, st) for name, st in shown])
        for col in ("role", "module", "weight", "act", "scales min/median/max", "notes"):
            wrapping_column(t, col)
        for name, st in shown:
            notes = "; ".join(f"{k[5:]}={v}" for k, v in st.items() if k.startswith("meta."))
            t.add_row(_display(name, st), st["role"] or "", st.get("module", st["op"]),
                      st.get("weight_spec", "-"), st.get("act_spec", "-"),
                      st.get("scales min/median/max", "-"), notes or st.get("norm weight", ""))
    console.print(t)
    from qpass.inspect.smoothing import render_smoothing, smoothing_rows
    if smoothing_rows(info):                          # SmoothQuant / AWQ: scales per pair
        render_smoothing(smoothing_rows(info), console)
    for n in info["notes"][:20]:
        console.print(f"  note: {n}")


def changes_json(info: dict) -> dict:
    from qpass.inspect.smoothing import smoothing_rows
    return {"pass": info["pass"], "changes": info["changes"], "after": info["after"],
            "notes": info["notes"], "smoothing": smoothing_rows(info)}

"""`qpass inspect --after SmoothQuant` (or AWQ): the smoothing scales per pair.

Both passes record, on each pair's producer node, `node.meta["qpass"]["smoothing"]` (α, scale
min/median/max, input max/median ratio before/after) and, for pairs they could not fold,
`["smoothing_skipped"]` with the reason; they also return the same records in
`PassResult.metrics["pairs"]` / `["skipped_pairs"]`. This module only reads those records, so
the core never imports a pass."""
from __future__ import annotations

from typing import Any

COLUMNS = ("blk", "producer", "kind", "consumers", "α", "s min", "s med", "s max",
           "max/med before", "max/med after", "skipped because")


def _row(rec: dict, block=None, pass_name: str | None = None) -> dict:
    return {"pass": rec.get("pass_name", pass_name), "block": rec.get("block", block),
            "producer": rec["producer"], "kind": rec["kind"], "consumers": list(rec["consumers"]),
            "alpha": rec.get("alpha"), "scale_min": rec.get("scale_min"),
            "scale_median": rec.get("scale_median"), "scale_max": rec.get("scale_max"),
            "ratio_before": rec.get("ratio_before"), "ratio_after": rec.get("ratio_after"),
            "skipped_reason": rec.get("skipped_reason")}


def _from_graph(gm) -> list[dict]:
    rows = []
    for n in gm.graph.nodes:
        meta = n.meta.get("qpass", {})
        for key in ("smoothing", "smoothing_skipped"):
            if key in meta:
                rows.append(_row(meta[key], meta.get("block")))
    return rows


def _from_metrics(metrics: dict, pass_name: str | None) -> list[dict]:
    return [_row(r, pass_name=pass_name) for r in
            list(metrics.get("pairs", [])) + list(metrics.get("skipped_pairs", []))
            if "producer" in r]


def smoothing_rows(obj: Any) -> list[dict]:
    """One row per smoothing pair (folded or skipped) from: a QGraph, a GraphModule, a
    CompiledDenoiser, the dict of `inspect_after`, a PassResult/PassRecord, or a Report."""
    if isinstance(obj, dict) and "graph" in obj:
        obj = obj["graph"]
    if hasattr(obj, "metrics") and isinstance(obj.metrics, dict):        # PassResult/Record
        return _from_metrics(obj.metrics, getattr(obj, "name", None))
    if hasattr(obj, "passes") and not hasattr(obj, "gm"):                # a Report
        return [r for rec in obj.passes for r in _from_metrics(rec.metrics, rec.name)]
    gm = getattr(obj, "gm", obj)
    if hasattr(gm, "graph"):
        return _from_graph(gm)
    raise TypeError(f"smoothing_rows cannot read {type(obj).__name__}; pass a QGraph, a compiled "
                    f"model, a PassResult or a Report")


def _f(x) -> str:
    return "—" if x is None else (f"{x:.3g}" if isinstance(x, float) else str(x))


def render_smoothing(rows: list[dict], console=None, title: str = "Smoothing scales per pair"):
    """Print the rows as a rich table (and return it)."""
    from rich.console import Console
    from rich.table import Table
    from qpass.runtime.report import name_column, wrapping_column
    t = Table(title=title)
    for c in COLUMNS:
        if c == "producer":                            # a module path: whole, never cut
            name_column(t, c, [r["producer"] for r in rows])
        else:
            wrapping_column(t, c, justify="left" if c in ("consumers", "skipped because", "kind")
                            else "right")
    for r in rows:
        short = [c.rsplit(".", 1)[-1] for c in r["consumers"]]      # the block is its own column
        t.add_row(_f(r["block"]), r["producer"], r["kind"], ", ".join(short),
                  _f(r["alpha"]), _f(r["scale_min"]), _f(r["scale_median"]), _f(r["scale_max"]),
                  _f(r["ratio_before"]), _f(r["ratio_after"]), r["skipped_reason"] or "")
    (console or Console()).print(t)
    return t

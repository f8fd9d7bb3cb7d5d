"""Paired comparisons between study rows: which rows share items, and the test between them.

A study row (one model, pipeline, seed, task) carries per-item records under "items"
(metric → ids / values / weights). Rows of one (model, pipeline, task) over several seeds are
pooled, each item id prefixed by its seed, so two pipelines are paired seed by seed, item by
item. Results cached before per-item records were kept have none: their comparisons are None
and tables say so instead of guessing from the size of a gap."""
from __future__ import annotations

from .paired import compare


def pooled_items(rows: list[dict], metric: str) -> dict | None:
    """The per-item record of `metric` over `rows` (seeds pooled), or None if any row lacks it."""
    ids, values, weights = [], [], []
    for r in sorted(rows, key=lambda r: r["seed"]):
        rec = (r.get("items") or {}).get(metric)
        if not rec:
            return None
        ids += [f"{r['seed']}:{i}" for i in rec["ids"]]
        values += list(rec["values"])
        weights += list(rec.get("weights") or [])
    return {"ids": ids, "values": values, "weights": weights or None}


def versus(rows_a: list[dict], rows_b: list[dict], metric: str, higher_is_better: bool
           ) -> dict | None:
    """compare() of A against B on `metric`, or None when either lacks per-item records or
    they were scored on different items (other settings)."""
    a, b = pooled_items(rows_a, metric), pooled_items(rows_b, metric)
    if a is None or b is None or a["ids"] != b["ids"]:
        return None
    return compare(a, b, higher_is_better)


def verdict_text(cmp: dict | None) -> str:
    """'worse (p=0.003)', 'tie (p=0.42)', or '– (no items)' for a table cell."""
    if cmp is None:
        return "– (no items)"
    if cmp["test"] == "mcnemar-exact":
        return f"{cmp['verdict']} (p={cmp['p']:.3g})"
    return f"{cmp['verdict']} [{cmp['lo']:+.4f}, {cmp['hi']:+.4f}]"

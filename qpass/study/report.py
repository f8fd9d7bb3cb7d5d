"""The study's outputs from its rows: a rich table, Markdown, CSV, JSON and PNG plots.

Each task has one headline metric (cloze accuracy for general, exact match for math, bits per
byte for code) and the relative drop vs FP of the same model and seed, in percent, signed so
that positive is worse whichever direction the metric goes. Seeds are averaged."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..folders.owned import replacing, write_output

HEADLINE = {"general": ("cloze_acc", True), "math": ("exact_match", True),
            "code": ("bits_per_byte", False)}   # metric, higher is better


def headline(task: str, row: dict) -> tuple[str, bool]:
    if task in HEADLINE:
        return HEADLINE[task]
    for key in ("acc", "exact_match", "pass_at_1", "bits_per_byte"):
        if key in row:
            return key, key != "bits_per_byte"
    raise KeyError(f"no headline metric for task {task}")


def summarize(rows: list[dict]) -> list[dict]:
    """One line per (model, pipeline, task): seed-mean headline value and drop vs FP (%)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["pipeline"], r["task"]), []).append(r)
    out = []
    for (model, pipe, task), rs in groups.items():
        metric, higher = headline(task, rs[0])
        value = sum(r[metric] for r in rs) / len(rs)
        out.append({"model": model, "pipeline": pipe, "method": rs[0]["method"],
                    "w_bits": rs[0]["w_bits"], "a_bits": rs[0]["a_bits"], "task": task,
                    "category": rs[0]["category"], "metric": metric, "higher_is_better": higher,
                    "value": value, "seeds": len(rs), "cached": all(r["cached"] for r in rs)})
    fp = {(s["model"], s["task"]): s["value"] for s in out if s["pipeline"] == "fp"}
    for s in out:
        ref = fp.get((s["model"], s["task"]))
        if ref is None or ref == 0:
            s["drop_vs_fp_pct"] = None
        else:
            change = (ref - s["value"]) if s["higher_is_better"] else (s["value"] - ref)
            s["drop_vs_fp_pct"] = 100.0 * change / abs(ref)
    return out


def _fmt(v) -> str:
    if v is None:
        return "–"
    return f"{v:.4f}" if isinstance(v, float) else str(v)


_COLS = ("model", "pipeline", "w_bits", "a_bits", "task", "metric", "value", "drop_vs_fp_pct")


def rich_table(summary: list[dict], title: str):
    from rich.table import Table
    t = Table(title=title)
    for c in _COLS:
        t.add_column(c.replace("_", " "), justify="left" if c in ("model", "pipeline", "task",
                                                                  "metric") else "right")
    for s in summary:
        t.add_row(*(_fmt(s[c]) for c in _COLS))
    return t


def markdown(summary: list[dict], title: str) -> str:
    lines = [f"# {title}", "", "| " + " | ".join(_COLS) + " |",
             "|" + "|".join("---" for _ in _COLS) + "|"]
    lines += ["| " + " | ".join(_fmt(s[c]) for c in _COLS) + " |" for s in summary]
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict]) -> str:
    keys = sorted({k for r in rows for k in r})
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def plots(summary: list[dict], out: Path) -> list[Path]:
    """accuracy_vs_bits.png (one panel per task category, one line per method, x = weight bits
    with activation bits in the label) and drop_vs_fp.png (bars per pipeline and task)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    written = []
    cats = sorted({s["category"] for s in summary})
    fig, axes = plt.subplots(1, len(cats), figsize=(5 * len(cats), 3.8), squeeze=False)
    for ax, cat in zip(axes[0], cats):
        part = [s for s in summary if s["category"] == cat]
        for (model, method) in sorted({(s["model"], s["method"]) for s in part}):
            pts = sorted((s["w_bits"] + s["a_bits"] / 100, s["value"]) for s in part
                         if s["model"] == model and s["method"] == method)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{model} {method}")
        ax.set_title(f"{cat}: {part[0]['metric']}")
        ax.set_xlabel("weight bits (+ act bits / 100)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(out / "accuracy_vs_bits.png")
    with replacing(written[-1]) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    q = [s for s in summary if s["pipeline"] != "fp" and s["drop_vs_fp_pct"] is not None]
    if q:
        fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(q)), 4))
        ax.bar(range(len(q)), [s["drop_vs_fp_pct"] for s in q])
        ax.set_xticks(range(len(q)), [f"{s['model']}\n{s['pipeline']}\n{s['task']}" for s in q],
                      fontsize=6)
        ax.set_ylabel("drop vs FP (%, positive = worse)")
        fig.tight_layout()
        written.append(out / "drop_vs_fp.png")
        with replacing(written[-1]) as tmp:
            fig.savefig(tmp, dpi=110)
        plt.close(fig)
    return written


def write_outputs(rows: list[dict], out: Path, title: str, with_plots: bool = True) -> dict:
    """Write results.{json,csv,md} (+ PNGs) into `out`; returns {kind: path}."""
    summary = summarize(rows)
    files = {"json": out / "results.json", "csv": out / "results.csv", "md": out / "results.md"}
    # each written into a new file, then renamed over the old one: never through a link
    write_output(files["json"], json.dumps({"title": title, "rows": rows, "summary": summary},
                                           indent=1) + "\n")
    write_output(files["csv"], csv_text(rows))
    write_output(files["md"], markdown(summary, title))
    if with_plots:
        for p in plots(summary, out):
            files[p.stem] = p
    return files

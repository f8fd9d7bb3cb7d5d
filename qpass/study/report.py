"""The study's outputs from its rows: a rich table, Markdown, CSV, JSON and PNG plots.

Each task has one headline metric (cloze accuracy for general, exact match for math, bits per
byte for code) and the relative drop vs FP of the same model and seed, in percent, signed so
that positive is worse whichever direction the metric goes. Seeds are averaged. Every row is
also tested against FP of the same model on the same items (qpass.study.significance): a
difference is called better or worse only when the paired test says so, never by its size."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..folders.owned import replacing, write_output
from .significance import verdict_text, versus

HEADLINE = {"general": ("cloze_acc", True), "math": ("exact_match", True),
            "code": ("bits_per_byte", False)}   # metric, higher is better


def headline(task: str, row: dict) -> tuple[str, bool]:
    if task in HEADLINE:
        return HEADLINE[task]
    for key in ("acc", "exact_match", "pass@1", "pass_at_1", "bits_per_byte"):
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
                    "format": rs[0].get("format", "int"),
                    "w_bits": rs[0]["w_bits"], "a_bits": rs[0]["a_bits"], "task": task,
                    "category": rs[0]["category"], "metric": metric, "higher_is_better": higher,
                    "value": value, "seeds": len(rs), "cached": all(r["cached"] for r in rs)})
    fp = {(s["model"], s["task"]): s["value"] for s in out if s["pipeline"] == "fp"}
    for s in out:
        ref_rows = groups.get((s["model"], "fp", s["task"]))
        cmp = None if s["pipeline"] == "fp" or not ref_rows else versus(
            groups[(s["model"], s["pipeline"], s["task"])], ref_rows, s["metric"],
            s["higher_is_better"])
        s["vs_fp"] = None if cmp is None else {k: cmp[k] for k in (
            "diff", "lo", "hi", "p", "test", "verdict")}
        s["vs_fp_text"] = "–" if s["pipeline"] == "fp" else verdict_text(cmp)
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


_COLS = ("model", "pipeline", "format", "w_bits", "a_bits", "task", "metric", "value", "drop_vs_fp_pct",
         "vs_fp_text")


_TRAJ_COLS = ("traj_kl_mean", "traj_wrong_commit_rate")
_HEADS = {"vs_fp_text": "vs FP (paired)", "traj_kl_mean": "KL/step (trajectory)",
          "traj_wrong_commit_rate": "wrong commits"}


def rich_table(summary: list[dict], title: str):
    from rich.table import Table
    t = Table(title=title)
    # the terminal table is narrower than the Markdown one: bits as "W4A16", and the numbers
    # never shortened (the verdict column folds instead)
    cols = ("model", "pipeline", "format", "bits", "task", "metric", "value", "drop_vs_fp_pct",
            "vs_fp_text")
    for c in cols:
        t.add_column("vs FP (paired)" if c == "vs_fp_text" else c.replace("_", " "),
                     justify="left" if c in ("model", "pipeline", "task", "metric",
                                             "vs_fp_text") else "right",
                     no_wrap=c in ("value", "drop_vs_fp_pct"),
                     overflow="fold")
    for s in summary:
        cells = {**s, "bits": f"W{s['w_bits']}A{s['a_bits']}"}
        t.add_row(*(_fmt(cells[c]) for c in cols))
    return t


def markdown(summary: list[dict], title: str) -> str:
    cols = _COLS + tuple(c for c in _TRAJ_COLS if any(c in s for s in summary))
    head = [_HEADS.get(c, c) for c in cols]
    lines = [f"# {title}", "", "| " + " | ".join(head) + " |",
             "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_fmt(s.get(c)) for c in cols) + " |" for s in summary]
    return "\n".join(lines) + "\n"


def csv_text(rows: list[dict]) -> str:
    """One line per row; the per-item records stay in results.json."""
    rows = [{k: v for k, v in r.items() if k != "items"} for r in rows]
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
        # one line per (model, method, number format): fp8/nvfp4/mxfp4 rows apart from int
        for key in sorted({(s["model"], s["method"], s.get("format", "int")) for s in part}):
            pts = sorted((s["w_bits"] + s["a_bits"] / 100, s["value"]) for s in part
                         if (s["model"], s["method"], s.get("format", "int")) == key)
            model, method, fmt = key
            label = f"{model} {method}" + ("" if fmt in ("int", "fp") else f" ({fmt})")
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
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
        bars = ax.bar(range(len(q)), [s["drop_vs_fp_pct"] for s in q],
                      yerr=_drop_errors(q, fp_values(summary)), capsize=2)
        for bar, s in zip(bars, q):     # hatched: not significantly different from FP (paired)
            if not (s.get("vs_fp") or {}).get("verdict") in ("better", "worse"):
                bar.set_hatch("//")
                bar.set_alpha(0.5)
        ax.set_title("hatched: no significant difference from FP (paired test, 95%); "
                     "bars: 95% paired interval", fontsize=7)
        ax.set_xticks(range(len(q)), [f"{s['model']}\n{s['pipeline']}\n{s['task']}" for s in q],
                      fontsize=6)
        ax.set_ylabel("drop vs FP (%, positive = worse)")
        fig.tight_layout()
        written.append(out / "drop_vs_fp.png")
        with replacing(written[-1]) as tmp:
            fig.savefig(tmp, dpi=110)
        plt.close(fig)
    return written


def fp_values(summary: list[dict]) -> dict:
    return {(s["model"], s["task"]): s["value"] for s in summary if s["pipeline"] == "fp"}


def _drop_errors(q: list[dict], fp: dict):
    """(2, n) error-bar lengths of drop_vs_fp_pct from each row's paired interval (0 without)."""
    lo, hi = [], []
    for s in q:
        v, ref = s.get("vs_fp"), fp.get((s["model"], s["task"]))
        if not v or not ref:
            lo.append(0.0)
            hi.append(0.0)
            continue
        sign = -1.0 if s["higher_is_better"] else 1.0      # drop = sign · diff / |ref|
        ends = sorted(100.0 * sign * e / abs(ref) for e in (v["lo"], v["hi"]))
        d = s["drop_vs_fp_pct"]
        lo.append(max(0.0, d - ends[0]))
        hi.append(max(0.0, ends[1] - d))
    return [lo, hi]


def study_data(rows: list[dict], title: str, accel_rows: list[dict] = (),
               traj_rows: list[dict] = ()) -> dict:
    """Everything the study's files show: rows, summary (with the trajectory columns), the
    acceleration rows, summary and AUP table, the trajectory rows."""
    from . import accel_report
    summary = summarize(rows)
    accel_rows, traj_rows = list(accel_rows), list(traj_rows)
    accel_report.merge_trajectory(summary, traj_rows)
    acc = accel_report.accel_summary(accel_rows)
    return {"title": title, "rows": rows, "summary": summary,
            "acceleration": {"rows": accel_rows, "summary": acc,
                             "aup": accel_report.aup_table(acc)},
            "trajectory": traj_rows}


def write_outputs(rows: list[dict], out: Path, title: str, with_plots: bool = True,
                  accel_rows: list[dict] = (), traj_rows: list[dict] = ()) -> dict:
    """Write results.{json,csv,md} (+ PNGs) into `out`; returns {kind: path}."""
    from . import accel_report
    data = study_data(rows, title, accel_rows, traj_rows)
    summary, acc = data["summary"], data["acceleration"]
    files = {"json": out / "results.json", "csv": out / "results.csv", "md": out / "results.md"}
    # each written into a new file, then renamed over the old one: never through a link
    write_output(files["json"], json.dumps(data, indent=1) + "\n")
    write_output(files["csv"], csv_text(rows))
    write_output(files["md"], markdown(summary, title) + accel_report.markdown(
        acc["summary"], acc["aup"], data["trajectory"]))
    if with_plots:
        for p in plots(summary, out) + accel_report.plots(acc["summary"], data["trajectory"], out):
            files[p.stem] = p
    return files

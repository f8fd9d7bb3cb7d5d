"""Per-model Markdown tables of a `qpass study` results.json, the layout of docs/RESULTS.md.

One table per model, one row per pipeline: Shakespeare and Python bits per byte with their
relative change vs FP, cloze accuracy and addition exact match with 95% Wilson intervals (both
are proportions over a known number of items), quantization seconds. Every number is read from
the JSON the study wrote; nothing is typed by hand.

    python scripts/study_tables.py bench/results/study_paper_cpu_2026-12-03.json"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

Z95 = 1.959963984540054   # two-sided 95% normal quantile


def wilson(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion p observed over n items."""
    if n <= 0:
        return float("nan"), float("nan")
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def _cells(rows: list[dict]) -> dict:
    """{model: {pipeline: {task: row}}} in the study's own order (seed 0 only)."""
    out: dict = {}
    for r in rows:
        if r["seed"] == rows[0]["seed"]:
            out.setdefault(r["model"], {}).setdefault(r["pipeline"], {})[r["task"]] = r
    return out


def _change(value: float, ref: float) -> str:
    return f"{100 * (value - ref) / ref:+.1f}%"


def _prop(p: float, n: int) -> str:
    lo, hi = wilson(p, n)
    return f"{p:.3f} [{lo:.2f}, {hi:.2f}]"


def model_table(cells: dict) -> list[str]:
    fp = cells["fp"]
    ref_g, ref_c = fp["general"]["bits_per_byte"], fp["code"]["bits_per_byte"]
    lines = ["| pipeline | Shakespeare bpb ↓ | Δ vs FP | cloze ↑ [95% CI] | math EM ↑ [95% CI] "
             "| Python bpb ↓ | Δ vs FP | quantize s |", "|---" * 8 + "|"]
    for pipe, t in cells.items():
        g, m, c = t["general"], t["math"], t["code"]
        q = "–" if pipe == "fp" else f"{g['quantize_seconds']:.1f}"
        lines.append(f"| {pipe} | {g['bits_per_byte']:.3f} | "
                     f"{'–' if pipe == 'fp' else _change(g['bits_per_byte'], ref_g)} | "
                     f"{_prop(g['cloze_acc'], g['cloze_n'])} | {_prop(m['exact_match'], m['n'])} | "
                     f"{c['bits_per_byte']:.3f} | "
                     f"{'–' if pipe == 'fp' else _change(c['bits_per_byte'], ref_c)} | {q} |")
    return lines


def tables(rows: list[dict]) -> str:
    parts = []
    for model, cells in _cells(rows).items():
        parts += [f"**{model}**", ""] + model_table(cells) + [""]
    return "\n".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", type=Path, help="results.json written by `qpass study`")
    args = ap.parse_args(argv)
    print(tables(json.loads(args.results.read_text())["rows"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The study's grid at tiny scale: bit-width × method × task category on `tiny-llada`.

For each preset: quantize (diffusion-masked calibration, 32 × 256 tokens from the training
split), then evaluate on the held-out splits with the SAME seeds as FP (paired comparison):
Shakespeare and Python bits/byte (ELBO), cloze accuracy, arithmetic exact match. Prints a rich
table to stderr and JSON on the last stdout line. `--quick` runs a smaller grid.

    python bench/study_tiny.py [--quick] [--masking diffusion|none|both]"""
from __future__ import annotations

import argparse
import json
import sys
import time

from rich.console import Console
from rich.table import Table

import qpass
from qpass.data import calibration_texts
from qpass.eval import evaluate

GRID = ["w4a16-rtn", "w4a16-gptq", "w4a16-awq", "w3a16-rtn", "w3a16-gptq", "w3a16-awq",
        "w8a8-rtn", "w8a8-smoothquant", "w8a8-quarot", "w8a8-duquant",
        "w4a4-rtn", "w4a4-smoothquant", "w4a4-quarot", "w4a4-duquant"]
QUICK = ["w4a16-rtn", "w4a16-gptq", "w4a4-rtn", "w4a4-quarot"]
EVAL = dict(text_bytes=16384, n_mc=8, cloze_items=40, cloze_mc=8, math_items=50)
COLS = (("general", "bits_per_byte", "Shakesp. bpb ↓"), ("general", "cloze_acc", "cloze ↑"),
        ("math", "exact_match", "math EM ↑"), ("code", "bits_per_byte", "Python bpb ↓"))


def run_row(name: str, masking: str) -> dict:
    model = qpass.models.load("tiny-llada")
    t0 = time.perf_counter()
    if name == "fp":
        m, qs = model, 0.0
    else:
        calib = qpass.calibration.CalibrationSet.from_texts(
            calibration_texts(), model.tokenizer, n=32, seq_len=256, masking=masking, seed=0)
        m = qpass.presets.get(name).run(model, calib, verify=False, progress=False)
        qs = time.perf_counter() - t0
    res = evaluate(m, **EVAL)["tasks"]
    row = {"pipeline": name, "masking": masking if name != "fp" else "-", "quantize_s": round(qs, 2)}
    for task, key, _ in COLS:
        row[f"{task}.{key}"] = res[task][key]
        if f"{key}_stderr" in res[task]:
            row[f"{task}.{key}_stderr"] = res[task][f"{key}_stderr"]
    return row


def table(rows: list[dict]) -> Table:
    t = Table(title="tiny-llada: bit-width × method × task (paired seeds, held-out data)")
    for c in ("pipeline", "calib") + tuple(c[2] for c in COLS) + ("quantize s",):
        t.add_column(c, justify="left" if c in ("pipeline", "calib") else "right")
    for r in rows:
        t.add_row(r["pipeline"], r["masking"], *(f"{r[f'{a}.{b}']:.3f}" for a, b, _ in COLS),
                  f"{r['quantize_s']:.1f}")
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--masking", default="diffusion", choices=("diffusion", "none", "both"))
    a = ap.parse_args()
    grid = QUICK if a.quick else GRID
    maskings = ("diffusion", "none") if a.masking == "both" else (a.masking,)
    rows = [run_row("fp", "-")]
    for name in grid:
        for masking in maskings:
            rows.append(run_row(name, masking))
            print(f"done {name} ({masking})", file=sys.stderr, flush=True)
    Console(stderr=True, width=140).print(table(rows))
    print(json.dumps({"rows": rows, "eval": EVAL}))


if __name__ == "__main__":
    main()

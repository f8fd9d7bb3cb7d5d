"""`make demo` / `qpass demo`: quantize the embedded tiny dLLM and compare it with FP.

Loads tiny-llada, quantizes it with the strongest pipelines that exist, generates from a
prompt with each model, and prints one table: per task category FP vs quantized score,
linear-weight bytes and time."""
from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table

from qpass import progress
from qpass.units import fmt_bytes

from .args import positive_int
from .common import add_progress_args

# Strongest first; the demo runs the first available of each group.
WEIGHT_ONLY = ("w4a16-gptq", "w4a16-rtn")
WEIGHT_ACT = ("w4a4-quarot", "w8a8-gptq", "w8a8-rtn")
PROMPTS = ("12+5=17\n40+3=43\n37+48=", "ROMEO:\nBut soft, what light")
EVAL = dict(text_bytes=8192, n_mc=4, cloze_items=24, math_items=24)


def add_demo_command(sub) -> None:
    p = sub.add_parser("demo", help="quantize tiny-llada and compare with FP (make demo)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example:\n  qpass demo --pipelines w4a16-rtn,w4a4-rtn")
    p.add_argument("--pipelines", default=None, help="comma-separated preset names")
    p.add_argument("--calib-n", type=positive_int, default=32)
    p.add_argument("--seq-len", type=positive_int, default=256)
    add_progress_args(p)
    p.set_defaults(func=run_demo)


def _linear_bytes(model) -> int:
    """Bytes of linear weights: a compiled module reports its packed sizes itself."""
    if hasattr(model, "weight_nbytes"):
        return int(model.weight_nbytes()["linear"])
    return sum(m.weight.numel() * m.weight.element_size() for m in model.modules()
               if isinstance(m, torch.nn.Linear))


def _pick(groups) -> list[str]:
    """The first available preset of each group."""
    from qpass import presets
    avail = set(presets.names())
    return [next(n for n in group if n in avail) for group in groups
            if any(n in avail for n in group)]


def _generate(model, tok, prompt: str) -> str:
    from qpass.sampling import generate
    ids = torch.tensor([tok.encode(prompt)])
    out = generate(model, ids, gen_length=32, steps=32, block_length=16)
    return tok.decode(out[0, ids.shape[1]:].tolist())


def run_demo(args) -> int:
    import sys

    from qpass import presets
    from qpass.calibration import build_calibration
    from qpass.eval import evaluate
    from qpass.models import load
    con = Console() if sys.stdout.isatty() else Console(width=110)  # readable when piped
    fp = load("tiny-llada")
    tok = fp.tokenizer
    con.print(f"[bold]tiny-llada[/]: {sum(p.numel() for p in fp.parameters()) / 1e6:.2f}M "
              f"parameters, {fp.config.n_layers} blocks, byte tokenizer")
    names = args.pipelines.split(",") if args.pipelines else _pick((WEIGHT_ONLY, WEIGHT_ACT))
    pipes = {name: presets.get(name) for name in names}      # unknown names fail first
    models = {"FP32": (fp, 0.0)}
    results = {}
    with progress.phase("demo", total=2 * len(names) + 1, unit="steps") as shown:
        for name, pipe in pipes.items():
            shown.describe(f"quantize {name}")
            t0 = time.perf_counter()
            calib = build_calibration(pipe, fp, args.calib_n, args.seq_len)   # embedded corpora
            models[name] = (pipe.run(fp, calib, verify=False, progress=None),
                            time.perf_counter() - t0)
            shown.advance()
        for label, (m, _) in models.items():
            shown.describe(f"evaluate {label} on general / math / code")
            t0 = time.perf_counter()
            results[label] = (evaluate(m, progress=None, **EVAL), time.perf_counter() - t0)
            shown.advance()
    for prompt in PROMPTS:
        con.print(f"\n[bold]prompt[/] {prompt!r}")
        for label, (m, _) in models.items():
            con.print(f"  [cyan]{label:>12}[/] → {_generate(m, tok, prompt)!r}")
    con.print(_table(models, results))
    return 0


ROWS = (("general", "bits_per_byte", "Shakespeare bits/byte ↓"),
        ("general", "cloze_acc", "Shakespeare cloze accuracy ↑"),
        ("math", "exact_match", "arithmetic exact match ↑"),
        ("code", "bits_per_byte", "Python bits/byte ↓"))


def _table(models, results) -> Table:
    t = Table(title="tiny-llada: FP vs quantized (same seeds, held-out data)")
    t.add_column("category")
    t.add_column("metric")
    for label in models:
        t.add_column(label, justify="right")
    for task, key, title in ROWS:
        t.add_row(task, title, *(f"{results[l][0]['tasks'][task][key]:.3f}" for l in models))
    fp_bytes = _linear_bytes(models["FP32"][0])
    t.add_row("size", "linear weight bytes",
              *(f"{fmt_bytes(_linear_bytes(m))} ({_linear_bytes(m) / fp_bytes:.3f}×)"
                for m, _ in models.values()))
    t.add_row("time", "quantize s", *(f"{q:.1f}" for _, q in models.values()))
    t.add_row("time", "evaluate s", *(f"{results[l][1]:.1f}" for l in models))
    return t

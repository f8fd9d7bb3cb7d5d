"""`make demo` / `qpass demo`: quantize the embedded tiny dLLM and compare it with FP.

Loads tiny-llada (5.25M parameters), quantizes it with the strongest weight-only pipeline
(W4A16 GPTQ) and the strongest weight+activation one (W4A4 QuaRot), scores FP and both on
held-out data of the three task categories (general, math, code), generates from a prompt of
each category with each model, and prints one table of quality, linear-weight size and time,
then what the CPU timings can and cannot show.

Time: about 1.2 minutes of CPU (`python bench/demo_time.py` prints wall and CPU seconds). On
the shared 2-core dev box, 2026-12-07: 71 s wall / 71 s CPU when it was quiet (41 s wall / 76 s
CPU with --threads 2), 248 s wall / 87 s CPU under a load average of 6. The demo before this
version: 66 s wall / 125 s CPU quiet, 23 min wall / 10 min CPU busy. Back to back beside a
running test suite (load 3.4): this demo 76 s wall / 72 s CPU, the one before 334 s / 315 s.
Threads (--threads, default 1): on an idle machine two threads halve the wall time for about
the same CPU time, but when other jobs load the machine they spin and wait: the evaluation alone
took 2.3x the wall and 4x the CPU time on two threads than on one at load 6, and the load
of a shared machine changes during a run. One thread is the default that holds there."""
from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table

from qpass.display import progress
from qpass.display.units import fmt_bytes

from .args import positive_int
from .common import add_progress_args

# Strongest first; the demo runs the first available of each group.
WEIGHT_ONLY = ("w4a16-gptq", "w4a16-rtn")
WEIGHT_ACT = ("w4a4-quarot", "w8a8-gptq", "w8a8-rtn")
# (category, prompt, tokens to generate): sampled with the model's generation defaults
PROMPTS = (("general", "ROMEO:\n", 48), ("math", "12+5=17\n40+3=43\n37+48=", 8),
           ("code", "def _strptime(", 32))
# Held-out sample sizes: the same text, masks and items for every model (paired comparison).
EVAL = dict(text_bytes=8192, n_mc=2, cloze_items=24, cloze_mc=4, math_items=24)


def add_demo_command(sub) -> None:
    p = sub.add_parser("demo", help="quantize tiny-llada and compare with FP (make demo)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="example:\n  qpass demo --pipelines w4a16-rtn,w4a4-rtn")
    p.add_argument("--pipelines", default=None, help="comma-separated preset names")
    p.add_argument("--calib-n", type=positive_int, default=32)
    p.add_argument("--seq-len", type=positive_int, default=256)
    p.add_argument("--threads", type=positive_int, default=1,
                   help="torch CPU threads (default 1; 2 or more is faster on an idle machine, "
                        "see above)")
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


def _generate(model, tok, prompt: str, n: int) -> tuple[str, float]:
    """(generated text, tokens/s): one token per step, the model's default block length."""
    from qpass.sampling import generate
    ids = torch.tensor([tok.encode(prompt)])
    t0 = time.perf_counter()
    out = generate(model, ids, gen_length=n, steps=n)
    return tok.decode(out[0, ids.shape[1]:].tolist()), n / (time.perf_counter() - t0)


class _Clock:
    """Wall and CPU seconds of one step (CPU: this process, all threads)."""

    def start(self) -> "_Clock":
        self.w0, self.c0 = time.perf_counter(), time.process_time()
        return self

    def stop(self) -> None:
        self.wall, self.cpu = time.perf_counter() - self.w0, time.process_time() - self.c0

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def __str__(self) -> str:
        return f"{self.wall:.1f} ({self.cpu:.1f})"


def run_demo(args) -> int:
    before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(before)


def _run(args) -> int:
    import sys

    from qpass import presets
    from qpass.calibration import build_calibration
    from qpass.eval import evaluate
    from qpass.models import load
    from qpass.sampling import generation_defaults
    con = Console() if sys.stdout.isatty() else Console(width=110)  # readable when piped
    start = _Clock().start()
    fp = load("tiny-llada")
    tok = fp.tokenizer
    names = args.pipelines.split(",") if args.pipelines else _pick((WEIGHT_ONLY, WEIGHT_ACT))
    pipes = {name: presets.get(name) for name in names}      # unknown names fail first
    con.print(f"[bold]tiny-llada[/]: {sum(p.numel() for p in fp.parameters()) / 1e6:.2f}M "
              f"parameters, {fp.config.n_layers} blocks, byte tokenizer. The demo quantizes "
              f"it with {', '.join(names)} (calibration: {args.calib_n} × {args.seq_len} "
              f"tokens of the embedded corpora), scores FP32 and each on held-out general / "
              f"math / code data, and generates: about 1.2 minutes of CPU time on "
              f"{args.threads} torch thread{'s' if args.threads > 1 else ''} (--threads).")
    models = {"FP32": (fp, None)}
    results = {}
    with progress.phase("demo", total=2 * len(names) + 1, unit="steps") as shown:
        for name, pipe in pipes.items():
            shown.describe(f"quantize {name}")
            with _Clock() as clock:
                calib = build_calibration(pipe, fp, args.calib_n, args.seq_len)   # embedded corpora
                model = pipe.run(fp, calib, verify=False, progress=None)
            models[name] = (model, clock)
            shown.advance()
        for label, (m, _) in models.items():
            shown.describe(f"evaluate {label} on general / math / code")
            with _Clock() as clock:
                res = evaluate(m, progress=None, **EVAL)
            results[label] = (res, clock)
            shown.advance()
    speed = {label: [] for label in models}
    gen = generation_defaults(fp)
    con.print(f"\n[bold]Generations[/] (greedy, one token per step, the model's generation "
              f"defaults {gen or 'none'}: docs/ZOO.md \"Generation defaults\")")
    for category, prompt, n in PROMPTS:
        con.print(f"[bold]{category}[/] prompt {prompt!r}, {n} tokens")
        for label, (m, _) in models.items():
            text, tps = _generate(m, tok, prompt, n)
            speed[label].append(tps)
            con.print(f"  [cyan]{label:>12}[/] → {text!r}")
    con.print(_table(models, results, speed))
    start.stop()
    con.print(_explain(start))
    return 0


def _explain(clock) -> str:
    """What the table's time rows mean on a CPU, and where the GPU kernels come in."""
    return (f"Whole demo: {clock.wall:.0f} s wall, {clock.cpu:.0f} s CPU.\n"
            "Quality and size are what this CPU run shows: compare each quantized column "
            "with FP32 (the same held-out text, masks and items for every column: the "
            "differences are paired, so they are known better than the ± of each value) and "
            "the size row (packed integer codes + per-group scales).\n"
            "Speed is not: on a CPU the quantized models run on qpass's reference backend, "
            "which unpacks the integer codes to float on every call and, for weight+activation "
            "schemes (W4A4, W8A8), also quantizes the activations and emulates the integer "
            "matmul exactly. That costs "
            "time instead of saving it, so the quantized columns are as fast as FP32 or slower "
            "here. Speed comes from the Triton kernels on a CUDA GPU (`qpass backends` lists "
            "them and why one is unavailable; `qpass generate DIR --device cuda` binds them): "
            "on an H100 an LLaDA-8B-shaped denoising step ran 1.12-1.15× the bf16 speed at "
            "W8A8 and 0.4-0.6× at int4, whose gain today is memory (docs/PERFORMANCE.md).")


ROWS = (("general", "bits_per_byte", "Shakespeare bits/byte ↓"),
        ("general", "cloze_acc", "Shakespeare cloze accuracy ↑"),
        ("math", "exact_match", "arithmetic exact match ↑"),
        ("code", "bits_per_byte", "Python bits/byte ↓"))


def _with_err(metrics: dict, key: str) -> str:
    err = metrics.get(key + "_stderr")
    return f"{metrics[key]:.3f}" + (f" ± {err:.3f}" if err is not None else "")


def _table(models, results, speed) -> Table:
    t = Table(title="tiny-llada: FP vs quantized (held-out data, same seeds; ± sampling error)")
    t.add_column("category")
    t.add_column("metric")
    for label in models:
        t.add_column(label, justify="right")
    for task, key, title in ROWS:
        t.add_row(task, title, *(_with_err(results[l][0]["tasks"][task], key) for l in models))
    fp_bytes = _linear_bytes(models["FP32"][0])
    t.add_row("size", "linear weight bytes",
              *(f"{fmt_bytes(_linear_bytes(m))} ({_linear_bytes(m) / fp_bytes:.3f}×)"
                for m, _ in models.values()))
    t.add_row("time", "quantize s wall (CPU)", *("-" if q is None else str(q) for _, q in models.values()))
    t.add_row("time", "evaluate s wall (CPU)", *(str(results[l][1]) for l in models))
    t.add_row("time", "generate tokens/s (this CPU)",
              *(f"{sum(speed[l]) / len(speed[l]):.1f}" for l in models))
    return t

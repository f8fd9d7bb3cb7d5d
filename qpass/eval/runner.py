"""Run registered tasks on a model and render the results as a rich table or JSON."""
from __future__ import annotations

import time
from dataclasses import asdict, fields
from pathlib import Path

import torch

from ..display import progress as progress_lines
from ..errors import QpassError
from .tasks import TaskContext, TaskSettings, get_task

DEFAULT_TASKS = ("general", "math", "code")


@torch.no_grad()
def evaluate(model, tasks=DEFAULT_TASKS, limit: int | None = None, seed: int = 0,
             tokenizer=None, data_dir=None, progress: bool | None = False,
             items: bool = False, **settings) -> dict:
    """{"tasks": {name: {metric: value}}, "seconds": {name: s}, "seed", "limit", "settings"}.

    limit caps the items of every task (cloze questions, math problems, scored text chunks);
    keyword settings override TaskSettings fields (e.g. n_mc=8, text_bytes=65536). progress:
    report the tasks and their loops through qpass.display.progress (True: bars on a terminal; None:
    as the enclosing step or the command line says; False: silent). items: each task adds its
    per-item records under "items" (every scored chunk's bits, every problem's and cloze
    item's answer and correctness), what a paired test between two models needs."""
    if isinstance(tasks, str):
        tasks = [t for t in tasks.split(",") if t]
    known = {f.name for f in fields(TaskSettings)}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise QpassError(f"unknown evaluation settings {unknown}; known: {sorted(known)}")
    if limit is not None and limit < 1:
        raise QpassError(f"limit must be >= 1, got {limit}")
    ctx = TaskContext(tokenizer=tokenizer if tokenizer is not None else getattr(model, "tokenizer", None),
                      data_dir=Path(data_dir) if data_dir is not None else None, seed=seed,
                      limit=limit, progress=progress, settings=TaskSettings(**settings),
                      items=items)
    resolved = [get_task(t) for t in tasks]  # unknown names fail before any compute
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    results, seconds = {}, {}
    try:
        with progress_lines.phase("eval", total=len(resolved), unit="tasks",
                                  enabled=progress) as shown:
            for task in resolved:
                shown.describe(task.name)
                start = time.perf_counter()
                results[task.name] = task.run(model, ctx)
                seconds[task.name] = round(time.perf_counter() - start, 3)
                shown.advance()
    finally:
        if was_training:
            model.train()
    cfg = getattr(model, "config", None)
    return {"model": getattr(cfg, "name", type(model).__name__), "tasks": results,
            "seconds": seconds, "seed": seed, "limit": limit, "settings": asdict(ctx.settings)}


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def results_table(results: dict, title: str | None = None):
    """A rich Table: one row per task metric (stderr shown next to its value)."""
    from rich.table import Table
    table = Table(title=title or f"qpass eval: {results.get('model', '')}")
    for col, justify in (("task", "left"), ("metric", "left"), ("value", "right"),
                         ("± stderr", "right"), ("seconds", "right")):
        table.add_column(col, justify=justify)
    for name, metrics in results["tasks"].items():
        first = True
        for key, value in metrics.items():
            if key.endswith("_stderr") or key in ("example", "items"):
                continue
            err = metrics.get(key + "_stderr", "")
            table.add_row(name if first else "", key, _fmt(value), _fmt(err),
                          _fmt(results["seconds"].get(name, "")) if first else "")
            first = False
    return table


def print_results(results: dict, console=None) -> None:
    from rich.console import Console
    (console or Console()).print(results_table(results))

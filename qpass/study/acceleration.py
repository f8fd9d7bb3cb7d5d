"""The study's acceleration dimension: every quantized pipeline decoded the way deployments run
it — Fast-dLLM's K/V cache (none / prefix / dual) × confidence threshold × block length — on the
math task, with accuracy, tokens per forward, tokens per CPU second and AUP (aup.py).

Config (all optional; the table's presence turns the dimension on):
    [acceleration]
    pipelines = ["fp", "w4a16-gptq", ...]   (default: every pipeline of the grid)
    caches = ["none", "prefix", "dual"]
    thresholds = ["none", 0.9]              ("none": the step schedule, one token per step)
    block_lengths = [4, 8]
    gen_length = 8                          steps = 8 (the schedule's; unused with a threshold)
    items = 50                              (addition problems, the math task's)

Each (model, pipeline, seed, cache, threshold, block length) is one cached result (content
hash as the main grid: the quantized checkpoint is the grid's own, served from its cache),
holding per-problem correctness so that every setting is tested against the same pipeline's
uncached, schedule-decoded run (McNemar's exact test), not compared by size."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable

from ..errors import QpassError
from ..eval.runner import evaluate
from ..folders import CAPS, read_json
from ..sampling import CACHES
from .runner import (_RESULT_SCHEMA, StudyConfig, _digest, _quantized, _write_atomic,
                     bits_of, cell_identity, format_of, method_of,
                     model_identity, prepared)

NONE = "none"


@dataclass
class AccelSettings:
    pipelines: list[str]
    caches: list[str]
    thresholds: list[float | None]
    block_lengths: list[int]
    gen_length: int = 8
    steps: int = 8
    items: int = 50

    def combos(self):
        return [(c, t, b) for c in self.caches for t in self.thresholds for b in self.block_lengths]


def read_settings(cfg: StudyConfig) -> AccelSettings | None:
    """The [acceleration] table checked (one QpassError naming the field), or None."""
    a = cfg.acceleration
    if a is None:
        return None
    known = {"pipelines", "caches", "thresholds", "block_lengths", "gen_length", "steps", "items"}
    if set(a) - known:
        raise QpassError(f"[acceleration]: unknown keys {sorted(set(a) - known)}; known: "
                         f"{sorted(known)}")
    grid = list(cfg.pipelines) + list(cfg.optional)
    s = AccelSettings(pipelines=list(a.get("pipelines", grid)),
                      caches=list(a.get("caches", list(CACHES))),
                      thresholds=[None if t == NONE else t for t in a.get("thresholds", [NONE, 0.9])],
                      block_lengths=list(a.get("block_lengths", [4, 8])),
                      gen_length=a.get("gen_length", 8), steps=a.get("steps", 8),
                      items=a.get("items", 50))
    for p in s.pipelines:
        if p not in grid:
            raise QpassError(f"[acceleration] pipeline {p!r} is not in the grid's pipelines or "
                             f"optional list; add it there first")
    for c in s.caches:
        if c not in CACHES:
            raise QpassError(f"[acceleration] cache {c!r}: one of {CACHES}")
    for t in s.thresholds:
        if t is not None and not (isinstance(t, (int, float)) and 0 < t <= 1):
            raise QpassError(f"[acceleration] threshold {t!r}: a number in (0, 1] or \"none\"")
    for name in ("gen_length", "steps", "items"):
        if not isinstance(getattr(s, name), int) or getattr(s, name) < 1:
            raise QpassError(f"[acceleration] {name} must be a positive integer")
    for b in s.block_lengths:
        if not isinstance(b, int) or b < 1 or s.gen_length % b or s.steps % (s.gen_length // b):
            raise QpassError(f"[acceleration] block length {b!r} must divide gen_length "
                             f"{s.gen_length} into blocks that share steps {s.steps} evenly")
    return s


def run_acceleration(cfg: StudyConfig, resolve_pipeline: Callable,
                     log: Callable[[str], None] = print) -> list[dict]:
    """One row per (model, pipeline, seed, cache, threshold, block length), from the cache
    where there (`cached`), with per-problem records under "items"."""
    s = read_settings(cfg)
    if s is None:
        return []
    (pipes, version), rows = prepared(cfg, resolve_pipeline), []
    shots = {k: v for k, v in cfg.eval.items() if k == "math_shots"}
    for m in cfg.models:
        ident = model_identity(m["path"])
        for pname in s.pipelines:
            if pname not in pipes:
                continue                  # an optional pipeline this checkout lacks
            pipe = pipes[pname]
            for seed in cfg.seeds:
                cell = cell_identity(cfg, ident, pipe, seed, version)
                rows += _run_pipeline(cfg, s, m, pname, pipe, seed, cell, shots, log)
    return rows


def _run_pipeline(cfg, s, m, pname, pipe, seed, cell, shots, log) -> list[dict]:
    paths = {}
    for c, t, b in s.combos():
        key = _digest({**cell, "task": "math", "accel": [c, t, b, s.gen_length, s.steps, s.items],
                       "eval": shots})
        paths[(c, t, b)] = cfg.out / "cache" / "results" / f"{key}.json"
    model = None
    if not all(p.is_file() for p in paths.values()):
        model, _ = _quantized(cfg, m, pname, pipe, seed, cell, log)
    fmt, (w, a) = format_of(pipe), bits_of(pname, pipe)
    rows = []
    for (c, t, b), path in paths.items():
        if path.is_file():
            entry = read_json(path, path.parent, CAPS["data"], _RESULT_SCHEMA,
                              "cached study result")
            cached = True
        else:
            t0 = time.perf_counter()
            res = evaluate(model, tasks=["math"], limit=s.items, seed=seed, items=True,
                           math_items=s.items, gen_length=s.gen_length, steps=s.steps,
                           block_length=b, cache=c, threshold=t, **shots)["tasks"]["math"]
            entry = {"metrics": {k: v for k, v in res.items() if k not in ("example", "items")},
                     "items": res.get("items"), "quantize_seconds": 0.0,
                     "eval_seconds": round(time.perf_counter() - t0, 3)}
            _write_atomic(path, json.dumps(entry, indent=1) + "\n")
            log(f"computed {m['name']} {pname} seed={seed} cache={c} threshold={t} block={b}")
            cached = False
        rows.append({"model": m["name"], "pipeline": pname, "format": fmt,
                     "method": method_of(pname, fmt), "w_bits": w, "a_bits": a, "seed": seed,
                     "cache": c, "threshold": t, "block_length": b, "cached": cached,
                     **entry["metrics"], "items": entry.get("items")})
    return rows


__all__ = ["AccelSettings", "read_settings", "run_acceleration"]

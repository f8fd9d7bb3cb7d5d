"""Trajectory error as grid columns: for every quantized pipeline of the study, along the FP
sampler's trajectory on the math task's prompts (qpass.eval.trajectory), the mean per-step
KL(FP‖Q) on masked positions and the wrong-commit rate — of the tokens the quantized model
would commit at a step of FP's trajectory, the share FP does not commit there (place and token).

Config: [trajectory] prompts = 16, gen_length = 8, steps = 8, block_length = 4 (the table's
presence turns the columns on). Each (model, pipeline, seed) is one cached result."""
from __future__ import annotations

import json
from typing import Callable

from ..errors import QpassError
from ..eval.tasks import TaskContext, TaskSettings, math_problems
from ..eval.trajectory_error import trajectory
from ..folders import CAPS, Mapping, read_json
from ..runtime.loading import load_any
from .runner import (StudyConfig, _digest, _quantized, _write_atomic, cell_identity,
                     model_identity, prepared)

DEFAULTS = {"prompts": 16, "gen_length": 8, "steps": 8, "block_length": 4}
_SCHEMA = {"summary": Mapping(object), "kl_per_step": list}


def read_settings(cfg: StudyConfig) -> dict | None:
    t = cfg.trajectory
    if t is None:
        return None
    if set(t) - set(DEFAULTS):
        raise QpassError(f"[trajectory]: unknown keys {sorted(set(t) - set(DEFAULTS))}; known: "
                         f"{sorted(DEFAULTS)}")
    s = {**DEFAULTS, **t}
    if not all(isinstance(v, int) and v > 0 for v in s.values()):
        raise QpassError("[trajectory]: prompts, gen_length, steps and block_length are "
                         "positive integers")
    return s


def run_trajectories(cfg: StudyConfig, resolve_pipeline: Callable,
                     log: Callable[[str], None] = print) -> list[dict]:
    """One row per (model, quantized pipeline, seed): kl_mean, wrong_commit_rate, the
    per-step KL, and the other trajectory summaries."""
    s = read_settings(cfg)
    if s is None:
        return []
    (pipes, version), rows = prepared(cfg, resolve_pipeline), []
    for m in cfg.models:
        ident, fp = model_identity(m["path"]), None
        for pname, pipe in pipes.items():
            if pipe is None:
                continue
            for seed in cfg.seeds:
                cell = cell_identity(cfg, ident, pipe, seed, version)
                path = cfg.out / "cache" / "results" / f"{_digest({**cell, 'trajectory': s})}.json"
                cached = path.is_file()
                if cached:
                    entry = read_json(path, path.parent, CAPS["data"], _SCHEMA,
                                      "cached trajectory result")
                else:
                    fp = fp if fp is not None else load_any(m["path"])
                    q, _ = _quantized(cfg, m, pname, pipe, seed, cell, log)
                    entry = _measure(fp, q, s, seed)
                    _write_atomic(path, json.dumps(entry, indent=1) + "\n")
                    log(f"computed {m['name']} {pname} seed={seed} trajectory")
                rows.append({"model": m["name"], "pipeline": pname, "seed": seed,
                             "cached": cached, **entry["summary"],
                             "kl_per_step": entry["kl_per_step"]})
    return rows


def _measure(fp, q, s: dict, seed: int) -> dict:
    ctx = TaskContext(tokenizer=fp.tokenizer, seed=seed, limit=s["prompts"],
                      settings=TaskSettings(math_items=s["prompts"]))
    prompts = [p for p, _ in math_problems(ctx)]
    rep = trajectory(fp, {"q": q}, prompts, gen_length=s["gen_length"], steps=s["steps"],
                     block_length=s["block_length"], seed=seed, free_running=False,
                     progress=None).to_dict()["models"]["q"]
    return {"summary": rep["summary"], "kl_per_step": [st["kl"] for st in rep["steps"]]}


__all__ = ["read_settings", "run_trajectories"]

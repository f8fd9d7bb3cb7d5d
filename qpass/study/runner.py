"""`qpass study`: models × pipelines × tasks × seeds from one config, cached by content hash.

A cell (model, pipeline, seed) is quantized once; its checkpoint is saved under
OUT/cache/models/<key>/ and each (cell, task) result under OUT/cache/results/<key>.json, both
written atomically (temporary name, then rename) the moment they are computed. A key hashes
everything the result depends on: the model (its files' names, sizes and first MiB, its
config.json in full), the pipeline (every pass's versioned config and the scheme), the
calibration settings, the evaluation settings, the seed and the code version (hash of qpass's
own source files). A rerun therefore computes only what is new, and an interrupted study
resumes where it stopped. Pipelines are resolved by a callable that the CLI passes in (the
presets live above this layer); calibration is built by qpass.calibration.build_calibration.

Config (TOML; YAML too when PyYAML is installed):
    [study]  name, out, seeds = [0]
    [[models]]  name, path              (zoo name, HF checkpoint dir or compiled dir)
    [grid]   pipelines = ["fp", "w4a16-rtn", ...]   ("fp" = the unquantized model)
             optional = ["w4a4-learned", ...]       (run when the resolver knows them,
                                                     skipped with a note otherwise)
             tasks = ["general", "math", "code"]    (qpass task names)
    [eval]  limit and TaskSettings fields     [calibration]  n, seq_len, path (texts for
                                              models that are not embedded zoo models)
    [acceleration]  cache × threshold × block length per pipeline (qpass.study.acceleration)
    [trajectory]    per-step KL and wrong-commit rate columns (qpass.study.trajectory_cells)"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .. import folders
from ..display import progress as progress_lines
from ..calibration import build_calibration
from ..errors import PipelineError, QpassError
from ..folders import CAPS, Mapping, Optional, read_json
from ..folders.owned import own_dir, write_output
from ..runtime.loading import load_any
from ..eval.runner import evaluate
from ..eval.tasks import TaskSettings, get_task

FP = "fp"
MARKER = "qpass-study.json"   # written in OUT; an OUT without it that is not empty is refused
# "items" (per-item records) may be absent from results cached before they were kept
_RESULT_SCHEMA = {"metrics": Mapping(object), "eval_seconds": (int, float),
                  "quantize_seconds": (int, float), "items": Optional(object)}
_CODE_DIRS = ("qpass", "passes", "backends")


@dataclass
class StudyConfig:
    name: str
    out: Path
    models: list[dict]
    pipelines: list[str]
    tasks: list[str]
    optional: list[str] = field(default_factory=list)
    acceleration: dict | None = None     # [acceleration] (qpass.study.acceleration reads it)
    trajectory: dict | None = None       # [trajectory] (qpass.study.trajectory_cells)
    code: str | None = None              # the code version, hashed once per run (study_code)
    seeds: list[int] = field(default_factory=lambda: [0])
    eval: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=lambda: {"n": 32, "seq_len": 256})


def read_config(path, out: str | None = None) -> StudyConfig:
    """Parse and validate a study file (every mistake is one QpassError naming the field)."""
    p = Path(path)
    if not p.is_file():
        raise QpassError(f"study config {p} does not exist")
    text = folders.read_text(p, p.parent, folders.CAPS["config"], "study config")
    if p.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise QpassError("YAML study configs need PyYAML (pip install pyyaml); or use TOML") from None
        data = yaml.safe_load(text) or {}
    elif p.suffix == ".toml":
        import tomllib
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise QpassError(f"{p}: {e}") from None
    else:
        raise QpassError(f"{p}: a study config is a .toml or .yaml file")
    study = data.get("study", {})
    data = {**data, **data.get("grid", {})}
    models = data.get("models")
    if not isinstance(models, list) or not models or not all(
            isinstance(m, dict) and "path" in m for m in models):
        raise QpassError(f"{p}: give at least one [[models]] table with a 'path'")
    for key in ("pipelines", "tasks"):
        if not isinstance(data.get(key), list) or not data[key]:
            raise QpassError(f"{p}: '{key}' must be a non-empty list")
    for t in data["tasks"]:
        get_task(t)  # unknown task names fail before any compute
    known = {f for f in TaskSettings.__dataclass_fields__} | {"limit"}
    unknown = sorted(set(data.get("eval", {})) - known)
    if unknown:
        raise QpassError(f"{p}: unknown [eval] settings {unknown}; known: {sorted(known)}")
    seeds = study.get("seeds", [0])
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
        raise QpassError(f"{p}: study.seeds must be a list of integers")
    return StudyConfig(name=str(study.get("name", p.stem)),
                       out=Path(out) if out else _config_out(p, study.get("out", f"study-{p.stem}")),
                       models=[{"name": str(m.get("name", m["path"])), "path": str(m["path"])}
                               for m in models],
                       pipelines=[str(x) for x in data["pipelines"]],
                       tasks=[str(x) for x in data["tasks"]], seeds=seeds,
                       optional=_optional(p, data.get("optional", [])),
                       acceleration=_table(p, data, "acceleration"),
                       trajectory=_table(p, data, "trajectory"),
                       eval=dict(data.get("eval", {})),
                       calibration={"n": 32, "seq_len": 256, **data.get("calibration", {})})


def _table(p: Path, data: dict, key: str) -> dict | None:
    if key in data and not isinstance(data[key], dict):
        raise QpassError(f"{p}: [{key}] must be a table")
    return data.get(key)


def _optional(p: Path, names) -> list[str]:
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise QpassError(f"{p}: grid.optional must be a list of pipeline names")
    return names


def _config_out(p: Path, out) -> Path:
    """study.out from the config file: a folder under the current directory. A path read from
    a file never chooses where qpass writes anywhere else (DESIGN §6): that takes --out."""
    rel = Path(out) if isinstance(out, str) and out else None
    if rel is None or rel.is_absolute() or ".." in rel.parts or str(rel).startswith("~"):
        raise QpassError(f"{p}: study.out {str(out)[:80]!r} must be a relative folder name under "
                         f"the current directory (no '..', not absolute); give another place "
                         f"with --out")
    return rel


# ---- content hashes ---------------------------------------------------------------------------

def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def code_version() -> str:
    """Hash of qpass's own source files: a code change invalidates every cached result."""
    root = Path(__file__).resolve().parents[2]
    h = hashlib.sha256()
    for d in _CODE_DIRS:
        for f in sorted((root / d).rglob("*.py")):
            h.update(str(f.relative_to(root)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:20]


def model_identity(path: str) -> dict:
    """What a model's results depend on: for a directory its files (names, sizes, first MiB,
    config/manifest in full); for a zoo name the zoo's files likewise."""
    from ..models.loading import ZOO_DIR
    d = Path(path) if Path(path).is_dir() else ZOO_DIR / path
    if not d.is_dir():
        return {"name": path}
    files = {}
    for f in sorted(d.rglob("*")):
        if f.is_dir() or "eval" in f.relative_to(d).parts:
            continue
        fd = folders.open_regular(f, d, "model file")     # no link out, no FIFO or device
        with os.fdopen(fd, "rb") as fh:
            head = fh.read(1 << 20)
            files[str(f.relative_to(d))] = [os.fstat(fd).st_size, hashlib.sha256(head).hexdigest()]
    return {"name": path, "files": files}


def pipeline_identity(pipe) -> dict:
    if pipe is None:
        return {"pipeline": FP}
    scheme = pipe.scheme()
    return {"passes": [[p.name, p.config()] for p in pipe.passes],
            "scheme": scheme.to_dict() if hasattr(scheme, "to_dict") else repr(scheme)}


# ---- running ------------------------------------------------------------------------------------

def check_out_dir(out: Path) -> None:
    """OUT is new, empty, or a study's own folder (never write into someone else's)."""
    if out.exists() and not out.is_dir():
        raise QpassError(f"study output {out} is a file; give a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise QpassError(f"study output {out} exists and was not written by qpass study; "
                         "choose a new or empty directory")


def _write_atomic(path: Path, text: str) -> None:
    write_output(path, text, "study file")    # a new file renamed into place, never via a link


def bits_of(pipeline_name: str, pipe) -> tuple[int, int]:
    """(weight bits, activation bits) of a pipeline; 16 for what stays in high precision."""
    if pipe is None:
        return 16, 16
    s = pipe.scheme()
    w = getattr(getattr(s, "weight", None), "bits", 16)
    a = getattr(getattr(s, "act", None), "bits", 16)
    return int(w), int(a)


def resolve_pipelines(cfg: StudyConfig, resolve_pipeline: Callable, log) -> dict:
    """{name: Pipeline or None (FP)}: the grid's pipelines, then the optional ones the
    resolver knows (the others skipped with a note)."""
    pipes = {name: (None if name == FP else resolve_pipeline(name)) for name in cfg.pipelines}
    for name in cfg.optional:
        if name in pipes:
            continue
        try:
            pipes[name] = resolve_pipeline(name)
        except PipelineError as e:
            log(f"optional pipeline {name} skipped: {str(e)[:90]}")
    return pipes


def study_code(cfg: StudyConfig) -> str:
    """The code version of this run, hashed once: every part of one `qpass study` (grid,
    acceleration, trajectory) keys its cache with the same version."""
    if cfg.code is None:
        cfg.code = code_version()
    return cfg.code


def cell_identity(cfg: StudyConfig, ident: dict, pipe, seed: int, version: str) -> dict:
    """What a cell's quantized model depends on (its checkpoint's cache key)."""
    return {"model": ident, "pipeline": pipeline_identity(pipe), "seed": seed,
            "calibration": None if pipe is None else cfg.calibration, "code": version}


def prepare_out(cfg: StudyConfig) -> None:
    """OUT checked and its cache folders made (own directories, never through a link)."""
    check_out_dir(cfg.out)
    for sub in ("cache", "cache/models", "cache/results"):
        own_dir(cfg.out / sub, "study cache folder", private=False)
    _write_atomic(cfg.out / MARKER, json.dumps({"study": cfg.name}) + "\n")


def prepared(cfg: StudyConfig, resolve_pipeline: Callable) -> tuple[dict, str]:
    """For a part of the study run after the grid (acceleration, trajectory): OUT ready, the
    pipelines resolved (quietly: the grid has said what it skipped), the code version."""
    prepare_out(cfg)
    return resolve_pipelines(cfg, resolve_pipeline, lambda msg: None), study_code(cfg)


def run_study(cfg: StudyConfig, resolve_pipeline: Callable,
              log: Callable[[str], None] = print) -> list[dict]:
    """Run (or serve from the cache) every cell; returns one row per (model, pipeline, seed,
    task) with its metrics, `cached` telling whether it was served from the cache."""
    # the study's own folders: made here, or real directories of this user (never a symlink
    # to somewhere else that the cache would then be written into)
    prepare_out(cfg)
    pipes = resolve_pipelines(cfg, resolve_pipeline, log)
    version, cells = study_code(cfg), []
    eval_settings = dict(cfg.eval)
    limit = eval_settings.pop("limit", None)
    for m in cfg.models:
        ident = model_identity(m["path"])
        for pname, pipe in pipes.items():
            for seed in cfg.seeds:
                cell = cell_identity(cfg, ident, pipe, seed, version)
                keys = {t: _digest({**cell, "task": t, "eval": eval_settings, "limit": limit})
                        for t in cfg.tasks}
                cached = {t: cfg.out / "cache" / "results" / f"{k}.json" for t, k in keys.items()}
                cells.append((m, pname, pipe, seed, cell, cached))
    total = len(cells) * len(cfg.tasks)
    hits = sum(p.is_file() for *_, cached in cells for p in cached.values())
    log(f"{hits} of {total} results from the cache ({cfg.out / 'cache'}); {total - hits} to "
        f"compute")
    rows = []
    with progress_lines.phase("study", total=total, unit="results", done=hits) as shown:
        for m, pname, pipe, seed, cell, cached in cells:
            rows += _run_cell(cfg, m, pname, pipe, seed, cell, cached, eval_settings, limit, log,
                              shown)
    return rows


def _run_cell(cfg, m, pname, pipe, seed, cell, cached, eval_settings, limit, log, shown):
    todo = [t for t in cfg.tasks if not cached[t].is_file()]
    model = None
    if todo:
        shown.describe(f"{m['name']} {pname} seed={seed}: model")
        model, qseconds = _quantized(cfg, m, pname, pipe, seed, cell, log)
    rows = []
    for t in cfg.tasks:
        if t in todo:
            shown.describe(f"{m['name']} {pname} seed={seed} {t}")
            t0 = time.perf_counter()
            res = evaluate(model, tasks=[t], limit=limit, seed=seed, progress=None,
                           items=True, **eval_settings)
            metrics = res["tasks"][t]
            entry = {"metrics": {k: v for k, v in metrics.items() if k not in ("example", "items")},
                     "items": metrics.get("items"),
                     "eval_seconds": round(time.perf_counter() - t0, 3),
                     "quantize_seconds": qseconds}
            _write_atomic(cached[t], json.dumps(entry, indent=1) + "\n")
            log(f"computed {m['name']} {pname} seed={seed} {t}")
            shown.advance()
            was_cached = False
        else:
            entry, was_cached = read_json(cached[t], cached[t].parent, CAPS["data"],
                                          _RESULT_SCHEMA, "cached study result"), True
        w, a = bits_of(pname, pipe)
        fmt = format_of(pipe)
        rows.append({"model": m["name"], "pipeline": pname, "method": method_of(pname, fmt),
                     "format": fmt, "w_bits": w, "a_bits": a, "seed": seed, "task": t,
                     "category": get_task(t).category, "cached": was_cached,
                     **entry["metrics"], "quantize_seconds": entry["quantize_seconds"],
                     "eval_seconds": entry["eval_seconds"], "items": entry.get("items")})
    return rows


def format_of(pipe) -> str:
    """The weights' number format: "int", a floating-point format ("fp8", "nvfp4", "mxfp4",
    ...), or "fp" for the unquantized model."""
    if pipe is None:
        return FP
    return str(getattr(getattr(pipe.scheme(), "weight", None), "format", "int"))


def method_of(pipeline_name: str, fmt: str = "int") -> str:
    """The method part of a preset name: "w4a16-gptq" → "gptq"; a float preset's format token
    is dropped ("w4a4-nvfp4-gptq" → "gptq", "w8a8-fp8" → "rtn": no method means RTN)."""
    if pipeline_name == FP:
        return FP
    parts = pipeline_name.split("-")[1:]
    if parts and fmt not in ("int", FP) and parts[0] == fmt:
        parts = parts[1:]
    return "-".join(parts) or "rtn"


def _quantized(cfg, m, pname, pipe, seed, cell, log):
    """The cell's model: FP as loaded, or the quantized checkpoint (from the cache if there)."""
    from ..runtime.compiled import load_compiled
    model = load_any(m["path"])
    if pipe is None:
        return model, 0.0
    ckpt = cfg.out / "cache" / "models" / _digest(cell)
    if (ckpt / "manifest.json").is_file():
        return load_compiled(ckpt), 0.0
    t0 = time.perf_counter()
    # a real checkpoint calibrates on the user's data ([calibration] path = ...), never
    # silently on the embedded corpora (build_calibration says so when it is missing)
    calib = build_calibration(pipe, model, seed=seed, model_name=m["path"], **cfg.calibration)
    out = pipe.run(model, calib, verify=False, progress=None, seed=seed)
    seconds = round(time.perf_counter() - t0, 3)
    out.save(ckpt)
    log(f"quantized {m['name']} {pname} seed={seed} in {seconds:.1f}s")
    return out, seconds

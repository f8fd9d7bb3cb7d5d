"""What lets a run from a checkpoint directory (disk_store.py) resume: the run key, the per-stage records in
progress.json with their hashes, a full disk turned into a resumable error, and the graph
state (modules, buffers) of the stages an interrupted run completed."""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import stat
from dataclasses import fields
from pathlib import Path

import torch

from qpass import folders
from qpass.errors import CheckpointError, UnsafeFileError
from qpass.folders import Mapping
from qpass.folders.owned import clear_name
from qpass.pipeline.stage_results import StageRecord

_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                       "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
                       "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
PROGRESS = "progress.json"


def written(path: Path, write) -> None:
    """Run write(); a full disk becomes one error that says the run can resume."""
    try:
        write()
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise CheckpointError(f"the disk is full while writing {path.name}: free space on "
                                  f"{path.parent} and rerun the same command; it resumes after "
                                  f"the last complete stage") from None
        raise


def run_key(pipeline, checkpoint_dir: Path, calib, device, dtype) -> str:
    """What identifies a run for resuming: pass configs, input files (names, sizes, mtimes),
    the calibration tokens, device and dtype."""
    h = hashlib.sha256()
    h.update(json.dumps([[p.name, p.config()] for p in pipeline.passes], sort_keys=True,
                        default=str).encode())
    for f in sorted(checkpoint_dir.iterdir()):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    if calib is not None:       # a CalibrationSet, or model-input batches given as they are
        batches = calib.batches(8) if hasattr(calib, "batches") else calib
        for batch in batches:
            for t in (batch if isinstance(batch, (tuple, list)) else (batch,)):
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(f"{device}:{dtype}".encode())
    return h.hexdigest()


# every field of progress.json typed (qpass.folders.read_json); file names are checked
# against the one name each stage writes (_stage_record) before anything is opened
_NODE = {"op": str, "name": str, "target": object, "args": object, "kwargs": {"dict": list}}
_STAGE = {"index": int, "shard": str, "sha256": str, "cache": str, "cache_sha256": str,
          "results": Mapping(dict), "facts": Mapping(list), "modules": Mapping(dict),
          "kinds": Mapping(dict), "nodes": [_NODE]}
PROGRESS_SCHEMA = {"run": str, "shared": Mapping(object), "stages": [_STAGE]}
_HEX = re.compile(r"[0-9a-f]{64}\Z")


def shard_name(index: int) -> str:
    return f"stage-{index:05d}.safetensors"


def cache_name(index: int) -> str:
    return f"cache-{index:05d}.pt"


def own_file(work: Path, name: str, what: str) -> Path:
    """`work`/`name` after checking that it is a regular file in the work folder itself (by
    lstat: not a link, not even to a file inside the folder); UnsafeFileError otherwise,
    FileNotFoundError when absent."""
    path = work / folders.check_name(name, what)
    if not stat.S_ISREG(os.lstat(path).st_mode):
        raise UnsafeFileError(f"{what} {path} is not a regular file")
    return folders.regular_file(path, work, what)


def _stage_record(r: dict, i: int) -> StageRecord:
    if r["index"] != i or r["shard"] != shard_name(i) or r["cache"] != cache_name(i):
        raise UnsafeFileError(f"stage record {i} names {r['shard'][:80]!r} and "
                              f"{r['cache'][:80]!r}; a run writes {shard_name(i)} and "
                              f"{cache_name(i)} there")
    if not (_HEX.match(r["sha256"]) and _HEX.match(r["cache_sha256"])):
        raise UnsafeFileError(f"stage record {i} holds a malformed sha256")
    return StageRecord(**{f.name: r[f.name] for f in fields(StageRecord)})


def load_progress(work: Path, key: str) -> tuple[list[StageRecord], dict]:
    """(the completed stages of an interrupted run with this key, hash-checked; the passes'
    start states it recorded) — ([], {}) when there is nothing to resume.

    progress.json is read with qpass.folders.read_json (regular file in the work folder,
    size-capped, every field typed) and its file names must be the ones each stage writes,
    regular files in the work folder. A progress file that breaks any of this is not one a
    qpass run wrote (or was cut short by a crash): it is ignored with one warning line and
    the run starts over, which rewrites the folder's files (never through a link) and
    computes the same result; the names in it are never opened."""
    path = work / PROGRESS
    if not os.path.lexists(path):
        return [], {}
    try:
        data = folders.read_json(path, work, folders.CAPS["config"], PROGRESS_SCHEMA,
                                 "progress file")
        if data["run"] != key:
            return [], {}                 # another pipeline or input: start over
        records = []
        for i, r in enumerate(data["stages"]):
            rec = _stage_record(r, i)
            try:
                shard = own_file(work, rec.shard, "stage shard")
            except FileNotFoundError:
                break
            if folders.sha256_file(shard, work, "stage shard") != rec.sha256:
                break                     # recompute from the first stage that fails
            records.append(rec)
        # only the last stage's boundary cache is read again (earlier ones are emptied once
        # used); without it the next stage has no inputs, so the run starts over
        if records:
            try:
                cache = own_file(work, records[-1].cache, "stage cache")
            except FileNotFoundError:
                return [], {}
            if folders.sha256_file(cache, work, "stage cache") != records[-1].cache_sha256:
                return [], {}
    except UnsafeFileError as e:
        ignored(path, str(e))
        return [], {}
    return records, dict(data["shared"])


def ignored(path: Path, why: str) -> None:
    """The one warning line of a resume state that is not used."""
    logging.getLogger("qpass").warning("qpass: ignoring %s (%s); the run starts over", path,
                                       why.splitlines()[0][:300])


def save_progress(work: Path, key: str, shared: dict, records: list[StageRecord]) -> None:
    tmp = clear_name(work / (PROGRESS + ".tmp"))
    tmp.write_text(json.dumps({"run": key, "shared": shared,
                               "stages": [r.__dict__ for r in records]}, indent=1))
    os.replace(tmp, work / PROGRESS)      # replaces whatever is there, never through a link


def restore_modules(gm, record: StageRecord) -> None:
    """A resumed stage's modules as its passes left them (a LoweredLinear where the
    capture has a Linear, Lower's fused norm+quantize modules), on meta: the graph's
    later passes and the final graph see the same modules as in an uninterrupted run."""
    from qpass.runtime.graph_io import install_module, module_entry, module_from_entry
    for target, entry in record.modules.items():
        try:
            current = module_entry(gm.get_submodule(target), target)["class"]
        except (AttributeError, CheckpointError):
            current = None
        if current != entry.get("class"):
            install_module(gm, target, module_from_entry(target, entry))


def restore_attrs(gm, work: Path, stage, record: StageRecord) -> None:
    """A resumed stage's graph buffers, on meta with the shapes its shard holds (the
    tensors themselves are in the shard already)."""
    from safetensors import safe_open

    from qpass.pipeline.stage_nodes import attr_targets
    with safe_open(str(work / record.shard), framework="pt") as fh:
        for target in attr_targets(gm.graph, stage.nodes):
            owner, _, name = target.rpartition(".")
            mod = gm.get_submodule(owner)
            if name not in mod._buffers:
                t = fh.get_slice(target)
                mod.register_buffer(name, torch.empty(t.get_shape(), device="meta",
                                                      dtype=_SAFETENSORS_DTYPES[t.get_dtype()]))

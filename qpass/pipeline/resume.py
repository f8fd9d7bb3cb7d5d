"""What lets a run from a checkpoint directory (disk_store.py) resume: the run key, the per-stage records in
progress.json with their hashes, a full disk turned into a resumable error, and the graph
state (modules, buffers) of the stages an interrupted run completed."""
from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path

import torch

from qpass.errors import CheckpointError
from qpass.pipeline.stage_results import StageRecord
from qpass.runtime.checkpoint import sha256 as sha256_file

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
    if calib is not None:
        for batch in calib.batches(8):
            for t in batch:
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(f"{device}:{dtype}".encode())
    return h.hexdigest()


def load_progress(work: Path, key: str) -> tuple[list[StageRecord], dict]:
    """(the completed stages of an interrupted run with this key, hash-checked; the passes'
    start states it recorded) — ([], {}) when there is nothing to resume."""
    path = work / PROGRESS
    if not path.exists():
        return [], {}
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return [], {}
    if data.get("run") != key:
        return [], {}
    shared = dict(data.get("shared", {}))
    records = []
    for r in data.get("stages", []):
        rec = StageRecord(**r)
        shard = work / rec.shard
        if not (shard.exists() and sha256_file(shard) == rec.sha256):
            break                         # recompute from the first stage that fails
        records.append(rec)
    # only the last stage's boundary cache is read again (earlier ones are emptied once
    # used); without it the next stage has no inputs, so the run starts over
    if records:
        cache = work / records[-1].cache
        if not (cache.exists() and sha256_file(cache) == records[-1].cache_sha256):
            return [], {}
    return records, shared


def save_progress(work: Path, key: str, shared: dict, records: list[StageRecord]) -> None:
    tmp = work / (PROGRESS + ".tmp")
    tmp.write_text(json.dumps({"run": key, "shared": shared,
                               "stages": [r.__dict__ for r in records]}, indent=1))
    os.replace(tmp, work / PROGRESS)


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

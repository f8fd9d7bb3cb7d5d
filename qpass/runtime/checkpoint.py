"""Compiled checkpoints on disk: atomic save, verified load, never pickle (DESIGN §6).

Layout of DIR (docs/FORMATS.md "Compiled checkpoint"):
  model.safetensors   every parameter and buffer of the GraphModule (packed int32 codes,
                      float32 scales, …); tied tensors are stored once (manifest `tensors`)
  manifest.json       format/version, model config, pipeline, specs, versions, report, the
                      graph as JSON, module classes + constructor kwargs, tensor kinds, and
                      `files`: sha256 of every other file
  <tokenizer files>   whatever the tokenizer writes (qpass byte tokenizer: qpass_tokenizer.json)
  SHA256SUMS          sha256 of manifest.json ("<hex>  manifest.json")

save() writes everything into a temporary sibling directory `.DIR.qpass-tmp-PID-HEX`, fsyncs it,
then swaps it with DIR in one renameat2(RENAME_EXCHANGE) (a plain rename when DIR is absent), so
at every instant DIR holds the old or the new complete checkpoint; temporaries of dead processes
are removed by the next save next to them. A DIR that holds anything qpass did not write (no
format marker, or files its manifest does not list) is refused, never replaced. load() checks
every hash before reading a tensor and raises CheckpointError for a missing, truncated or
modified file and for missing keys."""
from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import uuid
from pathlib import Path

import torch

from qpass.errors import CheckpointError
from qpass.runtime.graph_io import build_graph_module, graph_to_json
from qpass.runtime.tensor_records import tensor_records

FORMAT = "qpass-compiled"
# 2: symmetric spec strings mean the full-range grid unless marked ':restricted' (DESIGN §4).
#    Version-1 manifests predate grids; their symmetric specs are read as restricted.
VERSION = 2
GRID_VERSION = 2
_SPEC_KWARGS = ("weight_spec", "act_spec")
WEIGHTS = "model.safetensors"
MANIFEST = "manifest.json"
SUMS = "SHA256SUMS"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def qpass_files(directory: Path) -> set[str] | None:
    """Names of the files a qpass checkpoint in `directory` wrote (None: not one, by its format
    marker: a manifest.json of format qpass-compiled next to SHA256SUMS)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or \
            not (directory / SUMS).is_file() or not isinstance(manifest.get("files"), dict):
        return None
    return set(manifest["files"]) | {MANIFEST, SUMS}


def check_target(directory) -> Path:
    """Raise CheckpointError unless `directory` is absent, empty, or a qpass compiled checkpoint
    holding nothing but what that save wrote (so user files are never replaced). Callers check
    before long work (qpass.runtime.output.check_output_dir does this and more)."""
    out = Path(directory).absolute()
    if not out.exists() and not out.is_symlink():
        return out
    if out.is_symlink() or not out.is_dir():
        raise CheckpointError(f"{out} exists and is not a directory; choose another output "
                              f"directory (nothing was written)")
    entries = {p.name for p in out.iterdir()}
    if not entries:
        return out
    ours = qpass_files(out)
    if ours is None:
        raise CheckpointError(f"{out} exists and is not a qpass compiled checkpoint (no qpass "
                              f"format marker); choose another output directory (nothing was "
                              f"written)")
    foreign = sorted(entries - ours)
    if foreign:
        raise CheckpointError(f"{out} is a qpass checkpoint but also holds {', '.join(foreign[:5])}"
                              f"{' …' if len(foreign) > 5 else ''}, which qpass did not write; move "
                              f"them or choose another output directory (nothing was written)")
    return out


_RENAME_EXCHANGE = 2
_active: set[str] = set()          # temporaries this process is writing right now


def exchange_paths(a: Path, b: Path) -> None:
    """Swap two existing paths in one step (Linux renameat2 RENAME_EXCHANGE); OSError where
    the kernel or filesystem cannot."""
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(a))


def _stale_temporaries(out: Path) -> list[Path]:
    pat = re.compile(rf"\.{re.escape(out.name)}\.(qpass-tmp-(\d+)-[0-9a-f]{{8}}|(tmp|old)-[0-9a-f]{{8}})\Z")
    stale = []
    for p in out.parent.iterdir() if out.parent.is_dir() else ():
        m = pat.match(p.name)
        if not m or str(p) in _active or not p.is_dir() or p.is_symlink():
            continue
        pid = int(m.group(2)) if m.group(2) else None     # older qpass: .NAME.tmp-/.old-HEX
        if pid is not None and pid != os.getpid():
            try:
                os.kill(pid, 0)
                continue                                  # its writer is still running
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        stale.append(p)
    return stale


def _move_into_place(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.rename(tmp, out)
        return
    try:
        exchange_paths(tmp, out)                          # tmp now holds the old checkpoint
    except OSError as e:
        if e.errno not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise
        # no atomic swap on this filesystem: two renames (docs/FORMATS.md names the window)
        old = out.parent / f".{out.name}.qpass-tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.rename(out, old)
        os.rename(tmp, out)
        os.rename(old, tmp)


def _new_temporary(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    for p in _stale_temporaries(out):
        shutil.rmtree(p, ignore_errors=True)
    tmp = out.parent / f".{out.name}.qpass-tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    _active.add(str(tmp))
    tmp.mkdir()
    return tmp


def _finish(tmp: Path, out: Path, tokenizer, manifest: dict) -> None:
    """Tokenizer, manifest (with every file's hash), SHA256SUMS, fsync, then the atomic swap."""
    if tokenizer is not None:
        if hasattr(tokenizer, "save_pretrained"):
            tokenizer.save_pretrained(str(tmp))
        elif hasattr(tokenizer, "save"):
            tokenizer.save(tmp)
    manifest = dict(manifest, files={p.name: sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()})
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
    (tmp / SUMS).write_text(f"{sha256(tmp / MANIFEST)}  {MANIFEST}\n")
    for p in tmp.iterdir():
        _fsync(p)
    _fsync(tmp)
    _move_into_place(tmp, out)
    _fsync(out.parent)


def save(compiled, directory) -> Path:
    """Write `compiled` (a CompiledDenoiser) to `directory` atomically."""
    from safetensors.torch import save_file
    out = check_target(directory)
    tmp = _new_temporary(out)
    try:
        store, kinds = tensor_records(compiled.gm)
        save_file(store, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        manifest = dict(compiled.manifest, format=FORMAT, version=VERSION,
                        graph=graph_to_json(compiled.gm), tensors=kinds)
        _finish(tmp, out, compiled.tokenizer, manifest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)            # the half-written or the old save
        _active.discard(str(tmp))
    return out


def save_streamed(manifest: dict, tokenizer, shards: list[Path], out) -> Path:
    """Assemble a streamed run (qpass/pipeline/disk_store.py) into a compiled checkpoint at
    `out`, atomically as save() does: the stage shards are moved in (no copy) and listed under
    manifest `weights`; `manifest` already holds graph, tensors and the rest. If anything
    fails, the shards go back to the work directory, so the run stays resumable."""
    out = check_target(out)
    tmp = _new_temporary(out)
    moved = []
    try:
        for p in shards:
            os.replace(p, tmp / p.name)
            moved.append((tmp / p.name, p))
        _finish(tmp, out, tokenizer, dict(manifest, format=FORMAT, version=VERSION,
                                          weights=[p.name for p in shards]))
        moved = []
    finally:
        for now, before in moved:
            if now.exists():
                os.replace(now, before)
        shutil.rmtree(tmp, ignore_errors=True)
        _active.discard(str(tmp))
    return out


def _check_hash(path: Path, want: str) -> None:
    if not path.exists():
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete")
    got = sha256(path)
    if got != want:
        raise CheckpointError(f"{path.name} is corrupt (sha256 {got[:12]}… != recorded "
                              f"{want[:12]}…): truncated or modified; save the model again")


def read_manifest(directory) -> dict:
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"{d} is not a directory")
    sums = d / SUMS
    if not sums.exists():
        raise CheckpointError(f"{d} has no {SUMS}: not a qpass compiled checkpoint (or incomplete)")
    parts = sums.read_text().split()
    if len(parts) != 2 or parts[1] != MANIFEST:
        raise CheckpointError(f"{sums} is malformed; expected '<sha256>  {MANIFEST}'")
    _check_hash(d / MANIFEST, parts[0])
    try:
        manifest = json.loads((d / MANIFEST).read_text())
    except ValueError as e:
        raise CheckpointError(f"{d / MANIFEST} is not valid JSON: {e}") from None
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{d} holds format {manifest.get('format')!r}, not {FORMAT!r}")
    if manifest.get("version", 0) > VERSION:
        raise CheckpointError(f"{d} was written by a newer qpass (format version "
                              f"{manifest['version']} > {VERSION}); upgrade qpass")
    for key in ("graph", "tensors", "files", "config"):
        if key not in manifest:
            raise CheckpointError(f"{d / MANIFEST} lacks the key {key!r}")
    return manifest


def _read_specs_as_restricted(manifest: dict) -> None:
    """Give the spec strings of a pre-grid manifest their saved meaning (restricted symmetric
    grid), in the module kwargs the graph is rebuilt from and in the per-node `specs` table,
    so that an old checkpoint computes exactly what it computed when it was written."""
    from qpass.errors import SpecError
    from qpass.specs import legacy_grid

    def fix(s):
        if not isinstance(s, str):
            return s
        try:
            return str(legacy_grid(s))
        except SpecError as e:
            raise CheckpointError(f"bad spec {s!r} in a version-1 manifest: {e}") from None
    for ms in manifest["graph"].get("modules", {}).values():
        kw = ms.get("kwargs", {})
        for key in _SPEC_KWARGS:
            if key in kw:
                kw[key] = fix(kw[key])
    for entry in (manifest.get("specs") or {}).values():
        if isinstance(entry, dict):
            for key in ("weight", "act"):
                if key in entry:
                    entry[key] = fix(entry[key])


def load(directory) -> tuple:
    """(graph module, model config, tokenizer, manifest) read from `directory` after verifying
    every file's sha256; qpass.runtime.compiled.load_compiled wraps them."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from qpass.models.config import ModelConfig
    from qpass.models.tokenizer import load_tokenizer
    d = Path(directory)
    manifest = read_manifest(d)
    weights = manifest.get("weights", [WEIGHTS])     # streamed runs write one shard per stage
    if not isinstance(weights, list) or not weights or \
            any(not isinstance(w, str) or w not in manifest["files"] for w in weights):
        raise CheckpointError(f"{d / MANIFEST} lists weight files {weights!r} that are not all "
                              f"among its hashed files")
    for name, digest in manifest["files"].items():
        if "/" in name or name.startswith("."):
            raise CheckpointError(f"bad file name {name!r} in manifest")
        _check_hash(d / name, digest)
    tensors = {}
    for w in weights:
        try:
            part = load_file(str(d / w))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"cannot read {d / w}: {e}") from None
        dup = sorted(set(part) & set(tensors))
        if dup:
            raise CheckpointError(f"{w} repeats tensors of an earlier shard: {dup[:3]}")
        tensors.update(part)
    if manifest.get("version", 0) < GRID_VERSION:
        _read_specs_as_restricted(manifest)
    gm = build_graph_module(manifest["graph"], tensors, manifest["tensors"])
    try:
        config = ModelConfig.from_dict(manifest["config"])
    except (TypeError, KeyError) as e:
        raise CheckpointError(f"bad model config in manifest: {e}") from None
    return gm, config, load_tokenizer(d), manifest

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
are removed by the next save next to them (qpass.runtime.atomic_dir). A DIR that holds anything qpass did not write (no
format marker, or files its manifest does not list) is refused, never replaced. load() checks
every hash before reading a tensor and raises CheckpointError for a missing, truncated or
modified file and for missing keys."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from qpass import folders
from qpass.errors import CheckpointError, UnsafeFileError
from qpass.folders import Mapping, Optional
from qpass.models.tokenizer import save_tokenizer
from qpass.runtime.atomic_dir import commit, discard, new_temporary
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


# What every reader of a manifest relies on, checked before any field is used (qpass.folders);
# the graph's nodes and modules are validated node by node in graph_io.
MANIFEST_SCHEMA = {
    "format": str, "version": Optional(int), "files": Mapping(str), "config": dict,
    "graph": {"nodes": [dict], "modules": Mapping(dict)}, "tensors": Mapping(dict),
    "weights": Optional([str]), "pipeline": Optional([{"name": str, "config": Optional(dict)}]),
    "pipeline_scheme": Optional((str, dict, type(None))), "report": Optional((dict, type(None))),
    "specs": Optional((dict, type(None))),
}


def _manifest_of(directory: Path) -> dict | None:
    """The manifest.json object of `directory` when it is a regular, size-capped file inside
    it holding a JSON object of the qpass format; None otherwise (the format-marker test)."""
    try:
        manifest = folders.read_json(directory / MANIFEST, directory, folders.CAPS["manifest"],
                                     {"format": str, "files": Mapping(str)}, "manifest")
    except (OSError, UnsafeFileError):
        return None
    return manifest if manifest["format"] == FORMAT else None


def has_format_marker(directory) -> bool:
    """Whether `directory` holds a qpass compiled checkpoint's manifest (not yet verified)."""
    return Path(directory).is_dir() and _manifest_of(Path(directory)) is not None


def qpass_files(directory: Path) -> set[str] | None:
    """Names of the files a qpass checkpoint in `directory` wrote (None: not one, by its format
    marker: a manifest.json of format qpass-compiled next to SHA256SUMS)."""
    manifest = _manifest_of(directory)
    if manifest is None or not (directory / SUMS).is_file():
        from qpass.runtime.as_is_manifest import as_is_files
        return as_is_files(directory)             # a model captured as it is, or None
    return set(manifest["files"]) | {MANIFEST, SUMS}


def describe(directory, preset_of=None) -> str | None:
    """What the qpass checkpoint in `directory` is, in one phrase ('preset w4a16-gptq:
    GPTQ → Lower, scheme w4a16g128, written 2026-12-08 14:03'), or None when the folder
    holds none (by its format marker). `preset_of(manifest)`: the preset name that made it,
    or None (qpass.presets.identify; the runtime layer cannot import presets). The date is
    manifest.json's modification time: manifests record no date, so that two runs of one
    pipeline write identical bytes."""
    from datetime import datetime
    d = Path(directory)
    manifest = _manifest_of(d) if d.is_dir() else None
    if manifest is None:
        from qpass.runtime.as_is_manifest import describe_as_is
        from qpass.runtime.foreign import describe_foreign
        return describe_as_is(d) or describe_foreign(d)
    entries = manifest.get("pipeline") if isinstance(manifest.get("pipeline"), list) else []
    names = [e["name"] for e in entries if isinstance(e, dict) and isinstance(e.get("name"), str)]
    scheme = manifest.get("pipeline_scheme")
    scheme = scheme.get("name") if isinstance(scheme, dict) else scheme
    preset = preset_of(manifest) if preset_of is not None else None
    what = " → ".join(names[:8]) or "no recorded pipeline"
    when = datetime.fromtimestamp((d / MANIFEST).stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    return (f"{f'preset {preset}: ' if preset else 'pipeline '}{what}"
            f"{f', scheme {scheme}' if isinstance(scheme, str) else ''}, written {when}")


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


def _finish(tmp: Path, out: Path, tokenizer, manifest: dict) -> None:
    """Tokenizer, manifest (with every file's hash), SHA256SUMS, fsync, then the atomic swap."""
    save_tokenizer(tokenizer, tmp)
    manifest = dict(manifest, files={p.name: sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()})
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, default=str))
    (tmp / SUMS).write_text(f"{sha256(tmp / MANIFEST)}  {MANIFEST}\n")
    commit(tmp, out)


def save(compiled, directory) -> Path:
    """Write `compiled` (a CompiledDenoiser) to `directory` atomically."""
    from safetensors.torch import save_file
    out = check_target(directory)
    tmp = new_temporary(out)
    try:
        store, kinds = tensor_records(compiled.gm)
        save_file(store, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        manifest = dict(compiled.manifest, format=FORMAT, version=VERSION,
                        graph=graph_to_json(compiled.gm), tensors=kinds)
        _finish(tmp, out, compiled.tokenizer, manifest)
    finally:
        discard(tmp)                                      # the half-written or the old save
    return out


def save_streamed(manifest: dict, tokenizer, shards: list[Path], out) -> Path:
    """Assemble a streamed run (qpass/pipeline/disk_store.py) into a compiled checkpoint at
    `out`, atomically as save() does: the stage shards are moved in (no copy) and listed under
    manifest `weights`; `manifest` already holds graph, tensors and the rest. If anything
    fails, the shards go back to the work directory, so the run stays resumable."""
    out = check_target(out)
    tmp = new_temporary(out)
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
        discard(tmp)
    return out


def _check_hash(d: Path, name: str, want: str) -> Path:
    """The real path of file `name` of checkpoint `d` after checking it is a regular file
    inside `d` whose sha256 is `want`."""
    path = d / folders.check_name(name, "checkpoint file")
    try:
        got = folders.sha256_file(path, d, "checkpoint file")
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete") from None
    if got != want:
        raise CheckpointError(f"{path.name} is corrupt (sha256 {got[:12]}… != recorded "
                              f"{want[:12]}…): truncated or modified; save the model again")
    return folders.regular_file(path, d)


def read_manifest(directory) -> dict:
    """The manifest of checkpoint `directory`, hash-checked against SHA256SUMS and validated
    against MANIFEST_SCHEMA (one CheckpointError naming what is wrong)."""
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"{d} is not a directory")
    sums = d / SUMS
    if not os.path.lexists(sums):
        raise CheckpointError(f"{d} has no {SUMS}: not a qpass compiled checkpoint (or incomplete)")
    parts = folders.read_text(sums, d, folders.CAPS["sums"], SUMS).split()
    if len(parts) != 2 or parts[1] != MANIFEST or len(parts[0]) != 64:
        raise CheckpointError(f"{sums} is malformed; expected '<sha256>  {MANIFEST}'")
    _check_hash(d, MANIFEST, parts[0])
    manifest = folders.read_json(d / MANIFEST, d, folders.CAPS["manifest"], dict, "manifest")
    if manifest.get("format") != FORMAT:
        raise CheckpointError(f"{d} holds format {str(manifest.get('format'))[:40]!r}, not {FORMAT!r}")
    version = manifest.get("version", 0)
    if isinstance(version, int) and not isinstance(version, bool) and version > VERSION:
        raise CheckpointError(f"{d} was written by a newer qpass (format version "
                              f"{version} > {VERSION}); upgrade qpass")
    folders.check_shape(manifest, MANIFEST_SCHEMA, str(d / MANIFEST))
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
    try:            # before any weight is read: a config that lies is refused first
        config = ModelConfig.from_dict(manifest["config"], where=f"{d / MANIFEST} config")
    except (TypeError, KeyError, ValueError) as e:
        raise CheckpointError(f"bad model config in manifest: {str(e)[:200]!r}") from None
    weights = manifest.get("weights", [WEIGHTS])     # streamed runs write one shard per stage
    if not weights or any(w not in manifest["files"] for w in weights):
        raise CheckpointError(f"{d / MANIFEST} lists weight files {weights!r:.200} that are not "
                              f"all among its hashed files")
    real = {name: _check_hash(d, name, digest) for name, digest in manifest["files"].items()}
    tensors = {}
    for w in weights:
        try:
            part = load_file(str(real[w]))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"cannot read {d / w}: {e}") from None
        dup = sorted(set(part) & set(tensors))
        if dup:
            raise CheckpointError(f"{w} repeats tensors of an earlier shard: {dup[:3]}")
        tensors.update(part)
    if manifest.get("version", 0) < GRID_VERSION:
        _read_specs_as_restricted(manifest)
    # every tensor is checked against its module, and the RoPE tables against the config
    gm = build_graph_module(manifest["graph"], tensors, manifest["tensors"], config)
    # the tokenizer reads only files the manifest lists and hashes (checked above)
    return gm, config, load_tokenizer(d, files=set(real) - {MANIFEST, *weights}), manifest

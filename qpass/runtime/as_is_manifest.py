"""What marks a folder as an as-is checkpoint (qpass/runtime/as_is_model.py writes it): the
manifest's name, format, schema, and the questions other parts ask of a folder — is it one,
which files did qpass write there, what is it — answered without loading a model (so
checkpoint.py's output-folder rules can ask them too)."""
from __future__ import annotations

import os
from pathlib import Path

from qpass import folders
from qpass.errors import CheckpointError
from qpass.folders import Mapping, Optional

FORMAT = "qpass-as-is"
VERSION = 1
MANIFEST = "qpass_as_is.json"
CODES = "qpass_quantized.safetensors"
ITEM_SCHEMA = {"path": str, "aliases": [str], "kind": str, "role": str,
               "weight_spec": (str, type(None)), "act_spec": (str, type(None)), "shape": [int],
               "params": Optional(Mapping([int])), "param_specs": Optional(Mapping(str))}
MANIFEST_SCHEMA = {"format": str, "version": int, "architecture": str, "remote": bool,
                   "files": Mapping(str), "items": [ITEM_SCHEMA], "report": Optional(dict)}


def is_as_is_checkpoint(directory) -> bool:
    return os.path.isfile(Path(directory) / MANIFEST)


def _manifest(directory) -> dict | None:
    d = Path(directory)
    if not d.is_dir() or not is_as_is_checkpoint(d):
        return None
    try:
        man = folders.read_json(d / MANIFEST, d, folders.CAPS["manifest"], MANIFEST_SCHEMA)
    except CheckpointError:
        return None
    return man if man["format"] == FORMAT else None


def as_is_files(directory) -> set[str] | None:
    """Names of the files an as-is save wrote in `directory` (None: not one)."""
    man = _manifest(directory)
    return None if man is None else set(man["files"]) | {MANIFEST}


def describe_as_is(directory) -> str | None:
    """'as-is DiffusionGemmaForBlockDiffusion, Pipeline([...]), scheme w4a16g128'."""
    man = _manifest(directory)
    if man is None:
        return None
    rep = man.get("report") or {}
    return (f"as-is {man['architecture']}, {rep.get('pipeline', '?')}, scheme "
            f"{rep.get('scheme', '?')}")

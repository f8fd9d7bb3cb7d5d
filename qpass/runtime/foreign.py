"""Quantized checkpoints other tools wrote (compressed-tensors, GPTQ, GGUF), which
`load_compiled` reads as compiled models. Their readers live in qpass.interop, a higher layer
the runtime must not import; it registers them here when qpass is imported, and the runtime
only asks: which importer recognises this path (by its own marker: a config.json's
quantization_config, a GGUF magic), and load it."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable


@dataclass(frozen=True)
class Importer:
    name: str                            # "compressed-tensors", "gptq", "gguf"
    detect: Callable[[Path], bool]       # cheap, never raises: the format's marker only
    load: Callable[[Path], object]       # -> CompiledDenoiser (CheckpointError if it cannot)


_IMPORTERS: dict[str, Importer] = {}


def register_importer(name: str, detect: Callable[[Path], bool],
                      load: Callable[[Path], object]) -> None:
    """Make `load_compiled(path)` (and every command that loads a model) read the checkpoints
    `detect` recognises with `load`; a second registration of `name` replaces the first."""
    _IMPORTERS[name] = Importer(name, detect, load)


def importer_for(path) -> Importer | None:
    """The registered importer whose format marker `path` carries, or None."""
    try:
        p = Path(path)
    except TypeError:
        return None
    for imp in _IMPORTERS.values():
        if imp.detect(p):
            return imp
    return None


def describe_foreign(path) -> str | None:
    """'a gptq checkpoint (imported by load_compiled)', or None when no importer knows it."""
    imp = importer_for(path)
    return None if imp is None else f"a {imp.name} checkpoint, which load_compiled imports"

"""Bring quantized models in (DESIGN §14, docs/INTEROP.md "Import"): `load_quantized(path)`
reads a compressed-tensors or GPTQ checkpoint folder or a GGUF file as a CompiledDenoiser whose
QuantLinear modules hold the file's codes and scales as they are. Importing qpass registers
these readers with qpass.runtime.foreign, so `qpass.load_compiled(path)` and every command that
loads a model (`qpass eval`, `generate`, `inspect`, `export`, study) read such paths like a
compiled checkpoint."""
from __future__ import annotations

from pathlib import Path

from qpass.errors import CheckpointError
from qpass.interop.gguf_read import is_gguf
from qpass.interop.import_hf import quant_config
from qpass.models.as_is import is_as_is_dir
from qpass.runtime.foreign import importer_for, register_importer

READ = ("compressed-tensors", "gptq")


def _method(path: Path) -> str | None:
    """quant_method of a quantized folder of the reference family (LLaDA, Dream, LLaMA
    layouts); None for anything else — an architecture qpass captures as it is keeps its own
    loader (qpass.models.as_is), quantized or not."""
    qc = quant_config(path)
    if qc is None:
        return None
    try:
        if is_as_is_dir(path):
            return None
    except (OSError, CheckpointError):
        return None
    return str(qc.get("quant_method", "")).lower()


def _compressed_tensors(path: Path):
    from qpass.interop.import_compressed_tensors import load_compressed_tensors
    return load_compressed_tensors(path, quant_config(path))


def _gptq(path: Path):
    from qpass.interop.import_gptq import load_gptq
    return load_gptq(path, quant_config(path))


def _gguf(path: Path):
    from qpass.interop.import_gguf import load_gguf
    return load_gguf(path)


def _other(path: Path):
    raise CheckpointError(f"{path} is quantized with quant_method {_method(path)!r}; qpass "
                          f"imports {', '.join(READ)} folders and GGUF files (codes and scales "
                          f"kept as they are). Convert it to one of those, or load the model "
                          f"it was quantized from")


def register() -> None:
    register_importer("compressed-tensors", lambda p: _method(p) == "compressed-tensors",
                      _compressed_tensors)
    register_importer("gptq", lambda p: _method(p) == "gptq", _gptq)
    register_importer("gguf", is_gguf, _gguf)
    register_importer("quantized", lambda p: _method(p) not in (None, *READ), _other)


def load_quantized(path, device=None):
    """A CompiledDenoiser of the compressed-tensors / GPTQ folder or GGUF file `path` (moved
    to `device`, its kernels bound, as load_compiled does); CheckpointError when `path` is
    none of them or holds something qpass cannot keep exactly."""
    imp = importer_for(path)
    if imp is None:
        raise CheckpointError(f"{path} is neither a compressed-tensors or GPTQ checkpoint folder "
                              f"(config.json quantization_config) nor a GGUF file")
    model = imp.load(Path(path))
    if device is not None:
        model = model.to(device)
    model.kernels = model.bind_kernels(prepare=True)
    return model

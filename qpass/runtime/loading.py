"""The one model-loading rule, below the CLI so that qpass.eval (lm-eval adapter) and
qpass.study use it too: a compiled checkpoint dir (qpass's manifest.json) or a quantized
checkpoint of another tool (compressed-tensors, GPTQ, GGUF) → load_compiled;
anything else (a zoo name or an HF checkpoint dir) → qpass.models.load."""
from __future__ import annotations


def is_compiled_dir(name_or_dir) -> bool:
    """Whether `name_or_dir` is a folder holding a qpass compiled checkpoint's manifest (the
    format marker, read under the folder rule of qpass.folders; load_compiled verifies it), or
    a quantized checkpoint another tool wrote that load_compiled imports (qpass.runtime.foreign:
    a compressed-tensors or GPTQ folder, a GGUF file)."""
    from .as_is_model import is_as_is_checkpoint
    from .checkpoint import has_format_marker
    from .foreign import importer_for
    return has_format_marker(str(name_or_dir)) or is_as_is_checkpoint(name_or_dir) \
        or importer_for(name_or_dir) is not None


def load_any(name_or_dir, device=None, dtype=None, trust_remote_code: bool = False):
    """FP model or compiled denoiser named by `name_or_dir`, on `device` (default cpu); a
    checkpoint that ships its own code runs it only with trust_remote_code."""
    import torch

    from ..models import load
    if is_compiled_dir(name_or_dir):
        from .compiled import load_compiled
        return load_compiled(name_or_dir, device=device,      # binds that device's kernels
                             trust_remote_code=trust_remote_code)
    dt = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    return load(str(name_or_dir), device=device or "cpu", dtype=dt,
                trust_remote_code=trust_remote_code)

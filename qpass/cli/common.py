"""What every command shares: the one model-loading rule and the one calibration builder.

Model-loading rule: MODEL is a compiled checkpoint dir (qpass's manifest.json) → load_compiled;
a zoo name or HF checkpoint dir → qpass.models.load; a large named config (`llada-8b`,
`dream-7b`) has no weights, so it loads on the meta device, which only structural commands
(inspect, planned coverage) accept."""
from __future__ import annotations

import json
from pathlib import Path

from qpass.errors import CalibrationError, PipelineError


def is_structure_only(name: str) -> bool:
    """True for the named configs of real sizes (no weights ship with them)."""
    from qpass.models import NAMED_CONFIGS
    return str(name) in NAMED_CONFIGS and not str(name).startswith("tiny")


def is_compiled_dir(name_or_dir) -> bool:
    from qpass.runtime.checkpoint import FORMAT, MANIFEST
    p = Path(name_or_dir) / MANIFEST
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text()).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def load_model(name_or_dir, device=None, dtype=None, structure_ok: bool = False):
    """The model MODEL names, by the rule above. `structure_ok`: accept a structure-only
    config (loaded on meta); otherwise such a name is one clear error."""
    import torch

    from qpass.models import load
    dt = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if is_structure_only(name_or_dir):
        if not structure_ok:
            raise PipelineError(f"{name_or_dir!r} is a structure-only config (no weights); pass an "
                                f"HF checkpoint directory of the model instead")
        return load(str(name_or_dir), device="meta")
    if is_compiled_dir(name_or_dir):
        from qpass.runtime import load_compiled
        model = load_compiled(name_or_dir)
        return model.to(device) if device else model
    return load(str(name_or_dir), device=device or "cpu", dtype=dt)


def build_calibration(pipeline, model, n: int, seq_len: int, seed: int = 0):
    """A CalibrationSet for `pipeline` (None when no pass calibrates), from the embedded
    corpora through the model's tokenizer."""
    if not any(p.needs_calibration for p in pipeline.passes):
        return None
    from qpass.calibration import CalibrationSet
    from qpass.data.sources import calibration_texts
    if getattr(model, "tokenizer", None) is None:
        raise CalibrationError("this pipeline needs calibration text but the model has no "
                               "tokenizer; use a checkpoint that ships one")
    return CalibrationSet.from_texts(calibration_texts(seed=seed), model.tokenizer, n=n,
                                     seq_len=min(seq_len, model.config.max_seq_len), seed=seed,
                                     vocab_size=model.config.vocab_size,
                                     mask_id=model.config.mask_token_id)

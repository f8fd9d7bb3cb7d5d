"""The one calibration builder: a CalibrationSet for a pipeline and a model, from the user's
data or, for the embedded zoo models only, from the embedded corpora (DESIGN §5, §9).

Every command that quantizes (quantize, inspect --after/--outliers, eval --trajectory, study)
builds its calibration here, so the rules below hold everywhere: no calibration when no pass
calibrates; a real checkpoint is never calibrated silently on Shakespeare and arithmetic."""
from __future__ import annotations

from qpass.errors import CalibrationError

from .dataset import CalibrationSet
from .texts import read_texts

DEFAULT_CALIB_SEQ_LEN = 512


def is_zoo_model(name) -> bool:
    """An embedded model: a zoo checkpoint or a tiny named config (random weights)."""
    from qpass.models import zoo_names
    return str(name) in zoo_names() or str(name).startswith("tiny-")


def build_calibration(pipeline, model, n: int, seq_len: int | None, seed: int = 0, path=None,
                      masking: str = "diffusion", model_name=None):
    """A CalibrationSet for `pipeline` (None when no pass calibrates): from the user's data at
    `path` (.txt, .jsonl, a folder of them or a saved HF dataset) or, for the embedded zoo
    models only (`model_name` None or a zoo name), from the embedded corpora. A real
    checkpoint with a calibrating pipeline and no `path` is a CalibrationError. `seq_len`
    None: 512 or the model's maximum when shorter; longer than the maximum is an error, not a
    silent clamp. `model` may be on the meta device: only its config and tokenizer are read."""
    if not any(p.needs_calibration for p in pipeline.passes):
        return None
    limit = model.config.max_seq_len
    if seq_len is None:
        seq_len = min(DEFAULT_CALIB_SEQ_LEN, limit)
    elif seq_len > limit:
        raise CalibrationError(f"--seq-len {seq_len} exceeds the model's {limit} positions; "
                               f"use --seq-len {limit} or less")
    if getattr(model, "tokenizer", None) is None:
        raise CalibrationError("this pipeline needs calibration text but the model has no "
                               "tokenizer; use a checkpoint that ships one")
    if path is not None:
        texts = read_texts(path)
    elif model_name is None or is_zoo_model(model_name):
        from qpass.data import calibration_texts
        texts = calibration_texts(seed=seed)
    else:
        need = ", ".join(p.name for p in pipeline.passes if p.needs_calibration)
        raise CalibrationError(f"{need} calibrate(s) on activations, and {model_name} is not an "
                               f"embedded zoo model: pass your calibration data (--calib PATH, or "
                               f"path = ... under [calibration] in a study config: "
                               f".txt, .jsonl with a \"text\" field, a folder of them, or a saved "
                               f"Hugging Face dataset)")
    return CalibrationSet.from_texts(texts, model.tokenizer, n=n, seq_len=seq_len, seed=seed,
                                     masking=masking, vocab_size=model.config.vocab_size,
                                     mask_id=model.config.mask_token_id)

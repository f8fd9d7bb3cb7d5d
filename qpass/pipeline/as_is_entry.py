"""Pipeline.run's door to models captured as they are (as_is_run.py): which arguments go
there, and the calibration windows they calibrate on.

A checkpoint directory whose architecture qpass's reference family does not load, a
transformers model that cannot be mapped onto it (qpass.models.from_hf), or a model
qpass.models.load returned as it is: all run through AsIsRun on a private copy (the caller's
model is never changed). Text is cut into clean windows of a prompt plus one canvas
(CalibrationSet.from_texts(masking="none")); qpass.calibration.model_states turns them into
the states the model's own sampler feeds it."""
from __future__ import annotations

import copy
import os
from pathlib import Path

import torch

from qpass.errors import CalibrationError, PipelineError

AS_IS_CALIB_N = 64              # windows: every stage runs the whole model over them
AS_IS_PROMPT_LEN = 64


def as_is_source(model_or_dir) -> bool:
    """True when `model_or_dir` runs as it is (module doc)."""
    if isinstance(model_or_dir, (str, os.PathLike)):
        from qpass.models.as_is import is_as_is_dir
        return Path(model_or_dir).is_dir() and is_as_is_dir(model_or_dir)
    if getattr(model_or_dir, "qpass_as_is", None) is not None:
        return True
    from qpass.models.from_hf import from_hf, is_transformers_model
    if not is_transformers_model(model_or_dir):
        return False
    try:
        from qpass.models.hf_config import detect_family
        detect_family(model_or_dir.config.to_dict())
        return False
    except Exception:       # not a layout the reference family maps: captured as it is
        return True


def run_as_is(pipeline, model_or_dir, calib, out=None, overwrite: bool = False,
              progress=None, seed: int = 0, batch_size: int = 8,
              trust_remote_code: bool = False, device=None, dtype=None):
    from qpass.models.as_is import load_as_is
    from qpass.pipeline.as_is_run import AsIsRun, check_passes
    from qpass.calibration.model_states import model_states
    if out is not None:
        from qpass.runtime.output import check_new_output, check_not_replacing
        if not overwrite:
            check_not_replacing(out, "out=", "pass overwrite=True to replace it")
        check_new_output(out, "out=") if not os.path.lexists(out) else None
    if isinstance(model_or_dir, (str, os.PathLike)):
        model = load_as_is(model_or_dir, device=device, dtype=dtype,
                           trust_remote_code=trust_remote_code)
    elif _params_on_meta(model_or_dir):
        model = model_or_dir          # nothing of the caller's is changed: it holds no weights
    else:
        model = _private_copy(model_or_dir)
    check_passes(pipeline, type(model).__name__)          # before any compute
    if calib is None and any(getattr(p, "needs_calibration", False) for p in pipeline.passes):
        raise CalibrationError("GPTQ needs calibration data; pass calib= text or token ids")
    streamer = None
    if _params_on_meta(model):                 # structure only: stream from its directory
        from qpass.pipeline.as_is_stream import WeightStreamer
        if getattr(model, "checkpoint_dir", None) is None or out is None:
            raise PipelineError("a structure-only model (meta device) is quantized by streaming "
                                "its checkpoint directory into out=DIR: load it from a "
                                "directory and pass out=")
        streamer = WeightStreamer(model, model.checkpoint_dir).start()
    clean = clean_windows(model, calib, seed)
    states = model_states(model, clean, batch_size=batch_size, seed=seed)
    result = AsIsRun(pipeline, model, states, progress, streamer).run()
    if streamer is not None:
        result.report["streamed"] = {"from": str(model.checkpoint_dir),
                                     "tensor_reads": streamer.reads}
    if out is not None:
        result.save(out, overwrite=True)
    return result


def _params_on_meta(model) -> bool:
    return any(p.is_meta for p in model.parameters())


def _private_copy(model):
    tok = getattr(model, "tokenizer", None)
    model.tokenizer = None                       # tokenizers need not deep-copy
    try:
        twin = copy.deepcopy(model)
    finally:
        model.tokenizer = tok
    twin.tokenizer = tok
    for k in ("checkpoint_dir", "qpass_as_is"):
        if hasattr(model, k):
            setattr(twin, k, getattr(model, k))
    return twin.eval()


def clean_windows(model, calib, seed: int = 0) -> torch.Tensor:
    """(rows, L) clean id windows from `calib`: text (str or list of str, cut with the
    model's tokenizer), a (rows, L) integer tensor, or None (a random probe: RTN only)."""
    from qpass.calibration.dataset import CalibrationSet
    from qpass.calibration.model_states import window_length
    L = window_length(model, AS_IS_PROMPT_LEN)
    if calib is None:
        vocab = int(getattr(model.config, "vocab_size", None) or
                    model.config.get_text_config().vocab_size)
        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, vocab, (2, L), generator=g)
    if isinstance(calib, torch.Tensor) and calib.dim() == 2 and not calib.is_floating_point():
        return calib.long()
    if isinstance(calib, CalibrationSet):
        return calib.clean_ids
    if isinstance(calib, str) or (isinstance(calib, (list, tuple)) and calib
                                  and all(isinstance(t, str) for t in calib)):
        tok = getattr(model, "tokenizer", None)
        if tok is None:
            raise CalibrationError("calib was given as text but the checkpoint has no "
                                   "tokenizer; pass token ids")
        return CalibrationSet.from_texts(calib, tok, n=AS_IS_CALIB_N, seq_len=L,
                                         masking="none", seed=seed).clean_ids
    raise PipelineError(f"calib for a model captured as it is must be text, a (rows, length) "
                        f"integer id tensor or a CalibrationSet; got {type(calib).__name__}")

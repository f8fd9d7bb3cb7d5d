"""What `Pipeline.run(model, calib)` accepts as `calib`, turned into calibration data at the
boundary (before any compute or progress bar), or one CalibrationError naming what is accepted.

  - None: no calibration (a pass that calibrates then says so);
  - a CalibrationSet (anything with `.batches`): used as is;
  - text, a str or a list of str: CalibrationSet.from_texts with the model's tokenizer;
  - a 2-D integer torch tensor (B, L): one batch of model inputs, used exactly as given
    (unmasked, as qpass.capture takes it; build a CalibrationSet to have it masked);
  - other token ids, a 1-D stream, an array, a list of ints or of equal-length int lists, or a
    tokenizer's output (a mapping with "input_ids"): CalibrationSet.from_ids, whose rows rule
    applies (rows are the windows themselves; a 1-D stream is cut into windows);
  - a list of (B, L) id tensors or (input_ids,) tuples: model inputs used exactly as given.

Text and token streams get the CLI's defaults (qpass/calibration/builder.py): 128 windows of
512 tokens (or the model's maximum when shorter), seeded with the run's seed, masked as a dLLM
sees at inference ("diffusion") or plain for a causal model ("none")."""
from __future__ import annotations

import numbers
from collections.abc import Mapping

import torch

from qpass.errors import CalibrationError

from .builder import DEFAULT_CALIB_SEQ_LEN
from .dataset import CalibrationSet, _rows

DEFAULT_CALIB_N = 128
ACCEPTED = ("a qpass.calibration.CalibrationSet, text (a str or a list of str), token ids (an "
            "integer tensor: a 1-D stream or (n, seq_len) rows), or a list of (input_ids,) "
            "batches")


def as_calibration(calib, tokenizer=None, config=None, seed: int = 0):
    """`calib` as calibration data for a model with `tokenizer` and `config` (see the module
    doc); CalibrationError for anything else or for windows longer than the model's
    positions."""
    if calib is None:
        return None
    if hasattr(calib, "batches"):
        _check_length(getattr(calib, "seq_len", None), config)
        return calib
    if isinstance(calib, Mapping) and "input_ids" in calib:    # tokenizer(..., return_tensors)
        calib = calib["input_ids"]
    if isinstance(calib, torch.Tensor) and calib.dim() == 2 and not calib.is_floating_point():
        _check_batch(calib, config)                # one batch of model inputs, as given
        return [calib]
    if isinstance(calib, str) or _all(calib, str):
        return _from_texts(calib, tokenizer, config, seed)
    if _is_ids(calib):
        return _from_ids(calib, config, seed)
    firsts = [b[0] if isinstance(b, tuple) and b else b for b in calib] \
        if isinstance(calib, (list, tuple)) and calib else []
    if firsts and all(isinstance(t, torch.Tensor) and t.dim() == 2 for t in firsts):
        for t in firsts:                           # model-input batches, used as given
            _check_batch(t, config)
        return calib
    raise CalibrationError(f"calib must be {ACCEPTED}; got {_describe(calib)}")


def _settings(config, seed: int) -> dict:
    limit = getattr(config, "max_seq_len", None)
    causal = bool(getattr(config, "causal", False))
    return dict(seq_len=min(DEFAULT_CALIB_SEQ_LEN, limit) if limit else DEFAULT_CALIB_SEQ_LEN,
                masking="none" if causal else "diffusion", seed=seed,
                mask_id=getattr(config, "mask_token_id", None),
                vocab_size=getattr(config, "vocab_size", None))


def _from_texts(texts, tokenizer, config, seed: int) -> CalibrationSet:
    if tokenizer is None:
        raise CalibrationError("calib was given as text but the model carries no tokenizer: "
                               "pass token ids, or qpass.calibration.CalibrationSet.from_texts("
                               "texts, tokenizer, ...) with its tokenizer")
    kw = _settings(config, seed)
    how = (f"Pipeline.run cut the text with CalibrationSet.from_texts(texts, model.tokenizer, "
           f"n={DEFAULT_CALIB_N}, seq_len={kw['seq_len']}, masking={kw['masking']!r})")
    try:
        return CalibrationSet.from_texts(texts, tokenizer, n=DEFAULT_CALIB_N, **kw)
    except CalibrationError as e:
        raise CalibrationError(f"{e} ({how}; build the CalibrationSet yourself to choose n and "
                               f"seq_len)") from None


def _from_ids(ids, config, seed: int) -> CalibrationSet:
    kw = _settings(config, seed)
    rows = _rows(ids)
    if rows is not None:                          # the windows themselves (from_ids' rule)
        _check_length(rows.shape[1], config)
        kw["seq_len"] = None
        n = None
    else:
        n = DEFAULT_CALIB_N
    how = (f"Pipeline.run made CalibrationSet.from_ids(ids, mask_id={kw['mask_id']}, n={n}, "
           f"seq_len={kw['seq_len']}, masking={kw['masking']!r})")
    try:
        return CalibrationSet.from_ids(ids, n=n, **kw)
    except CalibrationError as e:
        raise CalibrationError(f"{e} ({how}; build the CalibrationSet yourself to choose its "
                               f"arguments)") from None


def _check_length(seq_len, config) -> None:
    limit = getattr(config, "max_seq_len", None)
    if seq_len is not None and limit is not None and int(seq_len) > int(limit):
        raise CalibrationError(f"calibration windows of {seq_len} tokens exceed the model's "
                               f"{limit} positions; use seq_len <= {limit}")


def _check_batch(ids: torch.Tensor, config) -> None:
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise CalibrationError(f"calibration batches must hold integer token ids, got a "
                               f"{ids.dtype} tensor")
    _check_length(ids.shape[1], config)
    vocab = getattr(config, "vocab_size", None)
    if ids.numel() and (int(ids.min()) < 0 or (vocab is not None and int(ids.max()) >= vocab)):
        raise CalibrationError(f"calibration batch ids span {int(ids.min())}..{int(ids.max())}, "
                               f"outside the model's vocabulary (size {vocab})")


def _all(items, kind) -> bool:
    return isinstance(items, (list, tuple)) and bool(items) and \
        all(isinstance(x, kind) for x in items)


def _is_ids(calib) -> bool:
    if isinstance(calib, torch.Tensor) or (hasattr(calib, "__array__") and
                                           not isinstance(calib, (list, tuple))):
        return True
    if _all(calib, numbers.Integral):
        return True
    if _all(calib, torch.Tensor):                 # 1-D sequences; 2-D ones are batches
        return all(t.dim() == 1 for t in calib)
    return _all(calib, (list, tuple)) and all(_all(r, numbers.Integral) for r in calib)


def _describe(x) -> str:
    if isinstance(x, (list, tuple)):
        inner = {type(v).__name__ for v in x}
        return f"{type(x).__name__} of {', '.join(sorted(inner)) or 'nothing'}"
    return type(x).__name__

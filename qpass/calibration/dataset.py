"""dLLM-aware calibration data (DESIGN §5).

A CalibrationSet holds `n` token windows of `seq_len` cut at seeded offsets from one
concatenated token stream, or the rows a user hands over as the windows themselves (a 2-D
tensor, as given to llm-compressor; `from_ids`). With `masking="diffusion"` every window draws
t ~ U(eps, 1) and each non-prompt token becomes the mask id with probability t — the inputs a
masked-diffusion denoiser actually sees while sampling. `masking="none"` keeps plain text
(what earlier dLLM PTQ work calibrated on), for comparison. Everything is drawn from one CPU
generator seeded with `seed`, so the same arguments always give the same tensor.

    calib = CalibrationSet.from_texts(texts, tokenizer, n=128, seq_len=512, masking="diffusion")
    for (input_ids,) in calib.batches(8): model(input_ids)
"""
from __future__ import annotations

import logging
import numbers
from typing import Iterator, Sequence

import torch

from qpass.errors import CalibrationError

MASKINGS = ("diffusion", "none")


def _encode(tokenizer, text: str) -> list[int]:
    if hasattr(tokenizer, "batch_decode"):  # a transformers tokenizer: no BOS/EOS inside text
        return list(tokenizer.encode(text, add_special_tokens=False))
    return list(tokenizer.encode(text))


def _tokenizer_vocab(tokenizer) -> int | None:
    v = getattr(tokenizer, "vocab_size", None)
    try:
        return max(int(v), len(tokenizer)) if v is not None else int(len(tokenizer))
    except TypeError:
        return int(v) if v is not None else None


class CalibrationSet:
    """Calibration token windows. `input_ids` (rows, seq_len) is what passes feed the model;
    `clean_ids` the same windows before masking; `mask_ratios` the t of each row (0 for
    masking="none"). rows = n * ratios_per_sample for diffusion masking, n otherwise."""

    def __init__(self, input_ids: torch.Tensor, clean_ids: torch.Tensor, mask_ratios: torch.Tensor,
                 masking: str, mask_id: int | None, seed: int, prompt_len: int = 0):
        self.input_ids = input_ids
        self.clean_ids = clean_ids
        self.mask_ratios = mask_ratios
        self.masking = masking
        self.mask_id = mask_id
        self.seed = seed
        self.prompt_len = prompt_len

    # ---- construction --------------------------------------------------------------------
    @classmethod
    def from_texts(cls, texts: str | Sequence[str], tokenizer, n: int = 128, seq_len: int = 512,
                   masking: str = "diffusion", ratios_per_sample: int = 1, prompt_len: int = 0,
                   eps: float = 1e-3, seed: int = 0, mask_id: int | None = None,
                   vocab_size: int | None = None) -> "CalibrationSet":
        """Tokenize `texts`, concatenate them (EOS between documents when the tokenizer has
        one) and cut `n` windows of `seq_len` at seeded random offsets (from_ids). Fewer tokens
        than n·seq_len still work, but the windows then repeat text: one warning on the
        "qpass" logger says how many tokens there are and how many the windows need.
        `vocab_size` (the model's) defaults to the tokenizer's; the mask id defaults to
        `tokenizer.mask_token_id`."""
        if tokenizer is None:
            raise CalibrationError("from_texts needs a tokenizer (the model has none?); pass "
                                   "tokenizer=, or tokenize yourself and use from_ids")
        if isinstance(texts, str):
            texts = [texts]
        try:
            texts = [] if texts is None else \
                list(texts) if not isinstance(texts, (torch.Tensor, bytes)) else [texts]
        except TypeError:                     # not iterable: reported as not text below
            texts = [texts]
        if any(not isinstance(t, str) for t in texts):
            raise CalibrationError("from_texts takes a str or a list of str; for token ids use "
                                   "CalibrationSet.from_ids(ids, mask_id=...)")
        texts = [t for t in texts if t]
        if not texts:
            raise CalibrationError("no calibration text: got an empty list (or only empty "
                                   "strings); pass a few documents, e.g. a dataset sample")
        eos = getattr(tokenizer, "eos_token_id", None)
        stream: list[int] = []
        for t in texts:
            stream += _encode(tokenizer, t)
            if eos is not None:
                stream.append(int(eos))
        tok_vocab = _tokenizer_vocab(tokenizer)
        if vocab_size is not None and tok_vocab is not None and tok_vocab > vocab_size:
            raise CalibrationError(f"tokenizer/model mismatch: the tokenizer has {tok_vocab} ids "
                                   f"but the model's vocabulary has {vocab_size}; use the "
                                   f"model's own tokenizer")
        if mask_id is None:
            mask_id = getattr(tokenizer, "mask_token_id", None)
        return cls.from_ids(stream, mask_id, n=n, seq_len=seq_len, masking=masking,
                            ratios_per_sample=ratios_per_sample, prompt_len=prompt_len, eps=eps,
                            seed=seed, vocab_size=vocab_size or tok_vocab)

    @classmethod
    def from_ids(cls, ids, mask_id: int | None = None, n: int | None = None,
                 seq_len: int | None = None, masking: str = "diffusion",
                 ratios_per_sample: int = 1, prompt_len: int = 0, eps: float = 1e-3,
                 seed: int = 0, vocab_size: int | None = None,
                 windows: str | None = None) -> "CalibrationSet":
        """Windows from token ids.

        Rows (a 2-D tensor or array with at least two rows, or a list of at least two
        sequences of equal length) are the windows themselves, row for row, as a user hands
        them to llm-compressor: n defaults to the number of rows and must equal it, seq_len
        defaults to the row length and may be shorter (each row is then truncated to its first
        seq_len tokens), never longer. A 1-D stream (a tensor, a list of ints, a (1, N) tensor
        as a tokenizer returns for one text, or a list of sequences of different lengths,
        concatenated) is cut into windows (n defaults to 128, seq_len to 512):
        windows="random" (the default for a stream): n windows at seeded random offsets (they
        may overlap; what GPTQ's reference does on a long corpus; a stream shorter than
        n·seq_len is logged as a warning, since the windows must then repeat text); "tile":
        the first n·seq_len tokens of the stream, rows concatenated, cut into n consecutive
        windows, each token used once. windows="rows" asks for the rows rule explicitly and
        windows="random" for rows flattens them into a stream (the behaviour before rows were
        windows). Raises CalibrationError for empty/too-short input, n/seq_len that contradict
        given rows, ids outside the vocabulary, or diffusion masking without a mask id."""
        if windows is not None and windows not in WINDOWS:
            raise CalibrationError(f"unknown windows {windows!r}; use one of {WINDOWS}")
        rows = _rows(ids)
        if windows is None:
            windows = "rows" if rows is not None else "random"
        if windows == "rows":
            if rows is None:
                raise CalibrationError("windows='rows' takes a 2-D tensor (or a list of "
                                       "equal-length sequences) with one window per row")
            clean_rows, n, seq_len = _given_rows(rows, n, seq_len)
            stream = clean_rows.reshape(-1)
        else:
            stream = _flatten_ids(ids)
            n = 128 if n is None else n
            seq_len = 512 if seq_len is None else seq_len
        _check_args(n, seq_len, masking, ratios_per_sample, prompt_len, eps)
        if stream.numel() == 0:
            raise CalibrationError("no calibration tokens: the input is empty")
        if stream.numel() < seq_len:
            raise CalibrationError(f"calibration text too short: {stream.numel()} tokens, but "
                                   f"one sample needs seq_len={seq_len}; add text or lower "
                                   f"seq_len")
        if int(stream.min()) < 0:
            raise CalibrationError(f"negative token id {int(stream.min())} in calibration data")
        if vocab_size is not None and int(stream.max()) >= vocab_size:
            raise CalibrationError(f"token id {int(stream.max())} is outside the vocabulary "
                                   f"(size {vocab_size}): tokenizer and model do not match")
        if masking == "diffusion":
            if mask_id is None:
                raise CalibrationError("masking='diffusion' needs a mask id: pass mask_id= (the "
                                       "tokenizer has no mask_token_id), or use masking='none'")
            if vocab_size is not None and not 0 <= int(mask_id) < vocab_size:
                raise CalibrationError(f"mask id {mask_id} is outside the vocabulary "
                                       f"(size {vocab_size})")
        if windows == "tile" and stream.numel() < n * seq_len:
            raise CalibrationError(f"windows='tile' needs n·seq_len = {n * seq_len} tokens, the "
                                   f"input has {stream.numel()}; lower n or seq_len, or use "
                                   f"windows='random'")
        if windows == "random" and stream.numel() < n * seq_len:
            _warn_overlap(stream.numel(), n, seq_len)
        gen = torch.Generator().manual_seed(int(seed))
        if windows == "rows":
            clean = clean_rows
        else:
            offsets = torch.arange(n) * seq_len if windows == "tile" else \
                torch.randint(0, stream.numel() - seq_len + 1, (n,), generator=gen)
            clean = torch.stack([stream[o:o + seq_len] for o in offsets.tolist()])
        if masking == "none":
            return cls(clean.clone(), clean, torch.zeros(n), masking, mask_id, seed, prompt_len)
        clean = clean.repeat_interleave(ratios_per_sample, dim=0)
        rows = clean.shape[0]
        t = eps + (1.0 - eps) * torch.rand(rows, generator=gen, dtype=torch.float64)
        masked = torch.rand(rows, seq_len, generator=gen, dtype=torch.float64) < t[:, None]
        masked[:, :prompt_len] = False          # the prompt is always visible context
        ids_out = torch.where(masked, torch.full_like(clean, int(mask_id)), clean)
        return cls(ids_out, clean, t.float(), masking, int(mask_id), seed, prompt_len)

    # ---- use -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def seq_len(self) -> int:
        return self.input_ids.shape[1]

    @property
    def n_tokens(self) -> int:
        return self.input_ids.numel()

    def batches(self, batch_size: int = 8, device=None) -> Iterator[tuple[torch.Tensor]]:
        """(input_ids,) tuples of up to batch_size rows, in a fixed order."""
        if batch_size < 1:
            raise CalibrationError(f"batch_size must be >= 1, got {batch_size}")
        for i in range(0, len(self), batch_size):
            ids = self.input_ids[i:i + batch_size]
            yield (ids.to(device) if device is not None else ids,)

    def check_vocab(self, vocab_size: int) -> None:
        """Raise CalibrationError if the ids do not fit a model with `vocab_size` tokens."""
        top = int(self.input_ids.max())
        if top >= vocab_size:
            raise CalibrationError(f"calibration token id {top} is outside the model's "
                                   f"vocabulary (size {vocab_size}): was it built with another "
                                   f"tokenizer?")

    def summary(self) -> dict:
        masked = (self.input_ids != self.clean_ids).float().mean().item()
        return {"rows": len(self), "seq_len": self.seq_len, "masking": self.masking,
                "mask_id": self.mask_id, "seed": self.seed, "masked_fraction": round(masked, 4)}

    def __repr__(self) -> str:
        s = self.summary()
        return (f"CalibrationSet(rows={s['rows']}, seq_len={s['seq_len']}, "
                f"masking={s['masking']!r}, masked_fraction={s['masked_fraction']})")


def _as_tensor(ids) -> torch.Tensor | None:
    """A tensor or array given as ids, checked to hold integers; None for anything else."""
    if not isinstance(ids, torch.Tensor):
        if not hasattr(ids, "__array__") or isinstance(ids, (list, tuple)):
            return None
        ids = torch.as_tensor(ids)                  # a numpy array
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise CalibrationError(f"token ids must be integers, got a {ids.dtype} tensor")
    return ids.long().cpu()


def _rows(ids) -> torch.Tensor | None:
    """(R, L) ids when they are given as rows (R >= 2): a 2-D tensor/array, or a list of
    sequences that all have the same length; None for a stream."""
    t = _as_tensor(ids)
    if t is not None:
        return t if t.dim() == 2 and t.shape[0] > 1 else None
    if not isinstance(ids, (list, tuple)) or len(ids) < 2 or \
            any(isinstance(s, (numbers.Integral, str, bytes)) for s in ids):
        return None
    try:
        parts = [_as_tensor(s) for s in ids]
        parts = [p if p is not None else torch.as_tensor(list(s), dtype=torch.long)
                 for p, s in zip(parts, ids)]
    except (TypeError, ValueError, RuntimeError):   # not ids: _flatten_ids says so
        return None
    if any(p.dim() != 1 for p in parts) or len({p.numel() for p in parts}) != 1 or \
            parts[0].numel() == 0:
        return None
    return torch.stack(parts)


def _given_rows(rows: torch.Tensor, n, seq_len) -> tuple[torch.Tensor, int, int]:
    """(windows, n, seq_len) for rows taken as the windows; n/seq_len must agree with them."""
    count, length = rows.shape
    how = (f"the ids are {count} rows of {length} tokens, taken as the windows themselves; "
           f"pass ids.reshape(-1) (or windows='random') to cut windows from them as one stream")
    if n is not None and int(n) != count:
        fewer = f", or slice the rows (ids[:{n}])" if 0 < int(n) < count else ""
        raise CalibrationError(f"n={n} contradicts the rows: {how}, or leave n out (or pass "
                               f"n={count}){fewer}")
    if seq_len is not None and int(seq_len) > length:
        raise CalibrationError(f"seq_len={seq_len} is longer than the rows: {how}, or pass "
                               f"seq_len <= {length} (longer rows are truncated to seq_len)")
    seq_len = length if seq_len is None else int(seq_len)
    if seq_len < 1:
        raise CalibrationError(f"seq_len must be >= 1, got {seq_len}")
    return rows[:, :seq_len].contiguous(), count, seq_len


def _warn_overlap(have: int, n: int, seq_len: int) -> None:
    need = n * seq_len
    logging.getLogger("qpass").warning(
        "qpass: the calibration data has %s tokens but n=%d windows of seq_len=%d need %s: the "
        "windows overlap and repeat text (each token used %.1f times on average); add text, or "
        "lower n or seq_len so that n*seq_len <= %s", f"{have:,}", n, seq_len, f"{need:,}",
        need / have, f"{have:,}")


def _flatten_ids(ids) -> torch.Tensor:
    if ids is None:
        return torch.zeros(0, dtype=torch.long)
    t = _as_tensor(ids)
    if t is not None:
        return t.reshape(-1)
    if isinstance(ids, (str, bytes)):
        raise CalibrationError("token ids expected, got text: use CalibrationSet.from_texts("
                               "texts, tokenizer, ...) for text")
    try:
        ids = list(ids)
        if ids and not isinstance(ids[0], numbers.Integral):   # a list of sequences
            parts = [_as_tensor(s) for s in ids]
            parts = [(p if p is not None else torch.as_tensor(list(s), dtype=torch.long))
                     .reshape(-1) for p, s in zip(parts, ids)]
            parts = [p for p in parts if p.numel()]
            return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
        return torch.as_tensor(ids, dtype=torch.long)
    except (TypeError, ValueError, RuntimeError) as e:
        raise CalibrationError(f"token ids must be integers: a tensor, a list of ints or a list "
                               f"of int sequences (got {type(ids).__name__}: {e})") from None


WINDOWS = ("random", "tile", "rows")


def _check_args(n, seq_len, masking, ratios_per_sample, prompt_len, eps) -> None:
    if masking not in MASKINGS:
        raise CalibrationError(f"unknown masking {masking!r}; use one of {MASKINGS}")
    if int(n) < 1 or int(seq_len) < 1 or int(ratios_per_sample) < 1:
        raise CalibrationError(f"n, seq_len and ratios_per_sample must be >= 1, got n={n}, "
                               f"seq_len={seq_len}, ratios_per_sample={ratios_per_sample}")
    if not 0 <= int(prompt_len) < int(seq_len):
        raise CalibrationError(f"prompt_len must be in [0, seq_len), got {prompt_len}")
    if not 0.0 < float(eps) < 1.0:
        raise CalibrationError(f"eps must be in (0, 1), got {eps}")

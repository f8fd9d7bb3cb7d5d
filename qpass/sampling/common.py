"""Shared plumbing of the samplers: special ids, prompt batching, calling a denoiser, progress.

A denoiser is anything called as `model(input_ids (B, L) long[, attention_mask (B, L) bool])`
returning logits (B, L, V) (or an object with `.logits`): the eager `Denoiser`, a captured
GraphModule, a `CompiledDenoiser`. Only the eager model is guaranteed to carry `.config` and
`.tokenizer`, so every id can also be passed explicitly."""
from __future__ import annotations

import contextlib
import numbers
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from ..display import progress as progress_lines
from ..errors import QpassError


@dataclass(frozen=True)
class SpecialIds:
    mask: int
    pad: int
    eos: int | None


def special_ids(model, mask_id: int | None = None, pad_id: int | None = None,
                eos_id: int | None = None) -> SpecialIds:
    """Explicit ids win; otherwise the model's config, then its tokenizer."""
    sources = [getattr(model, "config", None), getattr(model, "tokenizer", None)]

    def pick(explicit, name):
        if explicit is not None:
            return int(explicit)
        for src in sources:
            value = getattr(src, name, None) if src is not None else None
            if value is not None:
                return int(value)
        return None

    mask = pick(mask_id, "mask_token_id")
    if mask is None:
        raise QpassError("this denoiser has no config with a mask_token_id; pass mask_id=")
    eos = pick(eos_id, "eos_token_id")
    pad = pick(pad_id, "pad_token_id")
    # Padding is hidden from attention by the key mask, so any id other than the mask id works.
    if pad is None or pad == mask:
        pad = eos if eos is not None and eos != mask else (0 if mask != 0 else 1)
    return SpecialIds(mask=mask, pad=pad, eos=eos)


def check_length(model, length: int) -> None:
    """A clear error instead of a shape mismatch deep inside RoPE."""
    limit = getattr(getattr(model, "config", None), "max_seq_len", None)
    if limit is not None and length > limit:
        raise QpassError(f"sequence length {length} exceeds the model's max_seq_len {limit}; "
                         "use a shorter prompt, gen_length or seq_len")


def model_device(model) -> torch.device:
    for t in list(model.parameters())[:1] + list(model.buffers())[:1]:
        return t.device
    return torch.device("cpu")


def is_text(prompt) -> bool:
    """A prompt given as text: a str, or a non-empty list/tuple of str."""
    return isinstance(prompt, str) or (isinstance(prompt, (list, tuple)) and bool(prompt)
                                       and all(isinstance(p, str) for p in prompt))


def encode_prompts(tokenizer, prompt):
    """Text prompts (a str or a list of str) as token ids: a list of ints for one prompt, a list
    of such lists for several (left-padded later by batch_prompts). Encoded as `qpass generate
    --prompt` does, `tokenizer.encode(text)` (a transformers tokenizer adds its BOS, as a prompt
    starts). Anything else is returned unchanged. Text without a tokenizer is one QpassError."""
    if not is_text(prompt):
        return prompt
    if tokenizer is None:
        raise QpassError("the prompt is text but there is no tokenizer to encode it (the model "
                         "has none): pass token ids (a list of ints or a tensor), or set "
                         "model.tokenizer")
    if isinstance(prompt, str):
        return [int(i) for i in tokenizer.encode(prompt)]
    return [[int(i) for i in tokenizer.encode(p)] for p in prompt]


def batch_prompts(prompt_ids, pad_id: int, attention_mask=None, device=None
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, Lp) ids and a (B, Lp) bool key mask (None when nothing is padded).

    Accepts a 1-D or 2-D tensor, a list of ints (one prompt) or a list of 1-D prompts of any
    lengths; the latter are left-padded so that every prompt ends where generation starts.
    Text must be encoded first (encode_prompts; the samplers do it with model.tokenizer)."""
    if is_text(prompt_ids):
        raise QpassError("the prompt is text: encode it with the model's tokenizer first "
                         "(qpass.sampling.encode_prompts(model.tokenizer, prompt)), or pass "
                         "token ids")
    if isinstance(prompt_ids, torch.Tensor):
        ids = prompt_ids.long()
        ids = ids[None] if ids.dim() == 1 else ids
        if ids.dim() != 2:
            raise QpassError(f"prompt_ids must be 1-D or 2-D, got shape {tuple(prompt_ids.shape)}")
        mask = None
        if attention_mask is not None:
            mask = torch.as_tensor(attention_mask).to(torch.bool).reshape(ids.shape)
    else:
        rows = list(prompt_ids)
        if rows and isinstance(rows[0], numbers.Integral):
            rows = [rows]  # a single prompt given as a list of ints
        if attention_mask is not None:
            raise QpassError("attention_mask is only accepted with a tensor of prompts; a list "
                             "of prompts is padded and masked automatically")
        rows = [torch.as_tensor(r, dtype=torch.long).reshape(-1) for r in rows]
        if not rows:
            raise QpassError("no prompts given")
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.bool)
        for i, r in enumerate(rows):
            if len(r):
                ids[i, width - len(r):] = r
                mask[i, width - len(r):] = True
    if mask is not None and bool(mask.all()):
        mask = None  # unpadded: call the denoiser without a mask (not every graph accepts one)
    if device is not None:
        ids = ids.to(device)
        mask = mask.to(device) if mask is not None else None
    return ids, mask


def extend_mask(prompt_mask: torch.Tensor | None, gen_length: int) -> torch.Tensor | None:
    """Key mask over prompt + generation: generated positions are always real tokens."""
    if prompt_mask is None:
        return None
    ones = torch.ones(prompt_mask.shape[0], gen_length, dtype=torch.bool, device=prompt_mask.device)
    return torch.cat([prompt_mask, ones], dim=1)


def denoise(model, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """Logits of one forward pass; the mask is passed positionally and only when needed."""
    if key_mask is None:
        out = model(x)
    else:
        try:
            out = model(x, key_mask)
        except TypeError as e:
            raise QpassError(f"this denoiser does not accept an attention mask ({e}); give "
                             "prompts of equal length") from None
    if isinstance(out, (tuple, list)):
        out = out[0]
    return getattr(out, "logits", out)


def make_generator(seed: int, device: torch.device) -> torch.Generator:
    # A local generator: sampling never touches (or depends on) the global RNG.
    return torch.Generator(device=device).manual_seed(int(seed))


@contextlib.contextmanager
def step_progress(total: int, enabled: bool | None, label: str,
                  unit: str = "steps") -> Iterator[Callable[[], None]]:
    """Yields advance(): the loop's steps as a qpass.display.progress phase (enabled True: bars on a
    terminal; None: as the enclosing step or the command line says; False: silent)."""
    with progress_lines.phase(label, total=total, unit=unit, enabled=enabled) as ph:
        yield ph.advance


def top_k_per_row(scores: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Bool (B, N): the k[b] highest scores of each row (ties go to the lower index)."""
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return rank < k.to(scores.device)[:, None]


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of running text: qpass byte tokenizer or a transformers one (no BOS/EOS)."""
    if hasattr(tokenizer, "batch_decode"):  # transformers
        return list(tokenizer.encode(text, add_special_tokens=False))
    return list(tokenizer.encode(text))


def decode_text(tokenizer, ids) -> str:
    """Text of token ids with special tokens dropped."""
    ids = [int(i) for i in ids]
    if hasattr(tokenizer, "batch_decode"):
        return tokenizer.decode(ids, skip_special_tokens=True)
    return tokenizer.decode(ids)


def forbid_mask(logits: torch.Tensor, mask_id: int) -> torch.Tensor:
    """Logits with the mask token excluded from proposals. A trained dLLM gives it ~0
    probability anyway; a random or badly quantized one may not, and a committed mask id
    would look like a still-masked position and break the schedule."""
    if mask_id < logits.shape[-1]:
        logits = logits.clone()
        logits[..., mask_id] = float("-inf")
    return logits


def start_canvas(model, prompt_ids, gen_length: int, attention_mask, ids: SpecialIds):
    """The sampling canvas: (left-padded) prompt followed by `gen_length` mask tokens; a text
    prompt is encoded with model.tokenizer (encode_prompts).
    Returns (x, prompt, prompt_mask, key_mask, device)."""
    device = model_device(model)
    prompt_ids = encode_prompts(getattr(model, "tokenizer", None), prompt_ids)
    prompt, prompt_mask = batch_prompts(prompt_ids, ids.pad, attention_mask, device)
    B, Lp = prompt.shape
    check_length(model, Lp + gen_length)
    x = torch.cat([prompt, prompt.new_full((B, gen_length), ids.mask)], dim=1)
    return x, prompt, prompt_mask, extend_mask(prompt_mask, gen_length), device

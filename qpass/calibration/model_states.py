"""Calibration states for a model captured as it is (DESIGN §5): the inputs its own sampler
feeds its forward, made from clean calibration windows — chosen by the forward's signature
and config, never by the family's name.

  block diffusion with an encoder and a canvas decoder (`decoder_input_ids`, DiffusionGemma):
      each window is a prompt followed by one canvas of `canvas_length` tokens; the encoder
      reads the prompt, the decoder a canvas noised as the sampler noises it (each token
      replaced by a uniformly random one with probability t, t ~ U(0.05, 1) per row), once
      without self-conditioning (a first step) and once with the logits of that first step
      as `self_conditioning_logits` (every later step) — not the causal encoder alone
  masked diffusion (a mask token in the config or tokenizer: LLaDA2, LLaDA-MoE, SDAR): each
      row masked at its own ratio t, as CalibrationSet's "diffusion" masking
  otherwise (an autoregressive model): the clean windows"""
from __future__ import annotations

import inspect

import torch

from ..errors import CalibrationError

NOISE_MIN = 0.05


def _config_value(config, *names):
    for src in (config, getattr(config, "text_config", None)):
        for n in names:
            v = getattr(src, n, None) if src is not None else None
            if v is not None:
                return v
    return None


def kind_of(model) -> str:
    # an AsIsModel forwards to the model's own forward: read that one's signature
    params = inspect.signature(getattr(model, "own_forward", model.forward)).parameters
    if "decoder_input_ids" in params and _config_value(model.config, "canvas_length"):
        return "block_diffusion"
    if mask_id_of(model) is not None:
        return "masked_diffusion"
    return "autoregressive"


def mask_id_of(model) -> int | None:
    v = _config_value(model.config, "mask_token_id")
    if v is None:
        v = getattr(getattr(model, "tokenizer", None), "mask_token_id", None)
    return int(v) if v is not None else None


def window_length(model, wanted: int = 64) -> int:
    """Calibration window length: a prompt plus one canvas for block diffusion."""
    canvas = _config_value(model.config, "canvas_length")
    return wanted + int(canvas) if kind_of(model) == "block_diffusion" else wanted


def model_states(model, clean: torch.Tensor, batch_size: int = 8, seed: int = 0) -> list[dict]:
    """[forward kwargs] for `model` from clean id windows (rows, L) (module doc)."""
    if clean.dim() != 2 or clean.shape[0] == 0:
        raise CalibrationError(f"calibration windows must be a non-empty (rows, length) id "
                               f"tensor, got shape {tuple(clean.shape)}")
    g = torch.Generator().manual_seed(seed)
    kind = kind_of(model)
    vocab = int(_config_value(model.config, "vocab_size"))
    out = []
    for b in range(0, clean.shape[0], batch_size):
        rows = clean[b:b + batch_size]
        t = NOISE_MIN + (1 - NOISE_MIN) * torch.rand(rows.shape[0], 1, generator=g)
        if kind == "block_diffusion":
            out += _block_states(model, rows, t, vocab, g)
        elif kind == "masked_diffusion":
            hit = torch.rand(rows.shape, generator=g) < t
            out.append({"input_ids": torch.where(hit, mask_id_of(model), rows)})
        else:
            out.append({"input_ids": rows})
    return out


def _block_states(model, rows, t, vocab: int, g) -> list[dict]:
    canvas = int(_config_value(model.config, "canvas_length"))
    if rows.shape[1] <= canvas:
        raise CalibrationError(f"calibration windows of {rows.shape[1]} tokens leave no prompt "
                               f"before a canvas of {canvas}; use longer windows")
    prompt, clean = rows[:, :-canvas], rows[:, -canvas:]
    noise = torch.randint(0, vocab, clean.shape, generator=g)
    first = torch.where(torch.rand(clean.shape, generator=g) < t, noise, clean)
    again = torch.where(torch.rand(clean.shape, generator=g) < t * 0.5, noise, clean)
    with torch.no_grad():
        logits = model(input_ids=prompt, decoder_input_ids=first).logits
    return [{"input_ids": prompt, "decoder_input_ids": first},
            {"input_ids": prompt, "decoder_input_ids": again,
             "self_conditioning_logits": logits.to(_dtype(model))}]


def _dtype(model) -> torch.dtype:
    p = next(iter(model.parameters()), None)
    return p.dtype if p is not None else torch.float32

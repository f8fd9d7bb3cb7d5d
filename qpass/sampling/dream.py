"""Dream's diffusion sampler (Ye et al. 2025, `diffusion_generate`, v0: no blocks).

Time runs from t = 1 (all masked) to eps over `steps` steps. Per step from t to s:
- origin: every masked position is revealed independently with probability 1 - s/t (the
  exact reverse process of the masked diffusion);
- maskgit_plus / topk_margin / entropy: int(n_masked · (1 - s/t)) positions are revealed (all
  of them at the last step), those with the highest confidence: top-1 probability, top-1
  minus top-2 probability, or negative entropy of the proposal distribution. With alg_temp > 0
  the positions are drawn multinomially from softmax(confidence / alg_temp) instead.

Logit shift: Dream is trained so that the hidden state at i−1 predicts token i. qpass's Dream
denoiser applies that shift inside forward, so the logits it returns are aligned (position i
predicts token i) and this sampler uses them as returned, without shifting again. A denoiser
that returns raw, unshifted logits must be wrapped to shift them before it is sampled."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import QpassError
from .common import (denoise, forbid_mask, make_generator, special_ids, start_canvas,
                     step_progress)

ALGS = ("origin", "maskgit_plus", "topk_margin", "entropy")


def _filter(logits: torch.Tensor, temperature: float, top_p: float | None,
            top_k: int | None) -> torch.Tensor:
    """Tempered logits with everything outside top-k / the top-p nucleus set to -inf."""
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    if temperature > 0:
        logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = F.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Drop a token when the mass before it already exceeds top_p (the top-1 always stays).
        drop_sorted = (cum - F.softmax(sorted_logits, dim=-1)) > top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def propose(logits: torch.Tensor, temperature: float, top_p, top_k, gen: torch.Generator,
            confidence: str = "maskgit_plus") -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, confidence) for (..., V) logits: greedy at temperature 0, else sampled."""
    probs = F.softmax(_filter(logits, temperature, top_p, top_k), dim=-1)
    if temperature > 0:
        flat = probs.reshape(-1, probs.shape[-1])
        tokens = torch.multinomial(flat, 1, generator=gen).reshape(probs.shape[:-1])
        top1 = probs.gather(-1, tokens[..., None]).squeeze(-1)
    else:
        top1, tokens = probs.max(dim=-1)
    if confidence == "topk_margin":
        two = torch.topk(probs, 2, dim=-1).values
        return tokens, two[..., 0] - two[..., 1]
    if confidence == "entropy":
        return tokens, (probs * torch.log(probs.clamp_min(1e-30))).sum(dim=-1)
    return tokens, top1


@torch.no_grad()
def generate_dream(model, prompt_ids, gen_length: int = 128, steps: int = 128,
                   alg: str = "origin", temperature: float = 0.0, top_p: float | None = None,
                   top_k: int | None = None, eps: float = 1e-3, alg_temp: float | None = None,
                   mask_id: int | None = None, pad_id: int | None = None,
                   attention_mask=None, seed: int = 0, progress: bool = False) -> torch.Tensor:
    """Generate `gen_length` tokens after each prompt; returns (B, Lp + gen_length) ids.

    Prompts as in `generate_llada` (tensor + optional attention_mask, or a list of 1-D
    prompts, left-padded). `model` returns logits already aligned (see the module docstring).
    Randomness (origin's reveal coin flips, sampling at temperature > 0, alg_temp selection)
    comes from a local generator seeded with `seed`. The mask id is never proposed."""
    if alg not in ALGS:
        raise QpassError(f"alg must be one of {ALGS}, got '{alg}'")
    if gen_length <= 0 or steps <= 0:
        raise QpassError("gen_length and steps must be positive")
    if not 0 < eps < 1:
        raise QpassError(f"eps must be in (0, 1), got {eps}")
    ids = special_ids(model, mask_id=mask_id, pad_id=pad_id)
    x, prompt, prompt_mask, key_mask, device = start_canvas(model, prompt_ids, gen_length,
                                                            attention_mask, ids)
    B, Lp = prompt.shape
    gen = make_generator(seed, device)
    timesteps = torch.linspace(1.0, eps, steps + 1, dtype=torch.float64).tolist()

    with step_progress(steps, progress, f"dream/{alg}") as advance:
        for i in range(steps):
            masked = x[:, Lp:] == ids.mask
            if not bool(masked.any()):
                break
            logits = forbid_mask(denoise(model, x, key_mask)[:, Lp:], ids.mask)
            t, s = timesteps[i], timesteps[i + 1]
            last = i == steps - 1
            if alg == "origin":
                p_reveal = 1.0 if last else 1.0 - s / t
                flips = torch.rand(masked.shape, generator=gen, device=device, dtype=torch.float64)
                tokens, _ = propose(logits, temperature, top_p, top_k, gen)
                commit = masked & (flips < p_reveal)
            else:
                tokens, conf = propose(logits, temperature, top_p, top_k, gen, confidence=alg)
                conf = conf.to(torch.float64).masked_fill(~masked, float("-inf"))
                # Rows share one count: every row starts with gen_length masks and loses the
                # same number per step, so the batch average is each row's own count.
                n_masked = masked.sum().item() / B
                k = int(n_masked) if last else int(n_masked * (1.0 - s / t))
                commit = torch.zeros_like(masked)
                if k > 0:
                    if alg_temp:
                        weights = F.softmax(conf / alg_temp, dim=-1)
                        chosen = torch.multinomial(weights, k, generator=gen)
                    else:
                        chosen = torch.topk(conf, k, dim=-1).indices
                    commit.scatter_(1, chosen, True)
                    commit &= masked
            x[:, Lp:] = torch.where(commit, tokens, x[:, Lp:])
            advance()
    return x

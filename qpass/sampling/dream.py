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
from .cache import BlockForward, StepStats, check_policy, threshold_commit
from .common import forbid_mask, make_generator, special_ids, start_canvas, step_progress

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
                   attention_mask=None, seed: int = 0, progress: bool | None = False,
                   block_length: int | None = None, cache: str = "none",
                   threshold: float | None = None, refresh_every: int | None = None,
                   stats: StepStats | None = None) -> torch.Tensor:
    """Generate `gen_length` tokens after each prompt; returns (B, Lp + gen_length) ids.

    Prompts as in `generate_llada` (tensor + optional attention_mask, or a list of 1-D
    prompts, left-padded). `model` returns logits already aligned (see the module docstring).
    Randomness (origin's reveal coin flips, sampling at temperature > 0, alg_temp selection)
    comes from a local generator seeded with `seed`. The mask id is never proposed.
    block_length (Fast-dLLM's Dream variant; None = one block, Dream v0): blocks are generated
    left to right, each with steps / n_blocks steps of its own schedule from t = 1 to eps.
    cache / refresh_every / threshold / stats as in `generate_llada` (qpass.sampling.cache);
    threshold decoding ranks by the top-1 probability whatever `alg` is."""
    if alg not in ALGS:
        raise QpassError(f"alg must be one of {ALGS}, got '{alg}'")
    if gen_length <= 0 or steps <= 0:
        raise QpassError("gen_length and steps must be positive")
    if not 0 < eps < 1:
        raise QpassError(f"eps must be in (0, 1), got {eps}")
    check_policy(cache, threshold, refresh_every)
    block_length = gen_length if block_length is None else int(block_length)
    if block_length <= 0 or gen_length % block_length:
        raise QpassError(f"block_length {block_length} must be positive and divide gen_length "
                         f"{gen_length}")
    n_blocks = gen_length // block_length
    if threshold is None and steps % n_blocks:
        raise QpassError(f"steps {steps} cannot be split evenly over {n_blocks} blocks; use a "
                         f"multiple of {n_blocks}")
    ids = special_ids(model, mask_id=mask_id, pad_id=pad_id)
    x, prompt, prompt_mask, key_mask, device = start_canvas(model, prompt_ids, gen_length,
                                                            attention_mask, ids)
    B, Lp = prompt.shape
    gen = make_generator(seed, device)
    spb = steps // n_blocks
    timesteps = torch.linspace(1.0, eps, spb + 1, dtype=torch.float64).tolist()
    stats = stats if stats is not None else StepStats()
    fwd = BlockForward(model, cache, refresh_every, logit_shift=True, stats=stats)

    total = n_blocks * (block_length if threshold is not None else spb)
    with step_progress(total, progress, f"sampling (dream/{alg})") as advance:
        for blk in range(n_blocks):
            lo, hi = Lp + blk * block_length, Lp + (blk + 1) * block_length
            i = 0
            while threshold is not None or i < spb:
                masked = x[:, lo:hi] == ids.mask
                if not bool(masked.any()):
                    break
                logits = forbid_mask(fwd.logits(x, key_mask, lo, hi, i), ids.mask)
                if threshold is not None:
                    tokens, conf = propose(logits, temperature, top_p, top_k, gen)
                    commit = threshold_commit(conf.to(torch.float64), masked, threshold)
                else:
                    tokens, commit = _select(logits, masked, alg, timesteps[i], timesteps[i + 1],
                                             i == spb - 1, temperature, top_p, top_k, alg_temp,
                                             gen, B)
                x[:, lo:hi] = torch.where(commit, tokens, x[:, lo:hi])
                stats.steps += 1
                stats.count_rows(masked)
                stats.committed_per_step.append(int(commit.sum(dim=1)[masked.any(dim=1)].min()))
                i += 1
                advance()
    return x


def _select(logits, masked, alg, t, s, last, temperature, top_p, top_k, alg_temp, gen, B):
    """(proposed tokens, positions to commit) of one step of Dream's schedule from t to s."""
    if alg == "origin":
        p_reveal = 1.0 if last else 1.0 - s / t
        flips = torch.rand(masked.shape, generator=gen, device=masked.device, dtype=torch.float64)
        tokens, _ = propose(logits, temperature, top_p, top_k, gen)
        return tokens, masked & (flips < p_reveal)
    tokens, conf = propose(logits, temperature, top_p, top_k, gen, confidence=alg)
    conf = conf.to(torch.float64).masked_fill(~masked, float("-inf"))
    # Rows share one count: every row starts with the same number of masks and loses the
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
    return tokens, commit

"""LLaDA's semi-autoregressive low-confidence remasking sampler (Nie et al. 2025, generate.py).

The answer starts fully masked after the prompt and is produced block by block, left to
right. Inside a block, every step runs the denoiser on the whole sequence, proposes a token for
each masked position and commits the most confident ones; how many follows the linear noise
schedule, so every step of a block commits about the same number of tokens."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import QpassError
from .cache import BlockForward, StepStats, check_policy, threshold_commit
from .common import forbid_mask, make_generator, special_ids, start_canvas, step_progress, top_k_per_row

REMASKING = ("low_confidence", "random")


def transfer_schedule(mask_counts: torch.Tensor, steps: int) -> torch.Tensor:
    """(B, steps) tokens to commit per step: count // steps each, the remainder one by one
    over the first steps (LLaDA's linear schedule: equal expected progress per step)."""
    counts = mask_counts.long().reshape(-1, 1)
    base, rem = counts // steps, counts % steps
    step_idx = torch.arange(steps, device=counts.device)[None, :]
    return base + (step_idx < rem).long()


def gumbel_argmax(logits: torch.Tensor, temperature: float, gen: torch.Generator) -> torch.Tensor:
    """argmax(exp(l) / (-log u)^T) as in LLaDA, i.e. a sample of softmax(l / T).

    Computed in float64 (low-precision Gumbel noise hurts generation quality, arXiv:2409.02908)
    and in log space, l - T·log(-log u), which has the same argmax and cannot overflow."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.to(torch.float64)
    u = torch.rand(logits.shape, generator=gen, device=logits.device, dtype=torch.float64)
    return (logits - temperature * torch.log(-torch.log(u))).argmax(dim=-1)


def commit_step(logits: torch.Tensor, cur: torch.Tensor, mask_id: int, temperature: float,
                gen: torch.Generator, remasking: str, threshold: float | None,
                k: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One denoising step on a block: (new block ids, committed positions). Proposes a token
    per position, ranks the masked ones by confidence (softmax probability of the untempered
    logits) or at random, commits the top k[b] of each row — or, with `threshold`, every one
    at or above it (at least one), or the top k[b] when fewer than k[b] reach it and k is
    given (LLaDA2's rule)."""
    masked = cur == mask_id
    logits = forbid_mask(logits, mask_id)
    x0 = gumbel_argmax(logits, temperature, gen)
    if remasking == "low_confidence":
        probs = F.softmax(logits.to(torch.float64), dim=-1)
        conf = probs.gather(-1, x0[..., None]).squeeze(-1)
    else:
        conf = torch.rand(x0.shape, generator=gen, device=x0.device, dtype=torch.float64)
    top = None if k is None else top_k_per_row(conf.masked_fill(~masked, float("-inf")), k) & masked
    if threshold is None:
        commit = top
    else:
        commit = threshold_commit(conf, masked, threshold)
        if top is not None:   # too few above the threshold: the schedule's count instead
            short = commit.sum(dim=1) < top.sum(dim=1)
            commit = torch.where(short[:, None], top, commit)
    return torch.where(commit, x0, cur), commit


def _guided_logits(fwd: BlockForward, x, key_mask, prompt_real, mask_id, cfg_scale, lo, hi, i):
    if cfg_scale <= 0:
        return fwd.logits(x, key_mask, lo, hi, i)
    # Unconditional pass: the prompt is masked (padding stays padding).
    un_x = x.clone()
    un_x[:, :prompt_real.shape[1]][prompt_real] = mask_id
    both_mask = None if key_mask is None else torch.cat([key_mask, key_mask])
    cond, uncond = fwd.logits(torch.cat([x, un_x]), both_mask, lo, hi, i).chunk(2)
    return uncond + (cfg_scale + 1) * (cond - uncond)


def _eos_done(gen_part: torch.Tensor, mask_id: int, eos_id: int) -> torch.Tensor:
    """Per row: an EOS is committed and nothing before the first EOS is still masked."""
    is_eos = gen_part == eos_id
    first = is_eos.int().argmax(dim=1, keepdim=True)
    masked_before = (gen_part == mask_id).long().cumsum(dim=1).gather(1, first).squeeze(1)
    return is_eos.any(dim=1) & (masked_before == 0)


DEFAULT_BLOCK_LENGTH = 32


@torch.no_grad()
def generate_llada(model, prompt_ids, gen_length: int = 128, steps: int | None = 128,
                   block_length: int | None = None, temperature: float = 0.0,
                   remasking: str = "low_confidence", cfg_scale: float = 0.0,
                   mask_id: int | None = None, eos_id: int | None = None,
                   pad_id: int | None = None, stop_at_eos: bool = False,
                   attention_mask=None, seed: int = 0, progress: bool | None = False,
                   cache: str = "none", threshold: float | None = None,
                   refresh_every: int | None = None, stats: StepStats | None = None
                   ) -> torch.Tensor:
    """Generate `gen_length` tokens after each prompt; returns (B, Lp + gen_length) ids.

    prompt_ids: (B, Lp) / (Lp,) tensor (with an optional (B, Lp) `attention_mask`, True = real
    token), or a list of 1-D prompts of different lengths, which are left-padded with the pad
    id and masked from attention; the generated tokens are then `out[:, Lp_max:]`.
    steps are split evenly over the gen_length // block_length blocks (block_length None, the
    default: 32 where it divides gen_length, else one block; steps None: gen_length). A text
    prompt (a str or a list of str) is encoded with model.tokenizer as `qpass generate
    --prompt` does. remasking
    "low_confidence" commits the masked positions whose proposed token has the highest
    softmax probability (of the untempered logits, as in LLaDA); "random" ranks them by a
    uniform random score. Positions outside the current block are never committed.
    temperature > 0 samples proposals with Gumbel noise; cfg_scale > 0 adds classifier-free
    guidance, logits = un + (cfg + 1)(cond - un), the unconditional pass masking the prompt.
    stop_at_eos: once every row has committed an EOS with nothing masked before it, stop and
    fill the remaining masked positions with EOS (saves steps; the kept text is unchanged).
    Randomness comes from a local generator seeded with `seed` (the global RNG is untouched);
    temperature 0 with low_confidence remasking is deterministic.
    The mask id itself is never proposed (see common.forbid_mask).
    Works on a Dream-style (logit-shift) denoiser too: logits are used as the model returns
    them, with position i predicting token i.
    cache "prefix" / "dual" (qpass.sampling.cache, Fast-dLLM): the first step of each block
    (and every `refresh_every` steps) is a full forward that refreshes the K/V cache; the
    other steps recompute only block + suffix (prefix) or the block (dual). threshold: each
    step commits every masked position of the block whose confidence reaches it (at least
    one), `steps` is then unused; needs low_confidence remasking. `stats` (a StepStats) is
    filled with the forward passes and rows computed."""
    if block_length is None:       # the default where it divides gen_length, else one block
        block_length = DEFAULT_BLOCK_LENGTH if gen_length % DEFAULT_BLOCK_LENGTH == 0 \
            else gen_length
    steps = gen_length if steps is None else steps
    check_policy(cache, threshold, refresh_every)
    if threshold is not None and remasking != "low_confidence":
        raise QpassError("threshold decoding ranks by confidence: use remasking='low_confidence'")
    if remasking not in REMASKING:
        raise QpassError(f"remasking must be one of {REMASKING}, got '{remasking}'")
    if gen_length <= 0 or block_length <= 0 or steps <= 0:
        raise QpassError("gen_length, block_length and steps must be positive")
    if gen_length % block_length:
        raise QpassError(f"gen_length {gen_length} is not a multiple of block_length "
                         f"{block_length}; choose block_length dividing gen_length")
    n_blocks = gen_length // block_length
    if threshold is None and steps % n_blocks:
        raise QpassError(f"steps {steps} cannot be split evenly over {n_blocks} blocks "
                         f"(gen_length {gen_length} / block_length {block_length}); use a "
                         f"multiple of {n_blocks}")
    if temperature < 0:
        raise QpassError(f"temperature must be >= 0, got {temperature}")
    ids = special_ids(model, mask_id=mask_id, pad_id=pad_id, eos_id=eos_id)
    if stop_at_eos and ids.eos is None:
        raise QpassError("stop_at_eos needs an EOS id: pass eos_id=")
    x, prompt, prompt_mask, key_mask, device = start_canvas(model, prompt_ids, gen_length,
                                                            attention_mask, ids)
    B, Lp = prompt.shape
    prompt_real = prompt_mask if prompt_mask is not None else torch.ones_like(prompt, dtype=torch.bool)
    gen = make_generator(seed, device)
    steps_per_block = steps // n_blocks
    stats = stats if stats is not None else StepStats()
    fwd = BlockForward(model, cache, refresh_every, stats=stats)

    total = n_blocks * (block_length if threshold is not None else steps_per_block)
    with step_progress(total, progress, "sampling (llada)") as advance:
        for b in range(n_blocks):
            lo, hi = Lp + b * block_length, Lp + (b + 1) * block_length
            schedule = transfer_schedule((x[:, lo:hi] == ids.mask).sum(dim=1), steps_per_block)
            i = 0
            while True:
                masked = x[:, lo:hi] == ids.mask
                if threshold is None and i == steps_per_block or \
                        threshold is not None and not bool(masked.any()):
                    break
                # Only the current block can be committed, so only its logits are needed.
                logits = _guided_logits(fwd, x, key_mask, prompt_real, ids.mask, cfg_scale, lo, hi, i)
                x[:, lo:hi], commit = commit_step(logits, x[:, lo:hi], ids.mask, temperature, gen,
                                                  remasking, threshold,
                                                  None if threshold is not None else schedule[:, i])
                stats.steps += 1
                stats.count_rows(masked)
                stats.committed_per_step.append(int(commit.sum(dim=1)[masked.any(dim=1)].min())
                                                if bool(masked.any()) else 0)
                i += 1
                advance()
                if stop_at_eos and bool(_eos_done(x[:, Lp:], ids.mask, ids.eos).all()):
                    tail = x[:, Lp:]
                    x[:, Lp:] = tail.masked_fill(tail == ids.mask, ids.eos)
                    return x
    return x

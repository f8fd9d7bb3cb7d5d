"""Block-diffusion sampler (SDAR-style): for denoisers whose attention is causal between blocks
of `attn_block_size` positions and bidirectional inside one.

The answer is produced one attention block at a time, left to right. Because no position sees
a later block, the canvas only reaches the end of the current block (later masked positions
could not change anything, so they are not computed); inside the block, each step proposes a
token for every masked position and commits the most confident ones (LLaDA's low-confidence
remasking, or confidence-threshold parallel decoding). Blocks are aligned with the model's
attention blocks over canvas positions, so the block holding the prompt's end is finished
first."""
from __future__ import annotations

import torch

from ..errors import QpassError
from .cache import StepStats
from .common import denoise, make_generator, special_ids, start_canvas, step_progress
from .llada import REMASKING, _eos_done, commit_step, transfer_schedule


def block_size_of(model) -> int:
    """The block length of a block-causal denoiser: qpass's `attn_block_size`, or the
    `block_size` of a model captured as it is (SDAR's config)."""
    cfg = getattr(model, "config", None)
    size = getattr(cfg, "attn_block_size", 0)
    if not size and getattr(model, "qpass_as_is", None) is not None:
        size = getattr(cfg, "block_size", 0)
    return int(size or 0)


@torch.no_grad()
def generate_block_diffusion(model, prompt_ids, gen_length: int = 128,
                             steps: int | None = None, temperature: float = 0.0,
                             remasking: str = "low_confidence", threshold: float | None = None,
                             mask_id: int | None = None, eos_id: int | None = None,
                             pad_id: int | None = None, stop_at_eos: bool = False,
                             attention_mask=None, seed: int = 0, progress: bool | None = False,
                             stats: StepStats | None = None, block_size: int | None = None,
                             cache: str = "none", refresh_every: int | None = None
                             ) -> torch.Tensor:
    """Generate `gen_length` tokens after each prompt; returns (B, Lp + gen_length) ids.

    block_size: the model's `config.attn_block_size` unless given. steps: denoising steps in
    all (default gen_length, one token per step), shared by the blocks in proportion to their
    length (at least one each). threshold: each step commits every masked position whose
    confidence exceeds it when they are at least the schedule's count for the step, else the
    schedule's count of most confident ones (LLaDA2's rule; with the default steps the
    schedule is one per step, so: all above the threshold, at least one). Prompts as in generate_llada
    (left padding + attention_mask); deterministic at temperature 0. Finished blocks are
    recomputed each step: cache must be "none" (an exact block cache is not built yet)."""
    if cache != "none" or refresh_every is not None:
        raise QpassError("the block-diffusion sampler recomputes finished blocks (no K/V cache "
                         "yet): use cache='none' without refresh_every")
    bs = block_size if block_size is not None else block_size_of(model)
    if bs <= 0:
        raise QpassError("block diffusion needs a block-causal denoiser: this model's config has "
                         "no attn_block_size; use the LLaDA or Dream sampler")
    if remasking not in REMASKING:
        raise QpassError(f"remasking must be one of {REMASKING}, got '{remasking}'")
    if threshold is not None and (remasking != "low_confidence" or not 0 < threshold <= 1):
        raise QpassError("threshold decoding needs remasking='low_confidence' and a threshold "
                         "in (0, 1]")
    steps = gen_length if steps is None else steps
    if gen_length <= 0 or steps <= 0 or temperature < 0:
        raise QpassError("gen_length and steps must be positive, temperature >= 0")
    ids = special_ids(model, mask_id=mask_id, pad_id=pad_id, eos_id=eos_id)
    if stop_at_eos and ids.eos is None:
        raise QpassError("stop_at_eos needs an EOS id: pass eos_id=")
    x, prompt, _, key_mask, device = start_canvas(model, prompt_ids, gen_length,
                                                  attention_mask, ids)
    Lp, end = prompt.shape[1], prompt.shape[1] + gen_length
    gen = make_generator(seed, device)
    stats = stats if stats is not None else StepStats()
    bounds = [(lo, min((lo // bs + 1) * bs, end)) for lo in _starts(Lp, end, bs)]
    with step_progress(len(bounds), progress, "sampling (block diffusion)", "blocks") as advance:
        for lo, hi in bounds:
            n_steps = max(1, round(steps * (hi - lo) / gen_length))
            masked = x[:, lo:hi] == ids.mask
            schedule = transfer_schedule(masked.sum(dim=1), n_steps)
            i = 0
            while bool(masked.any()) and (threshold is not None or i < n_steps):
                logits = denoise(model, x[:, :hi], None if key_mask is None else key_mask[:, :hi])
                k = schedule[:, min(i, n_steps - 1)].clamp(min=1)
                x[:, lo:hi], commit = commit_step(logits[:, lo:hi], x[:, lo:hi], ids.mask,
                                                  temperature, gen, remasking, threshold, k)
                stats.nfe += 1
                stats.rows += x.shape[0] * hi
                stats.steps += 1
                stats.count_rows(masked)
                stats.committed_per_step.append(int(commit.sum(dim=1)[masked.any(dim=1)].min()))
                masked = x[:, lo:hi] == ids.mask
                i += 1
            advance()
            if stop_at_eos and bool(_eos_done(x[:, Lp:hi], ids.mask, ids.eos).all()):
                x[:, hi:] = ids.eos
                return x
    return x


def _starts(Lp: int, end: int, bs: int) -> list[int]:
    """Where each generated block starts: Lp, then every multiple of bs up to `end`."""
    return [Lp] + list(range((Lp // bs + 1) * bs, end, bs))

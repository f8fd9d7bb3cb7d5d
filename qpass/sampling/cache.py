"""Cache policies and parallel decoding shared by the samplers (DESIGN §13, Fast-dLLM).

cache="none"    every step is a full forward (the samplers of LLaDA and Dream as published);
cache="prefix"  at each refresh (the first step of a block, and every `refresh_every` steps)
                one full forward records the K/V of every layer; the other steps of the block
                recompute only the rows from the block start to the end (block + suffix) and
                read the prefix K/V from the cache;
cache="dual"    as prefix, but the suffix K/V are read from the cache too: a step recomputes
                only the block's rows (bidirectional within the block).
The cached K/V are stale by design (they were computed before the tokens committed since the
refresh), which is Fast-dLLM's approximation; a refresh every step gives the uncached sampler.

Parallel decoding (`threshold=`): a step commits every masked position of the block whose
confidence reaches the threshold, and at least the single most confident one, so a block
needs between 1 and block_length steps."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .. import kvcache
from ..errors import QpassError
from .common import denoise

CACHES = ("none", "prefix", "dual")


def check_policy(cache: str, threshold, refresh_every) -> None:
    if cache not in CACHES:
        raise QpassError(f"cache must be one of {CACHES}, got {cache!r}")
    if threshold is not None and not 0.0 < float(threshold) <= 1.0:
        raise QpassError(f"threshold must be in (0, 1], got {threshold}")
    if refresh_every is not None and int(refresh_every) < 1:
        raise QpassError(f"refresh_every must be a positive number of steps, got {refresh_every}")


@dataclass
class StepStats:
    """What a sampling run cost: forward passes (NFE), of which full refreshes, rows computed
    (one row = one position of one batch row through the whole network), steps."""
    nfe: int = 0
    refreshes: int = 0
    rows: int = 0
    steps: int = 0
    committed_per_step: list = field(default_factory=list)
    # per batch row, the steps at which it still had masked positions in the block: its own
    # forwards (a finished row rides along in a batch but needs no forward of its own)
    row_steps: list = field(default_factory=list)

    def count_rows(self, masked: torch.Tensor) -> None:
        active = masked.any(dim=1).long().tolist()
        if len(self.row_steps) < len(active):
            self.row_steps += [0] * (len(active) - len(self.row_steps))
        self.row_steps = [n + a for n, a in zip(self.row_steps, active)]

    def to_dict(self) -> dict:
        return {"nfe": self.nfe, "refreshes": self.refreshes, "rows": self.rows,
                "steps": self.steps, "min_committed_per_step": min(self.committed_per_step,
                                                                    default=0)}


class BlockForward:
    """Logits of the active block's rows under one cache policy, for one canvas."""

    def __init__(self, model, policy: str = "none", refresh_every: int | None = None,
                 logit_shift: bool = False, stats: StepStats | None = None):
        self.model, self.policy, self.refresh_every = model, policy, refresh_every
        # Dream's logits at i come from the hidden state at i − 1: the window starts one earlier
        self.shift = 1 if logit_shift else 0
        self.stats = stats if stats is not None else StepStats()
        self.cache = kvcache.KVCache() if policy != "none" else None

    def needs_refresh(self, step_in_block: int) -> bool:
        if self.cache is None or step_in_block == 0:
            return True
        return self.refresh_every is not None and step_in_block % self.refresh_every == 0

    def logits(self, x: torch.Tensor, key_mask, lo: int, hi: int, step_in_block: int):
        """(B, hi − lo, V) logits for rows [lo, hi) of canvas x (B, L)."""
        B, L = x.shape
        self.stats.nfe += 1
        if self.needs_refresh(step_in_block):
            self.stats.rows += B * L
            if self.cache is None:
                return denoise(self.model, x, key_mask)[:, lo:hi]
            self.stats.refreshes += 1
            with self.cache.refresh(key_mask):
                return denoise(self.model, x, key_mask)[:, lo:hi]
        a = max(lo - self.shift, 0)
        b = L if self.policy == "prefix" else hi
        self.stats.rows += B * (b - a)
        with self.cache.window(a, b):
            # generated rows are real tokens: the key mask over the whole canvas is the cache's
            out = denoise(self.model, x[:, a:b], None)
        return out[:, lo - a:hi - a]


def threshold_commit(conf: torch.Tensor, masked: torch.Tensor, threshold: float) -> torch.Tensor:
    """Bool (B, N): masked positions with confidence ≥ threshold, plus each row's most
    confident masked position (so every row with a masked position commits at least one)."""
    conf = conf.masked_fill(~masked, float("-inf"))
    best = torch.zeros_like(masked)
    best.scatter_(1, conf.argmax(dim=1, keepdim=True), True)
    return masked & ((conf >= threshold) | best)

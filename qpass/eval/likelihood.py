"""Conditional log-likelihood of a continuation under a masked diffusion model (LLaDA's
Monte-Carlo estimator, get_log_likelihood.py) and multiple choice built on it.

One draw: pick k uniformly in 1..l (l = continuation length), mask k continuation positions
chosen uniformly, and score −Σ_masked CE · l/k. Each position is masked with probability k/l,
so for a denoiser whose predictions ignore the context the draw is an unbiased estimate of the
exact log-likelihood Σ log p(c_i); for a real model the mean is LLaDA's lower bound on
log p(continuation | prefix). The prefix (and an optional suffix, which a bidirectional model
can use for cloze-style scoring) is never masked.

As in LLaDA, the k of the draws are stratified: k_j = ⌊l·((u + j/n) mod 1)⌋ + 1 with one
u ~ U(0, 1), which keeps every k_j uniform on 1..l but spreads them over the range.
Every request restarts the generator at `seed`, so the options of one question see the same
masking pattern (common random numbers: differences between options have less noise)."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import QpassError
from ..sampling.common import denoise, encode_text, model_device, special_ids, step_progress

Request = tuple  # (prefix_ids, continuation_ids) or (prefix_ids, continuation_ids, suffix_ids)


def _ids(x) -> list[int]:
    if x is None:
        return []
    if isinstance(x, torch.Tensor):
        return x.reshape(-1).tolist()
    return [int(v) for v in x]


def _draws(n_pos: int, mc_num: int, gen: torch.Generator) -> list[torch.Tensor]:
    """mc_num bool masks over n_pos continuation positions, with stratified k."""
    u = float(torch.rand((), generator=gen, dtype=torch.float64))
    masks = []
    for j in range(mc_num):
        k = min(int(n_pos * ((u + j / mc_num) % 1.0)) + 1, n_pos)
        chosen = torch.rand(n_pos, generator=gen).argsort()[:k]
        m = torch.zeros(n_pos, dtype=torch.bool)
        m[chosen] = True
        masks.append(m)
    return masks


@torch.no_grad()
def loglikelihood_draws(model, requests: Sequence[Request], mc_num: int = 128,
                        batch_size: int = 32, mask_id: int | None = None,
                        seed: int = 0, progress: bool | None = None) -> list[torch.Tensor]:
    """Per request a (mc_num,) float64 tensor of single-draw estimates of
    log p(continuation | prefix[, suffix]). Rows of all requests share forward batches
    (right-padded and key-masked when their lengths differ). progress: the batches as a
    qpass.display.progress phase (None: as the enclosing step says)."""
    if mc_num < 1 or batch_size < 1:
        raise QpassError("mc_num and batch_size must be >= 1")
    mask = special_ids(model, mask_id=mask_id).mask
    shift = getattr(getattr(model, "config", None), "logit_shift", False)
    rows = []  # (request index, full ids, masked positions as a bool over full, weight l/k)
    for r, req in enumerate(requests):
        if len(req) not in (2, 3):
            raise QpassError("a request is (prefix, continuation) or (prefix, continuation, suffix)")
        prefix, cont = _ids(req[0]), _ids(req[1])
        suffix = _ids(req[2]) if len(req) == 3 else []
        if not cont:
            raise QpassError("the continuation is empty: nothing to score")
        if shift and not prefix:
            raise QpassError("a logit-shift (Dream) model predicts token i from position i-1: "
                             "give a non-empty prefix")
        full = torch.tensor(prefix + cont + suffix, dtype=torch.long)
        gen = torch.Generator().manual_seed(int(seed))
        for m in _draws(len(cont), mc_num, gen):
            where = torch.zeros(len(full), dtype=torch.bool)
            where[len(prefix):len(prefix) + len(cont)] = m
            rows.append((r, full, where, len(cont) / int(m.sum())))

    device = model_device(model)
    values = torch.zeros(len(rows), dtype=torch.float64)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][1]))  # similar lengths together
    starts = range(0, len(order), batch_size)
    with step_progress(len(starts), progress, "likelihood", "batches") as advance:
        for start in starts:
            _score_batch(model, rows, order[start:start + batch_size], mask, device, values)
            advance()

    out = [[] for _ in requests]
    for i, (r, *_rest) in enumerate(rows):
        out[r].append(values[i])
    return [torch.stack(v) for v in out]


def _score_batch(model, rows, batch, mask, device, values) -> None:
    """values[batch] = the draws' estimates for these rows, in one forward pass."""
    width = max(len(rows[i][1]) for i in batch)
    clean = torch.full((len(batch), width), mask, dtype=torch.long)
    masked = torch.zeros(len(batch), width, dtype=torch.bool)
    real = torch.zeros(len(batch), width, dtype=torch.bool)
    for b, i in enumerate(batch):
        n = len(rows[i][1])
        clean[b, :n], masked[b, :n], real[b, :n] = rows[i][1], rows[i][2], True
    key_mask = None if bool(real.all()) else real.to(device)
    clean, masked = clean.to(device), masked.to(device)
    logits = denoise(model, clean.masked_fill(masked, mask), key_mask)
    ce = F.cross_entropy(logits[masked].float(), clean[masked], reduction="none")
    per_row = torch.zeros(len(batch), dtype=torch.float64, device=device)
    per_row.index_add_(0, masked.nonzero()[:, 0], ce.double())
    weights = torch.tensor([rows[i][3] for i in batch], dtype=torch.float64)
    values[batch] = -per_row.cpu() * weights


def loglikelihood(model, prefix_ids, continuation_ids, mc_num: int = 128, batch_size: int = 32,
                  mask_id: int | None = None, seed: int = 0, suffix_ids=None) -> float:
    """Monte-Carlo estimate of log p(continuation | prefix) in nats (see the module docstring)."""
    req = (prefix_ids, continuation_ids) if suffix_ids is None else \
        (prefix_ids, continuation_ids, suffix_ids)
    draws = loglikelihood_draws(model, [req], mc_num, batch_size, mask_id, seed)[0]
    return float(draws.mean())


def standard_error(draws: torch.Tensor) -> float:
    n = draws.numel()
    return float(draws.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")


def choose(model, prefix, options, mc_num: int = 128, batch_size: int = 32,
           mask_id: int | None = None, seed: int = 0, suffix=None, tokenizer=None
           ) -> tuple[int, list[float]]:
    """Multiple choice: (index of the most likely option, log-likelihood of each option).

    prefix / options / suffix are token ids, or strings encoded with `tokenizer` (default
    model.tokenizer). Scores are summed log-likelihoods (not length-normalized)."""
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)

    def enc(x):
        if isinstance(x, str):
            if tok is None:
                raise QpassError("string options need a tokenizer: pass tokenizer=")
            return encode_text(tok, x)
        return _ids(x)

    if not options:
        raise QpassError("choose() needs at least one option")
    p, s = enc(prefix), (enc(suffix) if suffix is not None else None)
    reqs = [(p, enc(o)) if s is None else (p, enc(o), s) for o in options]
    scores = [float(d.mean()) for d in loglikelihood_draws(model, reqs, mc_num, batch_size,
                                                            mask_id, seed)]
    return max(range(len(scores)), key=scores.__getitem__), scores

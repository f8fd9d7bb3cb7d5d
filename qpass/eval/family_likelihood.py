"""The reference models' own Monte-Carlo log-likelihood estimators, as their lm-eval classes
compute them (ML-GSAI/LLaDA eval_llada.py; DreamLM/Dream eval/), on token ids.

LLaDA (`llada_loglikelihood`): the sequence prefix + target is repeated over `batch_size` rows;
per batch one mask count k ~ U{1..l} is drawn (l = target length) and spread over the rows as
round(linspace(k, k + (b−1)·l/b)) wrapped into 1..l, so the rows' counts are stratified; row j
masks exactly x_j target positions chosen uniformly and scores Σ_masked CE / (x_j / l). The
prompt is never masked. mc_num / batch_size batches; ll = −mean over batches of (Σ rows / b).
CFG (cfg > 0): a second pass with the prompt masked, logits = un + (cfg + 1)(cond − un).

Dream (`dream_loglikelihood`): the target has EOS appended; per batch antithetic times
t_j = (u0 + j/b) mod 1, mask probability p = (1 − ε)t + ε, each target token masked
independently with p_j (only the target is noised; the first and last token of the row are
always kept), score Σ_masked CE / p_j. Dream's shift of the logits (position i−1 predicts i)
is applied inside qpass's Dream denoiser, whose logits come out aligned, so it is not
repeated here (as in qpass.sampling.dream).

Both draw from a CPU generator restarted at `seed` for every request (the options of one
question share their random numbers), so results do not depend on the device. mc_num=1 with
batch_size=1 is LLaDA's single-token mode (k = 1, p_mask = 1 for a one-token answer)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import QpassError
from ..sampling.common import denoise, model_device, special_ids

ESTIMATORS = ("llada", "dream")


def family_of(model) -> str:
    """'dream' for logit-shift models, else 'llada' (the estimator and sampler to use)."""
    return "dream" if getattr(getattr(model, "config", None), "logit_shift", False) else "llada"


def _rows(mc_num: int, batch_size: int) -> int:
    if mc_num < 1 or batch_size < 1:
        raise QpassError(f"mc_num and batch_size must be >= 1, got {mc_num} and {batch_size}")
    b = min(batch_size, mc_num)
    if mc_num % b:
        raise QpassError(f"mc_num ({mc_num}) must be a multiple of batch_size ({b}): the "
                         "estimators draw whole batches")
    return b


def _logits(model, noisy: torch.Tensor, prompt_len: int, cfg: float, mask: int) -> torch.Tensor:
    """One forward (two with CFG: the unconditional pass has the prompt masked)."""
    if cfg > 0:
        un = noisy.clone()
        un[:, :prompt_len] = mask
        both = denoise(model, torch.cat([noisy, un]), None)
        cond, uncond = both.chunk(2, dim=0)
        logits = uncond + (cfg + 1) * (cond - uncond)
    else:
        logits = denoise(model, noisy, None)
    return logits


def _score(logits, clean, masked, p_mask, b: int) -> float:
    ce = F.cross_entropy(logits[masked].double(), clean[masked], reduction="none")
    return float((ce / p_mask[masked]).sum()) / b


def _check(prefix, target, model) -> None:
    if not target:
        raise QpassError("the continuation is empty: nothing to score")
    limit = getattr(getattr(model, "config", None), "max_seq_len", None)
    if limit is not None and len(prefix) + len(target) > limit:
        raise QpassError(f"context + continuation is {len(prefix) + len(target)} tokens, over the "
                         f"model's max_seq_len {limit}; truncate the context")


@torch.no_grad()
def llada_loglikelihood(model, prefix: list[int], target: list[int], mc_num: int = 128,
                        batch_size: int = 32, cfg: float = 0.0, seed: int = 0,
                        mask_id: int | None = None) -> float:
    """LLaDA's estimate of log p(target | prefix) in nats (module docstring)."""
    _check(prefix, target, model)
    b, mask = _rows(mc_num, batch_size), special_ids(model, mask_id=mask_id).mask
    gen = torch.Generator().manual_seed(int(seed))
    device, lp, l = model_device(model), len(prefix), len(target)
    clean = torch.tensor(prefix + target, dtype=torch.long).repeat(b, 1)
    acc = []
    for _ in range(mc_num // b):
        k = int(torch.randint(1, l + 1, (), generator=gen))
        counts = torch.round(torch.linspace(float(k), k + (b - 1) * (l / b), steps=b,
                                            dtype=torch.float64)).long()
        counts = (counts - 1) % l + 1
        is_mask = torch.arange(l).repeat(b, 1) < counts[:, None]
        for i in range(b):
            is_mask[i] = is_mask[i][torch.randperm(l, generator=gen)]
        masked = torch.cat([torch.zeros(b, lp, dtype=torch.bool), is_mask], dim=1)
        p_mask = (counts.double() / l)[:, None].expand(b, lp + l)
        noisy = clean.masked_fill(masked, mask)
        logits = _logits(model, noisy.to(device), lp, cfg, mask).cpu()
        acc.append(_score(logits, clean, masked, p_mask, b))
    return -sum(acc) / len(acc)


@torch.no_grad()
def dream_loglikelihood(model, prefix: list[int], target: list[int], mc_num: int = 128,
                        batch_size: int = 32, cfg: float = 0.0, seed: int = 0, eps: float = 1e-3,
                        mask_id: int | None = None, append_eos: bool = True,
                        eos_id: int | None = None) -> float:
    """Dream's estimate of log p(target | prefix) in nats (module docstring). `target` is the
    continuation; EOS is appended here (as Dream's _encode_pair does) unless append_eos=False."""
    ids = special_ids(model, mask_id=mask_id, eos_id=eos_id)
    if append_eos:
        if ids.eos is None:
            raise QpassError("Dream's estimator appends EOS: the model has no eos_token_id; "
                             "pass eos_id= or append_eos=False")
        target = list(target) + [ids.eos]
    _check(prefix, target, model)
    if not 0 < eps < 1:
        raise QpassError(f"eps must be in (0, 1), got {eps}")
    b = _rows(mc_num, batch_size)
    gen = torch.Generator().manual_seed(int(seed))
    device, lp, n = model_device(model), len(prefix), len(prefix) + len(target)
    clean = torch.tensor(prefix + target, dtype=torch.long).repeat(b, 1)
    acc = []
    for _ in range(mc_num // b):
        u0 = torch.rand(1, generator=gen, dtype=torch.float64)
        t = (u0 + torch.arange(b, dtype=torch.float64) / b) % 1
        p_mask = ((1 - eps) * t + eps)[:, None].expand(b, n)
        masked = torch.rand(b, n, generator=gen, dtype=torch.float64) < p_mask
        masked[:, 0] = False
        masked[:, -1] = False
        masked[:, :lp] = False   # only the target is noised
        noisy = clean.masked_fill(masked, ids.mask)
        logits = _logits(model, noisy.to(device), lp, cfg, ids.mask).cpu()
        acc.append(_score(logits, clean, masked, p_mask, b))
    return -sum(acc) / len(acc)


def family_loglikelihood(model, prefix, target, estimator: str = "auto", **kw) -> float:
    """log p(target | prefix) by the estimator of the model's family ('auto') or the named one."""
    which = family_of(model) if estimator == "auto" else estimator
    if which not in ESTIMATORS:
        raise QpassError(f"estimator must be 'auto' or one of {ESTIMATORS}, got '{estimator}'")
    fn = llada_loglikelihood if which == "llada" else dream_loglikelihood
    return fn(model, [int(v) for v in prefix], [int(v) for v in target], **kw)


def family_choice(model, prefix, options, estimator: str = "auto", **kw
                  ) -> tuple[int, list[float]]:
    """Multiple choice by the family estimator: (index of the most likely option — the first
    on ties, as lm-eval's acc — and each option's log-likelihood). Token ids in, as lists."""
    if not options:
        raise QpassError("family_choice() needs at least one option")
    scores = [family_loglikelihood(model, prefix, o, estimator=estimator, **kw) for o in options]
    return max(range(len(scores)), key=scores.__getitem__), scores

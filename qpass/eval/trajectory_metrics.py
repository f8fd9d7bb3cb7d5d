"""Per-step error measures of a quantized denoiser on one canvas of the FP sampler.

All of them compare two logit tensors (B, G, V) of the generated region of the same canvas,
restricted to the positions that are still masked. Distributions are taken over the
vocabulary WITHOUT the mask token, which is what the samplers propose from (they forbid it),
and in float64, so that an identical pair gives exactly 0 and 1."""
from __future__ import annotations

import torch


def proposal_log_probs(logits: torch.Tensor, mask_id: int | None) -> torch.Tensor:
    """float64 log-softmax over the vocabulary with the mask token's column removed."""
    logits = logits.to(torch.float64)
    if mask_id is not None and 0 <= mask_id < logits.shape[-1]:
        logits = torch.cat([logits[..., :mask_id], logits[..., mask_id + 1:]], dim=-1)
    return torch.log_softmax(logits, dim=-1)


def kl_per_position(fp_logits: torch.Tensor, q_logits: torch.Tensor,
                    mask_id: int | None) -> torch.Tensor:
    """KL(FP ‖ Q) in nats at every position: Σ_v p_v (log p_v − log q_v)."""
    lp = proposal_log_probs(fp_logits, mask_id)
    lq = proposal_log_probs(q_logits, mask_id)
    # p = 0 contributes 0 (also where both log-probs are -inf, which would give NaN)
    terms = torch.where(lp.exp() > 0, lp.exp() * (lp - lq), torch.zeros_like(lp))
    return terms.sum(dim=-1)


def step_measures(fp_logits: torch.Tensor, q_logits: torch.Tensor, masked: torch.Tensor,
                  mask_id: int | None) -> dict:
    """KL and top-1 agreement over the masked positions of one step (all rows pooled)."""
    n = int(masked.sum())
    if n == 0:
        return {"masked": 0, "kl": 0.0, "kl_max": 0.0, "top1_agreement": 1.0}
    kl = kl_per_position(fp_logits, q_logits, mask_id)[masked]
    top_fp = proposal_log_probs(fp_logits, mask_id).argmax(dim=-1)
    top_q = proposal_log_probs(q_logits, mask_id).argmax(dim=-1)
    return {"masked": n, "kl": float(kl.mean()), "kl_max": float(kl.max()),
            "top1_agreement": float((top_fp == top_q)[masked].double().mean())}


def commit_measures(before: torch.Tensor, after_fp: torch.Tensor, after_q: torch.Tensor,
                    mask_id: int) -> dict:
    """How the set the quantized model would commit on this canvas matches the FP one.

    before / after_*: (B, G) generated region before the step and after it (FP's actual
    step, and the step the sampler takes from the same canvas with the quantized logits).
    commit_jaccard: |C_fp ∩ C_q| / |C_fp ∪ C_q| over (row, position); commit_token_agreement:
    the fraction of FP's commits that the quantized step makes at the same place with the
    same token. Both are 1 when neither commits anything. wrong_commits: the quantized step's
    commits that FP's step does not make (another place, or the same place with another
    token), out of q_committed."""
    masked = before == mask_id
    c_fp = masked & (after_fp != mask_id)
    c_q = masked & (after_q != mask_id)
    union = int((c_fp | c_q).sum())
    inter = int((c_fp & c_q).sum())
    same_token = int((c_fp & c_q & (after_fp == after_q)).sum())
    n_fp, n_q = int(c_fp.sum()), int(c_q.sum())
    return {"committed": n_fp, "commit_jaccard": inter / union if union else 1.0,
            "commit_token_agreement": same_token / n_fp if n_fp else 1.0,
            "q_committed": n_q, "wrong_commits": n_q - same_token}


def first_divergence(canvases_a: list[torch.Tensor], canvases_b: list[torch.Tensor]
                     ) -> list[int | None]:
    """Per row, the first step whose result differs between two free-running trajectories.

    canvases_*: the canvas after each step (B, L). A trajectory that stops early (all rows
    done) is compared with the other's canvas at the same step index; None = never differs."""
    rows = canvases_a[0].shape[0] if canvases_a else 0
    out: list[int | None] = [None] * rows
    for step in range(max(len(canvases_a), len(canvases_b))):
        a = canvases_a[min(step, len(canvases_a) - 1)]
        b = canvases_b[min(step, len(canvases_b) - 1)]
        differs = (a != b).any(dim=1).tolist()
        for r, d in enumerate(differs):
            if d and out[r] is None:
                out[r] = step
    return out

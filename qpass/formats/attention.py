"""Integer attention over quantized K/V (the `kv8` / `kv4` scheme suffixes, DESIGN §13): what
the simulated graph, the reference backend and (up to float rounding of exp and the row sum)
the Triton kernel compute.

K and V are quantized per head per token (symmetric over the head dim, `quantize_kv`), which
is also the layout the K/V cache stores. With Q quantized per token to int8 (restricted grid, absmax/127, like int8 attention):
  S_ij = s_q,i · s_k,j · Σ_d q_id k_jd                    exact integer Q·Kᵀ (int32 range)
  e_ij = exp(S_ij/√D − max_j S_ij/√D),   l_i = Σ_j e_ij    the softmax, unnormalised
  p_ij = round(e_ij · s_v,j / s_p),  s_p = max_j s_v,j / 127  P with V's per-token scales
                                                           folded in, codes in [0, 127]
  O_id = s_p / l_i · Σ_j p_ij v_jd                         exact integer P·V
Folding s_v into P is what makes P·V an integer product although V's scales vary along the
contracted (token) axis. e ≤ 1 and s_v,j ≤ max s_v, so codes never clip; s_p depends only
on V (over the visible keys), not on blocking, so a blocked kernel gets the same codes."""
from __future__ import annotations

import math

import torch

from .codes import quantize_per_token

KV_BITS = (4, 8)
EXACT_TOKENS = 1024       # 127 · 127 · 1024 < 2^24: one fp32 matmul per chunk of keys is exact


def quantize_kv(t: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes int8 (…, L, D), scales fp32 (…, L, 1)): per head, per token, symmetric."""
    return quantize_per_token(t, bits)


def _exact_bmm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact a @ b for small-integer float tensors (…, M, K) @ (…, K, N), float64 result."""
    K = a.shape[-1]
    out = None
    for k0 in range(0, max(K, 1), EXACT_TOKENS):
        part = (a[..., k0:k0 + EXACT_TOKENS] @ b[..., k0:k0 + EXACT_TOKENS, :]).to(torch.float64)
        out = part if out is None else out + part
    return out


def v_code_scale(vs: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
    """s_p (B, H_kv, 1, 1) = max over visible keys of V's per-token scales / 127."""
    s = vs
    if key_mask is not None:
        s = s.masked_fill(~key_mask[:, None, :, None].to(torch.bool), 0.0)
    return s.amax(dim=-2, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny) / 127.0


def kv_attention(q: torch.Tensor, kc: torch.Tensor, ks: torch.Tensor, vc: torch.Tensor,
                 vs: torch.Tensor, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Bidirectional attention of float q (B, H, Lq, D) over quantized K/V (B, H_kv, Lk, D)
    codes with (B, H_kv, Lk, 1) scales; GQA by head groups; key_mask (B, Lk) True = real.
    A query row with no visible key gives zeros."""
    B, H, Lq, D = q.shape
    rep = H // kc.shape[1]
    sp = v_code_scale(vs, key_mask)
    if rep > 1:
        kc, ks, vc, vs, sp = (t.repeat_interleave(rep, dim=1) for t in (kc, ks, vc, vs, sp))
    # Q on the restricted int8 grid (absmax/127), as in every attention kernel (qpass::attention)
    q8, sq = quantize_per_token(q.to(torch.float32), 8, "restricted")
    acc = _exact_bmm(q8.to(torch.float32), kc.to(torch.float32).transpose(-1, -2))
    s = acc.to(torch.float32) * sq * ks.transpose(-1, -2) * (1.0 / math.sqrt(D))
    if key_mask is not None:
        s = s.masked_fill(~key_mask[:, None, None, :].to(torch.bool), float("-inf"))
    m = s.amax(dim=-1, keepdim=True)
    e = torch.exp(s - torch.where(torch.isfinite(m), m, torch.zeros_like(m)))
    l = e.sum(dim=-1, keepdim=True)
    p = torch.round(e * vs.transpose(-1, -2) / sp).clamp(0, 127)
    o = _exact_bmm(p, vc.to(torch.float32)).to(torch.float32)
    out = o * (sp / torch.where(l > 0, l, torch.ones_like(l)))
    return out.to(q.dtype)

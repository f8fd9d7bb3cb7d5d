"""Functions that capture keeps as single graph nodes (DESIGN §2): attention and RoPE.

The tracer in qpass.capture autowraps these, so attention is one `call_function` node that
passes can quantize or lowering can replace as a unit."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import kvcache
from .errors import QpassError
from .formats.attention import kv_attention, quantize_kv


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              key_mask: torch.Tensor | None = None, causal: bool = False,
              kv_bits: int = 0) -> torch.Tensor:
    """Scaled dot-product attention on (B, H, L, D) tensors; k/v may have fewer heads (GQA).

    `key_mask` is an optional (B, L) bool tensor, True for real tokens (left padding = False).
    Bidirectional unless `causal`. Inside a K/V cache window (qpass.kvcache) q holds the
    window's rows and k/v/key_mask come back from the cache over the whole sequence.
    kv_bits (4 or 8; set by a `kv<bits>` scheme): K/V are quantized per head per token (the
    cache then holds codes and scales) and Q·Kᵀ, P·V are integer products
    (qpass.formats.attention); bidirectional only."""
    cache = kvcache.active()
    if kv_bits:
        if causal:
            raise QpassError("quantized K/V attention (kv_bits) serves bidirectional denoisers; "
                             "this attention is causal: drop the kv suffix of the scheme")
        kc, ks = quantize_kv(k, kv_bits)
        vc, vs = quantize_kv(v, kv_bits)
        if cache is not None:
            (kc, ks, vc, vs), key_mask = cache.attend((kc, ks, vc, vs), key_mask)
        return kv_attention(q, kc, ks, vc, vs, key_mask)
    if cache is not None:
        (k, v), key_mask = cache.attend((k, v), key_mask, causal)
    n_rep = q.shape[1] // k.shape[1]
    if n_rep > 1:
        k = k.repeat_interleave(n_rep, dim=1)
        v = v.repeat_interleave(n_rep, dim=1)
    mask = None
    if key_mask is not None:
        mask = key_mask[:, None, None, :].to(torch.bool)
        if causal:
            L = q.shape[2]
            mask = mask & torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE on (B, H, L, D) with cos/sin tables of shape (≥L, D); fp32 at least.
    Row i has position i, or offset + i inside a K/V cache window."""
    L = x.shape[-2]
    start = kvcache.position_offset()      # a cache window starts at an absolute position
    cos, sin = cos[start:start + L], sin[start:start + L]
    dtype = x.dtype
    xf = x.float() if dtype in (torch.float16, torch.bfloat16) else x
    half = xf.shape[-1] // 2
    rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    out = xf * cos.to(xf.dtype) + rotated * sin.to(xf.dtype)
    return out.to(dtype)


def rope_tables(head_dim: int, max_len: int, theta: float,
                dtype: torch.dtype = torch.float32, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=device) / head_dim))
    t = torch.arange(max_len, dtype=torch.float64, device=device)
    freqs = torch.outer(t, inv)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


WRAPPED_FUNCTIONS = (attention, rope)

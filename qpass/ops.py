"""Functions that capture keeps as single graph nodes (DESIGN §2): attention, RoPE and the
row ops of mixture-of-experts routing.

The tracer in qpass.capture autowraps these, so attention is one `call_function` node that
passes can quantize or lowering can replace as a unit. (The lowered kernels' torch.library
schemas, `torch.ops.qpass.*`, live in backends/op_schemas.py.)"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import kvcache
from .errors import QpassError
from .formats.attention import kv_attention, quantize_kv


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              key_mask: torch.Tensor | None = None, causal: bool = False,
              kv_bits: int = 0, block_size: int = 0) -> torch.Tensor:
    """Scaled dot-product attention on (B, H, L, D) tensors; k/v may have fewer heads (GQA).

    `key_mask` is an optional (B, L) bool tensor, True for real tokens (left padding = False).
    Bidirectional unless `causal`. Inside a K/V cache window (qpass.kvcache) q holds the
    window's rows and k/v/key_mask come back from the cache over the whole sequence.
    kv_bits (4 or 8; set by a `kv<bits>` scheme): K/V are quantized per head per token (the
    cache then holds codes and scales) and Q·Kᵀ, P·V are integer products
    (qpass.formats.attention); bidirectional only.
    block_size > 0 (block diffusion, SDAR): position i sees position j iff
    j // block_size <= i // block_size — causal between blocks, bidirectional inside."""
    cache = kvcache.active()
    if block_size:
        if kv_bits or cache is not None:
            raise QpassError("block-causal attention (block diffusion) runs without a K/V cache "
                             "and without kv<bits> schemes; use cache='none' and drop the suffix")
        return _block_causal(q, k, v, key_mask, block_size)
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


def block_causal_mask(L: int, block_size: int, device=None) -> torch.Tensor:
    """(L, L) bool: query i may attend key j (same or an earlier block)."""
    blk = torch.arange(L, device=device) // block_size
    return blk[None, :] <= blk[:, None]


def _block_causal(q, k, v, key_mask, block_size: int) -> torch.Tensor:
    n_rep = q.shape[1] // k.shape[1]
    if n_rep > 1:
        k = k.repeat_interleave(n_rep, dim=1)
        v = v.repeat_interleave(n_rep, dim=1)
    mask = block_causal_mask(q.shape[2], block_size, q.device)[None, None]
    if key_mask is not None:
        mask = mask & key_mask[:, None, None, :].to(torch.bool)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def route_topk(logits: torch.Tensor, k: int, normalize: bool = True, sigmoid: bool = False,
               bias: torch.Tensor | None = None, n_group: int = 1, topk_group: int = 1,
               scale: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """MoE routing: (expert ids (T, k) long, weights (T, k) in logits' dtype).

    Scores are softmax(logits) (Mixtral, LLaDA-MoE) or sigmoid(logits) (LLaDA2 / BailingMoE
    V2), in fp32. `bias` (per expert) shifts the scores used to choose, not the weights;
    with n_group > 1 the experts form groups, each scored by its two best experts, and only
    the best `topk_group` groups may be chosen. The k chosen scores are the weights,
    rescaled to sum to one when `normalize` (and k > 1 for sigmoid scores), times `scale`."""
    s = torch.sigmoid(logits.float()) if sigmoid else torch.softmax(logits.float(), dim=-1)
    choose = s if bias is None else s + bias.float()
    if n_group > 1:
        T, E = choose.shape
        groups = choose.view(T, n_group, E // n_group).topk(min(2, E // n_group), dim=-1)[0].sum(-1)
        keep = torch.zeros_like(groups).scatter_(1, groups.topk(topk_group, dim=-1)[1], 1.0)
        keep = keep.unsqueeze(-1).expand(T, n_group, E // n_group).reshape(T, E)
        choose = choose.masked_fill(keep == 0, float("-inf"))
    idx = torch.topk(choose, k, dim=-1)[1]
    w = s.gather(-1, idx)
    if normalize and (k > 1 or not sigmoid):
        w = w / (w.sum(dim=-1, keepdim=True) + (1e-20 if sigmoid else 0.0))
    return idx, (w * scale).to(logits.dtype)


def expert_tokens(idx: torch.Tensor, weights: torch.Tensor, expert: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows (n,) long, weights (n, 1)) of the tokens routed to `expert`, in token order."""
    hit = idx == expert
    if hit.is_meta:          # structure only (shapes on meta): which rows is data, say all
        rows = torch.arange(hit.shape[0], device=hit.device)
    else:
        rows = hit.any(dim=-1).nonzero().reshape(-1)
    w = (weights * hit.to(weights.dtype)).sum(dim=-1)
    return rows, w.index_select(0, rows).unsqueeze(-1)


def gather_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x[rows] for a (T, d) x: row selection, the channel dim untouched."""
    return x.index_select(0, rows)


def scatter_rows(out: torch.Tensor, rows: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """out with y's rows added at `rows` (out is not modified), in out's dtype (an fp32 router's
    weights make y fp32 in a bf16 model)."""
    return out.index_add(0, rows, y.to(out.dtype))


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


def hf_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                 scaling: float | None, causal: bool) -> torch.Tensor:
    """Attention as transformers' attention interface computes it, for a captured
    transformers model (qpass.ir.value_trace): q (B, H, L, D), k/v (B, Hkv, S, D) (GQA
    repeated here), `mask` the model's own mask — bool (True = attend) or additive float,
    broadcastable to (B, H, L, S) — or None with `causal`; returns (B, L, H, D)."""
    n_rep = q.shape[1] // k.shape[1]
    if n_rep > 1:
        k = k.repeat_interleave(n_rep, dim=1)
        v = v.repeat_interleave(n_rep, dim=1)
    if mask is not None:
        mask = mask[:, :, :, : k.shape[-2]]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.to(q.dtype) if
                                             mask.dtype != torch.bool else mask, scale=scaling)
    else:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal and q.shape[2] > 1,
                                             scale=scaling)
    return out.transpose(1, 2).contiguous()


WRAPPED_FUNCTIONS = (attention, rope, route_topk, expert_tokens, gather_rows, scatter_rows,
                     hf_attention)

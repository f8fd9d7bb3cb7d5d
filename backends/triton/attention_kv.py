"""Attention over quantized K/V (qpass::attention_kv; the arithmetic of
qpass.formats.attention): bidirectional, key padding mask, GQA.

One program per (query block, batch·head) makes two passes over the key blocks: the first
finds each row's exact max score and the softmax sum (online); the second recomputes the
scores, turns exp(s − max) · s_v / s_p into int8 codes and accumulates the int8 P·V MMA in
int32. Q is quantized per token in registers (the same rounding as qpass::quant_per_token), so
Q·Kᵀ is an int8 MMA too. Only exp and the row sum are float, so the result matches the
reference to float rounding (a code can move by one where exp lands on a .5 boundary)."""
from __future__ import annotations

import math

import torch

from qpass.formats.attention import v_code_scale

from .. import bounds
from ._common import ROUND_MAGIC, configs, tl, triton
from .attention import _q8, _q_tile, check_head_dim

_FULL = [
    dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3),
    dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3),
]
_TINY = dict(BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=1)


@triton.jit
def _scores(q8, sq, kc_ptr, ks_ptr, mask_ptr, b, hk, rn, rd, LK, skb, skh, skl, ssb, ssh, ssl,
            smb, sm_scale, HAS_MASK: tl.constexpr):
    valid = rn < LK
    kc = tl.load(kc_ptr + b * skb + hk * skh + rn[:, None] * skl + rd[None, :],
                 mask=valid[:, None], other=0)
    ks = tl.load(ks_ptr + b * ssb + hk * ssh + rn * ssl, mask=valid, other=0.0)
    s = tl.dot(q8, tl.trans(kc), out_dtype=tl.int32).to(tl.float32)
    s = s * sq[:, None] * ks[None, :] * sm_scale
    if HAS_MASK:
        valid = valid & (tl.load(mask_ptr + b * smb + rn, mask=rn < LK, other=0) != 0)
    return tl.where(valid[None, :], s, float("-inf")), valid


@triton.autotune(configs=configs(_FULL, _TINY), key=["L", "LK", "D"])
@triton.jit
def _kv_attn_kernel(q_ptr, kc_ptr, ks_ptr, vc_ptr, vs_ptr, sp_ptr, mask_ptr, o_ptr,
                    L, LK, H, H_KV, n_rep, sm_scale,
                    sqb, sqh, sql, skb, skh, skl, ssb, ssh, ssl, svb, svh, svl, sub, suh, sul,
                    smb, sob, soh, sol,
                    D: tl.constexpr, HAS_MASK: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    b, h, hk, rm, rd, q = _q_tile(q_ptr, sqb, sqh, sql, L, H, n_rep, D, BLOCK_M)
    rn0 = tl.arange(0, BLOCK_N)
    q8, sq = _q8(q.to(tl.float32))
    sp = tl.load(sp_ptr + b * H_KV + hk)
    m_i = tl.full((BLOCK_M,), -1.0e30, tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    for n0 in range(0, LK, BLOCK_N):          # pass 1: exact row max, softmax sum
        s, _ = _scores(q8, sq, kc_ptr, ks_ptr, mask_ptr, b, hk, n0 + rn0, rd, LK, skb, skh, skl,
                       ssb, ssh, ssl, smb, sm_scale, HAS_MASK)
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        l_i = l_i * tl.exp(m_i - m_new) + tl.sum(tl.exp(s - m_new[:, None]), axis=1)
        m_i = m_new
    acc = tl.zeros((BLOCK_M, D), tl.int32)
    for n0 in range(0, LK, BLOCK_N):          # pass 2: P codes (V scales folded in), int P·V
        rn = n0 + rn0
        s, valid = _scores(q8, sq, kc_ptr, ks_ptr, mask_ptr, b, hk, rn, rd, LK, skb, skh, skl,
                           ssb, ssh, ssl, smb, sm_scale, HAS_MASK)
        e = tl.exp(s - m_i[:, None])
        vs = tl.load(vs_ptr + b * sub + hk * suh + rn * sul, mask=rn < LK, other=0.0)
        p = tl.math.div_rn(e * vs[None, :], sp)
        p = tl.minimum(tl.maximum((p + ROUND_MAGIC) - ROUND_MAGIC, 0.0), 127.0).to(tl.int8)
        vc = tl.load(vc_ptr + b * svb + hk * svh + rn[:, None] * svl + rd[None, :],
                     mask=valid[:, None], other=0)
        acc += tl.dot(p, vc, out_dtype=tl.int32)
    out = acc.to(tl.float32) * tl.math.div_rn(sp, tl.where(l_i > 0, l_i, 1.0))[:, None]
    tl.store(o_ptr + b * sob + h * soh + rm[:, None] * sol + rd[None, :],
             out.to(o_ptr.dtype.element_ty), mask=(rm < L)[:, None])


def kv_attention(q, kc, ks, vc, vs, key_mask):
    bounds.attention_kv(q, kc, ks, vc, vs, key_mask)
    check_head_dim("attention_kv", q.shape[-1])
    B, H, L, D = q.shape
    H_kv, LK = kc.shape[1], kc.shape[2]
    q = q if q.stride(-1) == 1 else q.contiguous()
    kc, vc = kc.contiguous(), vc.contiguous()
    ks, vs = ks.contiguous().to(torch.float32), vs.contiguous().to(torch.float32)
    sp = v_code_scale(vs, key_mask).reshape(B * H_kv).contiguous()
    out = torch.empty_like(q)
    mask = key_mask.to(torch.int8).contiguous() if key_mask is not None else q
    grid = lambda meta: (triton.cdiv(L, meta["BLOCK_M"]), B * H)
    _kv_attn_kernel[grid](q, kc, ks, vc, vs, sp, mask, out, L, LK, H, H_kv, H // H_kv,
                          1.0 / math.sqrt(D),
                          q.stride(0), q.stride(1), q.stride(2), kc.stride(0), kc.stride(1),
                          kc.stride(2), ks.stride(0), ks.stride(1), ks.stride(2), vc.stride(0),
                          vc.stride(1), vc.stride(2), vs.stride(0), vs.stride(1), vs.stride(2),
                          mask.stride(0) if key_mask is not None else 0,
                          out.stride(0), out.stride(1), out.stride(2),
                          D=D, HAS_MASK=key_mask is not None)
    return out

"""Flash-attention forward for (B, H, L, D) queries over (B, H_kv, L_k, D) keys (L_k > L in a
K/V-cache window): bidirectional by default, optional causal mask,
key padding mask, GQA (a query head h reads kv head h // (H / H_kv)), optional int8 Q·Kᵀ.

One program per (query block, batch·head) streams key/value blocks with the online softmax
(exp2 with log2(e) folded into the scale). A row with no visible key returns zeros. In int8
mode Q rows and K rows are quantized per token over D (as the reference does), Q·Kᵀ is an exact
int8 MMA and is rescaled by s_q·s_k; P·V stays in the input precision."""
from __future__ import annotations

import math

import torch

from qpass.errors import BackendError

from .. import bounds
from ._common import ROUND_MAGIC, SCALE_FLOOR, configs, interpreting, tl, triton

_FULL = [
    dict(BLOCK_M=128, BLOCK_N=128, num_warps=8, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=64, num_warps=8, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=64, num_warps=4, num_stages=4),
    dict(BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=3),
]
_TINY = dict(BLOCK_M=16, BLOCK_N=16, num_warps=4, num_stages=1)


@triton.jit
def _q8(t):
    """Per-row symmetric int8 codes and scales of a (R, D) fp32 tile."""
    s = tl.maximum(tl.math.div_rn(tl.max(tl.abs(t), axis=1), 127.0), SCALE_FLOOR)
    q = (tl.math.div_rn(t, s[:, None]) + ROUND_MAGIC) - ROUND_MAGIC
    return tl.minimum(tl.maximum(q, -128.0), 127.0).to(tl.int8), s


@triton.jit
def _q_tile(q_ptr, sqb, sqh, sql, L, H, n_rep, D: tl.constexpr, BLOCK_M: tl.constexpr):
    """This program's (batch, head, kv head, query rows, head-dim range, Q tile)."""
    pid_m, bh = tl.program_id(0), tl.program_id(1)
    b, h = bh // H, bh % H
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rd = tl.arange(0, D)
    q = tl.load(q_ptr + b * sqb + h * sqh + rm[:, None] * sql + rd[None, :],
                mask=(rm < L)[:, None], other=0.0)
    return b, h, h // n_rep, rm, rd, q


@triton.autotune(configs=configs(_FULL, _TINY), key=["L_BUCKET", "D", "INT8", "CAUSAL"])
@triton.jit
def _attn_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, o_ptr, L, LK, L_BUCKET, H, n_rep, sm_scale_log2,
                 sqb, sqh, sql, skb, skh, skl, svb, svh, svl, sob, soh, sol, smb,
                 D: tl.constexpr, HAS_MASK: tl.constexpr, CAUSAL: tl.constexpr,
                 INT8: tl.constexpr, IEEE: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    b, h, hk, rm, rd, q = _q_tile(q_ptr, sqb, sqh, sql, L, H, n_rep, D, BLOCK_M)
    rn0 = tl.arange(0, BLOCK_N)
    if INT8:
        q8, sq = _q8(q.to(tl.float32))
    m_i = tl.full((BLOCK_M,), -1.0e30, tl.float32)
    l_i = tl.zeros((BLOCK_M,), tl.float32)
    acc = tl.zeros((BLOCK_M, D), tl.float32)
    hi = LK
    if CAUSAL:   # causal implies L == LK (a cached window is bidirectional)
        hi = tl.minimum(LK, (pid_m + 1) * BLOCK_M)
    for n0 in range(0, hi, BLOCK_N):
        rn = n0 + rn0
        valid = rn < LK
        k = tl.load(k_ptr + b * skb + hk * skh + rn[:, None] * skl + rd[None, :],
                    mask=valid[:, None], other=0.0)
        if INT8:
            k8, sk = _q8(k.to(tl.float32))
            s = tl.dot(q8, tl.trans(k8), out_dtype=tl.int32).to(tl.float32)
            s = s * sq[:, None] * sk[None, :]
        elif IEEE:
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        if HAS_MASK:
            valid = valid & (tl.load(mask_ptr + b * smb + rn, mask=rn < LK, other=0) != 0)
        keep = valid[None, :]
        if CAUSAL:
            keep = keep & (rn[None, :] <= rm[:, None])
        s = tl.where(keep, s * sm_scale_log2, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_ptr + b * svb + hk * svh + rn[:, None] * svl + rd[None, :],
                    mask=valid[:, None], other=0.0)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    tl.store(o_ptr + b * sob + h * soh + rm[:, None] * sol + rd[None, :],
             out.to(o_ptr.dtype.element_ty), mask=(rm < L)[:, None])


def check_head_dim(op: str, D: int) -> None:
    """The kernels hold a (rows, D) tile: D must be a power of two in [16, 256]."""
    if D & (D - 1) or not 16 <= D <= 256:
        raise BackendError(f"qpass::{op}: the Triton kernel takes head dims that are powers of "
                           f"two in [16, 256], got {D}")


def flash_attention(q, k, v, key_mask, causal: bool, int8: bool) -> torch.Tensor:
    bounds.attention(q, k, v, key_mask, causal, int8)
    check_head_dim("attention", q.shape[-1])
    B, H, L, D = q.shape
    n_rep, LK = H // k.shape[1], k.shape[2]     # LK > L: a K/V-cache window of L query rows
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    out = torch.empty_like(q)
    mask = key_mask.to(torch.int8).contiguous() if key_mask is not None else q
    from .gemm_int import m_bucket
    grid = lambda meta: (triton.cdiv(L, meta["BLOCK_M"]), B * H)
    _attn_kernel[grid](q, k, v, mask, out, L, LK, m_bucket(max(L, LK)), H, n_rep,
                       (1.0 / math.sqrt(D)) * 1.4426950408889634,
                       q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1),
                       k.stride(2), v.stride(0), v.stride(1), v.stride(2), out.stride(0),
                       out.stride(1), out.stride(2), mask.stride(0) if key_mask is not None else 0,
                       D=D, HAS_MASK=key_mask is not None, CAUSAL=causal, INT8=int8,
                       IEEE=q.dtype == torch.float32 or interpreting())
    return out

"""Weight-only GEMM (W4A16, W3A16, any 1..8 bits): dequantize in registers, float MMA.

The canonical layout is read as is (docs/FORMATS.md): code k of a row sits at stream bit b·k,
i.e. bits (b·k) mod 32 of word ⌊b·k/32⌋, straddling into the next word for b ∤ 32. Each tile
dequantizes (u − z)·s in fp32 with one scale row per tile (BLOCK_K divides the group), casts to
the activation dtype and feeds tl.dot with fp32 accumulation. Small M is memory-bound: split-K
(fp32 atomics into a zeroed buffer) keeps all SMs busy while each reads its share of weights."""
from __future__ import annotations

import torch

from .. import bounds
from ._common import configs, interpreting, split_k_epilogue, tl, triton

_FULL = [
    dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=64, SPLIT_K=1, num_warps=8, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, SPLIT_K=1, num_warps=8, num_stages=4),
    dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=64, SPLIT_K=1, num_warps=4, num_stages=4),
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, SPLIT_K=1, num_warps=8, num_stages=3),
    # small M: memory-bound, split K across programs
    dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=128, SPLIT_K=4, num_warps=4, num_stages=4),
    dict(BLOCK_M=16, BLOCK_N=128, BLOCK_K=128, SPLIT_K=4, num_warps=4, num_stages=4),
    dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=128, SPLIT_K=2, num_warps=4, num_stages=4),
    dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=64, SPLIT_K=8, num_warps=4, num_stages=3),
    dict(BLOCK_M=32, BLOCK_N=128, BLOCK_K=64, SPLIT_K=1, num_warps=4, num_stages=4),
]
_TINY = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, SPLIT_K=1, num_warps=4, num_stages=1)


def _prune(configs_, named_args, **kw):
    gs = kw.get("GROUP_SIZE", named_args.get("GROUP_SIZE"))
    M = named_args["M_BUCKET"]
    ok = [c for c in configs_ if gs % c.kwargs["BLOCK_K"] == 0
          and (c.kwargs["SPLIT_K"] == 1 or M <= 64)
          and (c.kwargs["BLOCK_M"] <= 32 or M > 64)]
    return ok or configs_[-1:]


@triton.autotune(configs=configs(_FULL, _TINY), key=["M_BUCKET", "N", "K", "BITS", "GROUP_SIZE"],
                 prune_configs_by={"early_config_prune": _prune}, reset_to_zero=["ws_ptr"])
@triton.jit
def _w4a16_kernel(x_ptr, q_ptr, s_ptr, z_ptr, bias_ptr, c_ptr, ws_ptr, M, N, K, M_BUCKET,
                  stride_xm, stride_qn, stride_cm, n_groups,
                  BITS: tl.constexpr, GROUP_SIZE: tl.constexpr, HAS_ZERO: tl.constexpr,
                  HAS_BIAS: tl.constexpr, IEEE: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                  SPLIT_K: tl.constexpr):
    pid_m, pid_n, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    mask_m, mask_n = rm < M, rn < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(pid_k * BLOCK_K, K, BLOCK_K * SPLIT_K):
        kk = k0 + rk
        mask_k = kk < K
        x = tl.load(x_ptr + rm[:, None] * stride_xm + kk[None, :],
                    mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        if 32 % BITS == 0:
            # no code straddles a word: one load per word (BK/PER, BN), PER codes per word
            # unpacked in registers; (BK/PER, PER, BN) -> (BK, BN) keeps k = PER·word + j
            rw = k0 // (32 // BITS) + tl.arange(0, BLOCK_K // (32 // BITS))
            words = tl.load(q_ptr + rn[None, :] * stride_qn + rw[:, None],
                            mask=mask_n[None, :] & (rw < (K + (32 // BITS) - 1) // (32 // BITS))[:, None], other=0)
            codes = (words[:, None, :] >> (tl.arange(0, 32 // BITS) * BITS)[None, :, None]) & \
                ((1 << BITS) - 1)
            u = tl.reshape(codes, (BLOCK_K, BLOCK_N))
        else:
            bitpos = kk * BITS
            wmask = mask_n[None, :] & mask_k[:, None]
            lo = tl.load(q_ptr + rn[None, :] * stride_qn + (bitpos[:, None] >> 5), mask=wmask,
                         other=0)
            sh = (bitpos & 31)[:, None]
            hi = tl.load(q_ptr + rn[None, :] * stride_qn + (bitpos[:, None] >> 5) + 1,
                         mask=wmask & (sh + BITS > 32), other=0)
            both = (lo.to(tl.int64) & 0xFFFFFFFF) | (hi.to(tl.int64) << 32)
            u = ((both >> sh) & ((1 << BITS) - 1)).to(tl.int32)
        g = k0 // GROUP_SIZE
        s = tl.load(s_ptr + rn * n_groups + g, mask=mask_n, other=0.0)
        if HAS_ZERO:
            z = tl.load(z_ptr + rn * n_groups + g, mask=mask_n, other=0).to(tl.float32)
        else:
            z = tl.full((BLOCK_N,), 1 << (BITS - 1), tl.float32)
        w = (u.to(tl.float32) - z[None, :]) * s[None, :]
        if IEEE:
            acc += tl.dot(x, w.to(x.dtype), input_precision="ieee")
        else:
            acc += tl.dot(x, w.to(x.dtype))
    split_k_epilogue(acc, bias_ptr, c_ptr, ws_ptr, rm, rn, mask_m, mask_n, stride_cm, pid_k,
                     HAS_BIAS, SPLIT_K)


def w4a16_gemm(x2: torch.Tensor, qweight, scales, zeros, bits: int, group_size: int,
               bias) -> torch.Tensor:
    """x2 (M, K) float; returns (M, N) in x2's dtype."""
    from .gemm_int import m_bucket
    bounds.rows("linear_w4a16", "x", x2)
    bounds.linear_w4a16(x2, qweight, scales, zeros, bits, group_size, bias)
    M, K = x2.shape
    N = qweight.shape[0]
    s = scales.to(torch.float32).reshape(N, -1).contiguous()
    G = s.shape[1]
    gs = K // G
    z = zeros.to(torch.int32).reshape(N, G).contiguous() if zeros is not None else s
    out = torch.empty((M, N), device=x2.device, dtype=x2.dtype)
    # split-K (only tried for M <= 64) adds into a zeroed fp32 workspace
    ws = torch.zeros((M, N), device=x2.device, dtype=torch.float32) if M <= 64 else out
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(N, meta["BLOCK_N"]),
                         meta["SPLIT_K"])
    bias_t = bias.contiguous() if bias is not None else s
    _w4a16_kernel[grid](x2, qweight, s, z, bias_t, out, ws, M, N, K, m_bucket(M),
                        x2.stride(0), qweight.stride(0), out.stride(0), G,
                        BITS=bits, GROUP_SIZE=gs, HAS_ZERO=zeros is not None,
                        HAS_BIAS=bias is not None,
                        IEEE=x2.dtype == torch.float32 or interpreting())
    if _w4a16_kernel.best_config.kwargs["SPLIT_K"] > 1:
        out.copy_(ws)
    return out

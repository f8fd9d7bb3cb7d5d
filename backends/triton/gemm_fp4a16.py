"""FP4 weight-only GEMM (qpass::linear_fp4a16: nvfp4, mxfp4) on any GPU: the E2M1 nibbles of
the canonical packed stream (code k at bits 4·(k mod 8) of word k/8) and their uint8 block
scales are decoded in registers with integer arithmetic (no fp8 conversion instruction, so
sm_80 runs it too): e2m1 = ±{0, 0.5} or ±2^(e−1)·(1 + m/2); E4M3 scale = 2^(e−7)·(1 + m/8)
(2^−9·m subnormal); E8M0 = 2^(c−127). Their product is exact in fp16 and bf16 (6 significant
bits at most), so the tile fed to tl.dot in the activations' dtype is the reference's
(qpass/formats/float_linear.fp4_weight_tile); fp32 accumulation; nvfp4's global scale
divides once per output (y = acc / G + bias). Small M splits K (fp32 atomics)."""
from __future__ import annotations

import torch

from .. import bounds
from ._common import configs, interpreting, nibble_tile, split_k_epilogue, tl, triton
from .gemm_w4a16 import _FULL, _TINY


def _prune(configs_, named_args, **kw):
    M = named_args["M_BUCKET"]
    ok = [c for c in configs_ if (c.kwargs["SPLIT_K"] == 1 or M <= 64)
          and (c.kwargs["BLOCK_M"] <= 32 or M > 64)]
    return ok or configs_[-1:]


@triton.jit
def _pow2(e):
    """2^e in fp32 for integer e in the normal range."""
    return ((e + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _e2m1(c):
    m = (c & 1).to(tl.float32)
    e = (c >> 1) & 3
    mag = tl.where(e == 0, m * 0.5, _pow2(e - 1) * (1.0 + 0.5 * m))
    return tl.where((c & 8) != 0, -mag, mag)


@triton.jit
def _block_scale(c, E8M0: tl.constexpr):
    if E8M0:
        # c = 0 is 2^-127, a float32 subnormal the exponent-bits trick cannot build
        return tl.where(c == 0, 5.877471754111438e-39, (c << 23).to(tl.float32, bitcast=True))
    e = (c >> 3) & 15
    m = (c & 7).to(tl.float32)
    return tl.where(e == 0, m * 0.001953125, _pow2(e - 7) * (1.0 + 0.125 * m))


@triton.autotune(configs=configs(_FULL, _TINY), key=["M_BUCKET", "N", "K", "BLOCK", "E8M0"],
                 prune_configs_by={"early_config_prune": _prune}, reset_to_zero=["ws_ptr"])
@triton.jit
def _fp4a16_kernel(x_ptr, q_ptr, s_ptr, g_ptr, bias_ptr, c_ptr, ws_ptr, M, N, K, M_BUCKET,
                   stride_xm, stride_qn, stride_sn, stride_cm,
                   BLOCK: tl.constexpr, E8M0: tl.constexpr, HAS_BIAS: tl.constexpr,
                   IEEE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
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
        codes = nibble_tile(q_ptr, rn, mask_n, stride_qn, k0, K, BLOCK_K, BLOCK_N)
        sc = tl.load(s_ptr + rn[None, :] * stride_sn + (kk // BLOCK)[:, None],
                     mask=mask_n[None, :] & mask_k[:, None], other=0).to(tl.int32)
        w = _e2m1(codes) * _block_scale(sc, E8M0)
        if IEEE:
            acc += tl.dot(x, w.to(x.dtype), input_precision="ieee")
        else:
            acc += tl.dot(x, w.to(x.dtype))
    if not E8M0:
        acc = acc / tl.load(g_ptr)
    split_k_epilogue(acc, bias_ptr, c_ptr, ws_ptr, rm, rn, mask_m, mask_n, stride_cm, pid_k,
                     HAS_BIAS, SPLIT_K)


def fp4a16_gemm(x2: torch.Tensor, qweight, scales, global_scale, bias, block: int,
                scale_format: str) -> torch.Tensor:
    """x2 (M, K) float; returns (M, N) in x2's dtype."""
    from .gemm_int import m_bucket
    bounds.rows("linear_fp4a16", "x", x2)
    bounds.linear_fp4a16(x2, qweight, scales, global_scale, bias, block, scale_format)
    M, K = x2.shape
    N = qweight.shape[0]
    q, s = qweight.contiguous(), scales.contiguous()
    out = torch.empty((M, N), device=x2.device, dtype=x2.dtype)
    ws = torch.zeros((M, N), device=x2.device, dtype=torch.float32) if M <= 64 else out
    g = global_scale.contiguous() if global_scale is not None else out
    bias_t = bias.contiguous() if bias is not None else out
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(N, meta["BLOCK_N"]),
                         meta["SPLIT_K"])
    _fp4a16_kernel[grid](x2, q, s, g, bias_t, out, ws, M, N, K, m_bucket(M),
                         x2.stride(0), q.stride(0), s.stride(0), out.stride(0),
                         BLOCK=block, E8M0=scale_format == "e8m0", HAS_BIAS=bias is not None,
                         IEEE=x2.dtype == torch.float32 or interpreting())
    if _fp4a16_kernel.best_config.kwargs["SPLIT_K"] > 1:
        out.copy_(ws)
    return out

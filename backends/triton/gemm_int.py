"""Integer GEMMs: W8A8, W4A8, W4A4 (per-token dynamic activations × symmetric weights).

A (M, K) int8 codes from the per-token quant kernel; B is int8 (N, K) for W8A8 or the
canonical packed int4 stream (N, K/8 int32, code k at bits 4·(k mod 8) of word k/8) unpacked in
registers to int8 (u − 8). The MMA is int8 × int8 → int32 (tensor cores on sm_80+; Hopper has
no int4 MMA, so int4 operands ride on the int8 path). Epilogue (same order as the reference):
facc += fp32(acc_g) · w_scale[:, g] at each group end; y = facc · x_scale + bias.
With FP8 the same kernel is the fp8 W8A8 GEMM (gemm_fp8.py): uint8 E4M3 codes on both sides
bitcast to float8e4nv, fp32 accumulation, a last group that may end short of the group size
(fp8 b<k> blocks), and one static x_scale when STATIC."""
from __future__ import annotations

import torch

from .. import bounds
from ._common import configs, grouped_tile, nibble_tile, tl, triton

_FULL = [
    # Hopper: big tiles, deep pipelines
    dict(BLOCK_M=128, BLOCK_N=256, BLOCK_K=128, GROUP_M=8, num_warps=8, num_stages=3),
    dict(BLOCK_M=256, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, num_warps=8, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, num_warps=8, num_stages=4),
    dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, GROUP_M=8, num_warps=4, num_stages=4),
    # Ampere and small M
    dict(BLOCK_M=64, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, num_warps=4, num_stages=3),
    dict(BLOCK_M=32, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, num_warps=4, num_stages=4),
    dict(BLOCK_M=16, BLOCK_N=64, BLOCK_K=256, GROUP_M=8, num_warps=4, num_stages=4),
    dict(BLOCK_M=16, BLOCK_N=128, BLOCK_K=128, GROUP_M=8, num_warps=4, num_stages=3),
]
_TINY = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, GROUP_M=1, num_warps=4, num_stages=1)


def _prune(configs_, named_args, **kw):
    """BLOCK_K must divide the group (a tile never spans two weight groups)."""
    gs = kw.get("GROUP_SIZE", named_args.get("GROUP_SIZE", 0))
    ok = [c for c in configs_ if gs == 0 or gs % c.kwargs["BLOCK_K"] == 0]
    return ok or configs_[-1:]


@triton.autotune(configs=configs(_FULL, _TINY),
                 key=["M_BUCKET", "N", "K", "W_BITS", "GROUP_SIZE", "FP8", "STATIC"],
                 prune_configs_by={"early_config_prune": _prune})
@triton.jit
def _int_gemm_kernel(a_ptr, b_ptr, sx_ptr, sw_ptr, bias_ptr, c_ptr, M, N, K, M_BUCKET,
                     stride_am, stride_bn, stride_cm, n_groups,
                     W_BITS: tl.constexpr, GROUP_SIZE: tl.constexpr, HAS_BIAS: tl.constexpr,
                     FP8: tl.constexpr, STATIC: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                     GROUP_M: tl.constexpr):
    rm, rn = grouped_tile(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rk = tl.arange(0, BLOCK_K)
    mask_m, mask_n = rm < M, rn < N
    if FP8:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    facc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        mask_k = kk < K
        a = tl.load(a_ptr + rm[:, None] * stride_am + kk[None, :],
                    mask=mask_m[:, None] & mask_k[None, :], other=0)
        if W_BITS == 8:
            b = tl.load(b_ptr + rn[None, :] * stride_bn + kk[:, None],
                        mask=mask_n[None, :] & mask_k[:, None], other=0)
        else:
            b = (nibble_tile(b_ptr, rn, mask_n, stride_bn, k0, K, BLOCK_K, BLOCK_N) - 8
                 ).to(tl.int8)
        if FP8:
            acc = tl.dot(a.to(tl.float8e4nv, bitcast=True), b.to(tl.float8e4nv, bitcast=True),
                         acc, out_dtype=tl.float32)
        else:
            acc += tl.dot(a, b, out_dtype=tl.int32)
        if GROUP_SIZE > 0:
            # a group ends here, or K does (fp8 b<k> blocks: the last group may be short)
            if ((k0 + BLOCK_K) % GROUP_SIZE == 0) | (k0 + BLOCK_K >= K):
                sw = tl.load(sw_ptr + rn * n_groups + k0 // GROUP_SIZE, mask=mask_n, other=0.0)
                facc = facc + acc.to(tl.float32) * sw[None, :]
                acc = tl.zeros_like(acc)
    if GROUP_SIZE == 0:
        sw = tl.load(sw_ptr + rn, mask=mask_n, other=0.0)
        facc = acc.to(tl.float32) * sw[None, :]
    if STATIC:
        y = facc * tl.load(sx_ptr)
    else:
        y = facc * tl.load(sx_ptr + rm, mask=mask_m, other=0.0)[:, None]
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + rn, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    tl.store(c_ptr + rm[:, None] * stride_cm + rn[None, :], y.to(c_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_n[None, :])


def m_bucket(M: int) -> int:
    """Autotune key for M: powers of two, so a new sequence length does not re-tune."""
    return 1 << max(0, (M - 1).bit_length())


def int_gemm(xq: torch.Tensor, xs: torch.Tensor, w: torch.Tensor, w_scales: torch.Tensor,
             bias, out_dtype, w_bits: int, group_size: int) -> torch.Tensor:
    """xq (M, K) int8, xs (M, 1) fp32, w int8 (N, K) or packed int4 (N, K/8) int32;
    group_size 0 is one group per row (as in the reference backend), else it must match the
    scales' (N, K/group_size) shape."""
    bounds.rows("linear_int_codes", "the activation codes", xq)
    bounds.linear_int_codes(xq, xs, w, w_scales, bias, w_bits, group_size, out_dtype)
    return scaled_gemm(xq, xs, w, w_scales, bias, out_dtype, w_bits, group_size)


def scaled_gemm(xq, xs, w, w_scales, bias, out_dtype, w_bits: int, group_size: int,
                fp8: bool = False, static: bool = False) -> torch.Tensor:
    """The launch behind int_gemm and gemm_fp8.fp8_gemm, operands already checked: with fp8,
    xq and w are uint8 E4M3 codes (M, K), (N, K) and xs one static scale when `static`."""
    M, K = xq.shape
    N = w.shape[0]
    sw = w_scales.to(torch.float32).reshape(N, -1).contiguous()
    G = sw.shape[1]
    gs = 0 if G == 1 else group_size
    out = torch.empty((M, N), device=xq.device, dtype=out_dtype)
    bias_t = bias.contiguous() if bias is not None else sw
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)
    _int_gemm_kernel[grid](xq, w, xs.contiguous(), sw, bias_t, out, M, N, K, m_bucket(M),
                           xq.stride(0), w.stride(0), out.stride(0), G,
                           W_BITS=w_bits, GROUP_SIZE=gs, HAS_BIAS=bias is not None, FP8=fp8,
                           STATIC=static)
    return out

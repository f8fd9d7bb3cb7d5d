"""W4A16 on the repacked int4 layout (w4_layout.py): one int32 load per (word row, column)
unpacks straight into the K-major operand of `tl.dot`, dequantized in the activation dtype.

Per K tile of TILE_K rows the program loads the (S, BLOCK_N) words once (S = TILE_K/8); for
each nibble j it loads the matching (BLOCK_M, S) slice of x, forms (u_j − z)·s in x's dtype
(bf16 on a GPU, fp16/fp32 under the interpreter) with the scale row of that sub-block's group
and accumulates tl.dot in fp32. No reshape, so no register layout conversion per tile.

Two regimes, chosen by M (not left to the autotuner, whose key buckets M anyway):
  * M <= SMALL_M (the cached denoising step): memory-bound; BLOCK_M = 16 and split-K (fp32
    atomics into a zeroed workspace) so every SM streams its share of the weights;
  * larger M: compute-bound; large tiles, no split."""
from __future__ import annotations

import torch

from qpass.errors import BackendError

from .. import bounds
from ._common import configs, interpreting, split_k_epilogue, tl, triton
from .w4_layout import RepackedW4

SMALL_M = 32

_SMALL = [
    dict(BLOCK_M=16, BLOCK_N=64, SPLIT_K=4, num_warps=4, num_stages=4),
    dict(BLOCK_M=16, BLOCK_N=128, SPLIT_K=4, num_warps=4, num_stages=4),
    dict(BLOCK_M=16, BLOCK_N=64, SPLIT_K=8, num_warps=4, num_stages=3),
    dict(BLOCK_M=16, BLOCK_N=128, SPLIT_K=2, num_warps=4, num_stages=4),
    dict(BLOCK_M=32, BLOCK_N=64, SPLIT_K=2, num_warps=4, num_stages=4),
    dict(BLOCK_M=16, BLOCK_N=256, SPLIT_K=1, num_warps=8, num_stages=3),
]
_LARGE = [
    dict(BLOCK_M=128, BLOCK_N=128, SPLIT_K=1, num_warps=8, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=256, SPLIT_K=1, num_warps=8, num_stages=3),
    dict(BLOCK_M=64, BLOCK_N=128, SPLIT_K=1, num_warps=4, num_stages=4),
    dict(BLOCK_M=64, BLOCK_N=256, SPLIT_K=1, num_warps=8, num_stages=3),
    dict(BLOCK_M=128, BLOCK_N=64, SPLIT_K=1, num_warps=4, num_stages=4),
]
# the interpreter runs one small config per regime (split-K exercised on the small one)
_SMALL_TINY = dict(BLOCK_M=16, BLOCK_N=32, SPLIT_K=2, num_warps=4, num_stages=1)
_LARGE_TINY = dict(BLOCK_M=32, BLOCK_N=32, SPLIT_K=1, num_warps=4, num_stages=1)


@triton.jit
def _w4_mma_kernel(x_ptr, w_ptr, s_ptr, z_ptr, bias_ptr, c_ptr, ws_ptr, M, N, K, M_BUCKET,
                   n_tiles, n_groups, stride_xm, stride_cm,
                   GROUP_SIZE: tl.constexpr, TILE_K: tl.constexpr, HAS_ZERO: tl.constexpr,
                   HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, BLOCK_M: tl.constexpr,
                   BLOCK_N: tl.constexpr, SPLIT_K: tl.constexpr):
    S: tl.constexpr = TILE_K // 8
    pid_m, pid_n, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rs = tl.arange(0, S)
    mask_m, mask_n = rm < M, rn < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for t in range(pid_k, n_tiles, SPLIT_K):
        words = tl.load(w_ptr + (t * S + rs)[:, None] * N + rn[None, :], mask=mask_n[None, :],
                        other=0)
        for j in tl.static_range(8):
            k0 = t * TILE_K + j * S
            kk = k0 + rs
            x = tl.load(x_ptr + rm[:, None] * stride_xm + kk[None, :],
                        mask=mask_m[:, None] & (kk < K)[None, :], other=0.0)
            g = tl.minimum(k0 // GROUP_SIZE, n_groups - 1)     # padded tail: any group (x = 0)
            s = tl.load(s_ptr + g * N + rn, mask=mask_n, other=0.0).to(x.dtype)
            u = (words >> (4 * j)) & 0xF
            if HAS_ZERO:
                z = tl.load(z_ptr + g * N + rn, mask=mask_n, other=0)
                w = (u - z[None, :]).to(x.dtype) * s[None, :]
            else:
                w = (u - 8).to(x.dtype) * s[None, :]
            if IEEE:
                acc += tl.dot(x, w, input_precision="ieee")
            else:
                acc += tl.dot(x, w)
    split_k_epilogue(acc, bias_ptr, c_ptr, ws_ptr, rm, rn, mask_m, mask_n, stride_cm, pid_k,
                     HAS_BIAS, SPLIT_K)


_KEY = ["M_BUCKET", "N", "K", "GROUP_SIZE", "HAS_ZERO"]
_small_kernel = triton.autotune(configs=configs(_SMALL, _SMALL_TINY), key=_KEY,
                                reset_to_zero=["ws_ptr"])(_w4_mma_kernel)
_large_kernel = triton.autotune(configs=configs(_LARGE, _LARGE_TINY), key=_KEY)(_w4_mma_kernel)


def regime(M: int) -> str:
    return "small" if M <= SMALL_M else "large"


def _check(x2, r: RepackedW4, bias) -> None:
    """The repacked operands fit x2 and each other (w4_layout.py's shapes), else BackendError."""
    op = "linear_w4a16"
    bounds.rows(op, "x", x2)
    K, dev = x2.shape[1], x2.device
    if not isinstance(r, RepackedW4) or r.K != K or r.tile_k % 128 or r.tile_k <= 0 or \
            r.group_size <= 0 or K % r.group_size:
        raise BackendError(f"qpass::{op}: the repacked weight (K={getattr(r, 'K', None)}, group "
                           f"{getattr(r, 'group_size', None)}) does not fit activations of K={K}")
    rows = -(-K // r.tile_k) * r.tile_k // 8
    p = bounds.tensor(op, "the repacked weight", r.packed, (torch.int32,), None, dev)
    N = p.shape[1] if p.dim() == 2 else -1
    bounds.tensor(op, "the repacked weight", p, (torch.int32,), (rows, N), dev)
    G = K // r.group_size
    bounds.tensor(op, "the repacked scales", r.scales, (torch.float32,), (G, N), dev)
    if r.zeros is not None:
        bounds.tensor(op, "the repacked zeros", r.zeros, (torch.int32,), (G, N), dev)
    if bias is not None:
        bounds.tensor(op, "bias", bias, bounds.FLOATS, (N,), dev)
    for t in (p, r.scales, r.zeros):
        if t is not None and not t.is_contiguous():
            raise BackendError(f"qpass::{op}: the repacked tensors must be contiguous")


def w4a16_mma(x2: torch.Tensor, r: RepackedW4, bias) -> torch.Tensor:
    """x2 (M, K) float (row stride free, unit column stride) -> (M, N) in x2's dtype."""
    from .gemm_int import m_bucket
    _check(x2, r, bias)
    M, K = x2.shape
    N = r.packed.shape[1]
    out = torch.empty((M, N), device=x2.device, dtype=x2.dtype)
    small = regime(M) == "small"
    kernel = _small_kernel if small else _large_kernel
    ws = torch.zeros((M, N), device=x2.device, dtype=torch.float32) if small else out
    z = r.zeros if r.zeros is not None else r.scales
    bias_t = bias.contiguous() if bias is not None else r.scales
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(N, meta["BLOCK_N"]),
                         meta["SPLIT_K"])
    kernel[grid](x2, r.packed, r.scales, z, bias_t, out, ws, M, N, K, m_bucket(M),
                 r.n_tiles, r.scales.shape[0], x2.stride(0), out.stride(0),
                 GROUP_SIZE=r.group_size, TILE_K=r.tile_k, HAS_ZERO=r.zeros is not None,
                 HAS_BIAS=bias is not None,
                 IEEE=x2.dtype == torch.float32 or interpreting())
    if small and kernel.best_config.kwargs["SPLIT_K"] > 1:
        out.copy_(ws)         # SPLIT_K == 1 stored straight into `out`
    return out

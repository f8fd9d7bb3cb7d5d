"""FP8 W8A8 (qpass::linear_fp8): E4M3 activations × E4M3 weights on float8 tensor cores
(`tl.dot` on float8e4nv operands: compute capability 8.9+, Ada / Hopper; TritonBackend
declines older GPUs and the registry falls back to the reference backend).

quant: one program per BLOCK_M rows; s = max(absmax / 448, FLOOR) per row (or the static
per-tensor scale), v = x / s (IEEE division) rounded to the nearest E4M3 value, ties to even,
saturating at ±448 — qpass.formats.minifloat.round_to in registers: the binade's quantum 2^e
from the exponent bits, the 1.5·2^23 trick for half-to-even — then its bit pattern built from
the value's own bits. No float→fp8 conversion instruction is used, so the codes do not depend
on a conversion's rounding mode (the Triton interpreter's rounds ties away from zero and does
not saturate). GEMM: gemm_int.py's kernel with FP8 — uint8 codes bitcast to float8e4nv, fp32
accumulation flushed per weight group: facc += acc_g · w_scale[:, g]; y = facc·x_scale + bias."""
from __future__ import annotations

import torch

from .. import bounds
from ._common import ROUND_MAGIC, SCALE_FLOOR, rows_absmax, tl, triton
from .gemm_int import scaled_gemm

@triton.jit
def _e4m3_code(v):
    """uint8 E4M3 code of the fp32 value v rounded to E4M3 (ties to even, saturating)."""
    a = tl.abs(v)
    e = ((a.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    e = tl.minimum(tl.maximum(e, -6), 9) - 3                 # quantum 2^e (emin −6, emax 8)
    up = ((e + 127) << 23).to(tl.float32, bitcast=True)
    down = ((127 - e) << 23).to(tl.float32, bitcast=True)
    r = tl.minimum(((a * down + ROUND_MAGIC) - ROUND_MAGIC) * up, 448.0)
    bits = r.to(tl.int32, bitcast=True)
    ex = ((bits >> 23) & 0xFF) - 127
    normal = ((ex + 7) << 3) | ((bits >> 20) & 7)
    sub = (r * 512.0).to(tl.int32)                           # subnormals: m · 2^-9
    mag = tl.where(ex >= -6, normal, sub)
    sign = (v.to(tl.int32, bitcast=True) >> 31) & 1
    return (mag | (sign << 7)).to(tl.uint8)


@triton.jit
def _fp8_quant_kernel(x_ptr, q_ptr, s_ptr, M, K, stride_xm, stride_qm, STATIC: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = tl.arange(0, BLOCK_K)
    mask_m = rm < M
    if STATIC:
        s = tl.load(s_ptr + rm * 0)
    else:
        amax = rows_absmax(x_ptr, rm, mask_m, stride_xm, K, BLOCK_M, BLOCK_K)
        s = tl.maximum(tl.math.div_rn(amax, 448.0), SCALE_FLOOR)
        tl.store(s_ptr + rm, s, mask=mask_m)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        m2 = mask_m[:, None] & (kk < K)[None, :]
        x = tl.load(x_ptr + rm[:, None] * stride_xm + kk[None, :], mask=m2, other=0.0)
        code = _e4m3_code(tl.math.div_rn(x.to(tl.float32), s[:, None]))
        tl.store(q_ptr + rm[:, None] * stride_qm + kk[None, :], code, mask=m2)


def fp8_quant_rows(x2: torch.Tensor, x_scale: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 E4M3 codes (M, K), float32 scales (M, 1), or x_scale itself when static)."""
    bounds.rows("linear_fp8", "x", x2)
    M, K = x2.shape
    q = torch.empty((M, K), device=x2.device, dtype=torch.uint8)
    s = x_scale.to(torch.float32).reshape(1).contiguous() if x_scale is not None else \
        torch.empty((M, 1), device=x2.device, dtype=torch.float32)
    BLOCK_M, BLOCK_K = 4, min(1024, triton.next_power_of_2(K))
    _fp8_quant_kernel[(triton.cdiv(M, BLOCK_M),)](x2, q, s, M, K, x2.stride(0), q.stride(0),
                                                  STATIC=x_scale is not None, BLOCK_M=BLOCK_M,
                                                  BLOCK_K=BLOCK_K)
    return q, s.reshape(-1, 1)


def fp8_gemm(x2: torch.Tensor, w_fp8: torch.Tensor, w_scales: torch.Tensor,
             x_scale: torch.Tensor | None, bias, group_size: int) -> torch.Tensor:
    """x2 (M, K) float; w_fp8 uint8 (N, K) E4M3 codes; returns (M, N) in x2's dtype."""
    bounds.linear_fp8(x2, w_fp8, w_scales, x_scale, bias, group_size)
    xq, xs = fp8_quant_rows(x2, x_scale)
    w = w_fp8 if w_fp8.stride(1) == 1 else w_fp8.contiguous()
    return scaled_gemm(xq, xs, w, w_scales, bias, x2.dtype, 8, group_size, fp8=True,
                       static=x_scale is not None)

"""Per-token activation quantization and the online Hadamard transform.

quant: one program per BLOCK_M rows; pass 1 takes |x|max over K in chunks, pass 2 writes
q = rint(x / s) (round half to even by the 1.5·2^23 trick, IEEE division) clamped to the
signed range, with s = max(absmax / DIV, FLOOR) — the formats.quantize_per_token rule, DIV the
grid's QuantSpec.sym_divisor ((2^b−1)/2 full, 2^(b−1)−1 restricted; exact in fp32).

hadamard: for n = A·B (powers of two, 16 ≤ A, B ≤ 128) the Sylvester matrix factors as
H_n = H_A ⊗ H_B, so a row viewed as an (A, B) matrix X maps to H_A · X · H_Bᵀ: two small
tensor-core products per row (fp32 in IEEE mode) instead of log2(n) butterfly passes. The fused
variant quantizes the transformed row before it leaves registers."""
from __future__ import annotations

import math

import torch

from qpass.errors import BackendError
from qpass.specs import QuantSpec

from .. import bounds
from ._common import ROUND_MAGIC, SCALE_FLOOR, hadamard_split, rows_absmax, tl, triton


@triton.jit
def _rint(v):
    return (v + ROUND_MAGIC) - ROUND_MAGIC


@triton.jit
def _quant_kernel(x_ptr, q_ptr, s_ptr, M, K, stride_xm, stride_qm,
                  QMAX: tl.constexpr, DIV: tl.constexpr, BLOCK_M: tl.constexpr,
                  BLOCK_K: tl.constexpr):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = tl.arange(0, BLOCK_K)
    mask_m = rm < M
    amax = rows_absmax(x_ptr, rm, mask_m, stride_xm, K, BLOCK_M, BLOCK_K)
    s = tl.maximum(tl.math.div_rn(amax, DIV), SCALE_FLOOR)
    tl.store(s_ptr + rm, s, mask=mask_m)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        m2 = mask_m[:, None] & (kk < K)[None, :]
        x = tl.load(x_ptr + rm[:, None] * stride_xm + kk[None, :], mask=m2, other=0.0)
        q = _rint(tl.math.div_rn(x.to(tl.float32), s[:, None]))
        q = tl.minimum(tl.maximum(q, -QMAX - 1.0), QMAX * 1.0)
        tl.store(q_ptr + rm[:, None] * stride_qm + kk[None, :], q.to(tl.int8), mask=m2)


@triton.jit
def _hadamard_kernel(x_ptr, sg_ptr, ha_ptr, hb_ptr, out_ptr, s_ptr, inv_sqrt_n, stride_xm,
                     stride_om, A: tl.constexpr, B: tl.constexpr, HAS_SIGNS: tl.constexpr,
                     QUANT: tl.constexpr, QMAX: tl.constexpr, DIV: tl.constexpr):
    row = tl.program_id(0)
    ra, rb = tl.arange(0, A), tl.arange(0, B)
    idx = ra[:, None] * B + rb[None, :]
    x = tl.load(x_ptr + row * stride_xm + idx).to(tl.float32)
    if HAS_SIGNS:
        x = x * tl.load(sg_ptr + idx)
    ha = tl.load(ha_ptr + ra[:, None] * A + ra[None, :])
    hbt = tl.load(hb_ptr + rb[None, :] * B + rb[:, None])   # H_Bᵀ (H_B is symmetric anyway)
    y = tl.dot(ha, x, input_precision="ieee")
    y = tl.dot(y, hbt, input_precision="ieee") * inv_sqrt_n
    if QUANT:
        amax = tl.max(tl.max(tl.abs(y), axis=1), axis=0)
        s = tl.maximum(tl.math.div_rn(amax, DIV), SCALE_FLOOR)
        tl.store(s_ptr + row, s)
        q = tl.minimum(tl.maximum(_rint(tl.math.div_rn(y, s)), -QMAX - 1.0), QMAX * 1.0)
        tl.store(out_ptr + row * stride_om + idx, q.to(tl.int8))
    else:
        tl.store(out_ptr + row * stride_om + idx, y.to(out_ptr.dtype.element_ty))


_H_CACHE: dict = {}


def _sylvester(m: int, device) -> torch.Tensor:
    key = (m, str(device))
    if key not in _H_CACHE:
        h = torch.ones(1, 1)
        while h.shape[0] < m:
            h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
        _H_CACHE[key] = h.to(device=device, dtype=torch.float32).contiguous()
    return _H_CACHE[key]


def _divisor(bits: int, grid: str) -> float:
    return QuantSpec(bits, granularity="token", grid=grid).sym_divisor


def quant_rows(x2: torch.Tensor, bits: int, grid: str = "full") -> tuple[torch.Tensor, torch.Tensor]:
    bounds.rows("quant_per_token", "x", x2)
    bounds.quant_per_token(x2, bits, False, None, grid)
    M, K = x2.shape
    q = torch.empty((M, K), device=x2.device, dtype=torch.int8)
    s = torch.empty((M, 1), device=x2.device, dtype=torch.float32)
    block_m = 4
    block_k = min(1024, triton.next_power_of_2(max(K, 16)))
    _quant_kernel[(triton.cdiv(M, block_m),)](x2, q, s, M, K, x2.stride(0), q.stride(0),
                                              QMAX=(1 << (bits - 1)) - 1,
                                              DIV=_divisor(bits, grid), BLOCK_M=block_m,
                                              BLOCK_K=block_k, num_warps=4)
    return q, s


def hadamard_rows(x2: torch.Tensor, signs, quant_bits: int | None, grid: str = "full"):
    """Transform (and optionally quantize) each row of x2 (M, n)."""
    bounds.rows("hadamard", "x", x2)
    bounds.hadamard(x2, signs)
    M, n = x2.shape
    if hadamard_split(n) is None:
        raise BackendError(f"qpass::hadamard: the Triton kernel takes rows of 2^k elements, "
                           f"256 <= n <= 16384, got n={n}")
    a, b = hadamard_split(n)
    if quant_bits is not None:
        bounds.quant_per_token(x2, quant_bits, True, signs, grid)
    sg = signs.to(device=x2.device, dtype=torch.float32).contiguous() if signs is not None else x2
    if quant_bits is None:
        out, s = torch.empty_like(x2), x2
    else:
        out = torch.empty((M, n), device=x2.device, dtype=torch.int8)
        s = torch.empty((M, 1), device=x2.device, dtype=torch.float32)
    if M:
        _hadamard_kernel[(M,)](x2, sg, _sylvester(a, x2.device), _sylvester(b, x2.device), out, s,
                               1.0 / math.sqrt(n), x2.stride(0), out.stride(0), A=a, B=b,
                               HAS_SIGNS=signs is not None, QUANT=quant_bits is not None,
                               QMAX=(1 << ((quant_bits or 8) - 1)) - 1,
                               DIV=_divisor(quant_bits or 8, grid),
                               num_warps=4 if n <= 4096 else 8)
    return out if quant_bits is None else (out, s)

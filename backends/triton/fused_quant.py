"""Per-token activation quantization fused into the op that produces the activation: RMSNorm
and the MLP's silu(gate)·up emit int8 codes + fp32 per-token scales directly, so the integer
linear that consumes them (qpass::linear_int_codes) never sees the float activation and no
separate quantization pass reads it back.

One program per row keeps the whole row in registers (rows up to MAX_ROW): one read of the
inputs, one write of the codes. The float math follows the unfused path step by step (fp32,
rounded to the activation dtype where the model rounds), then the quantizer rule of quant.py
(s = max(absmax / DIV, FLOOR) by IEEE division, q = rint(y / s) half to even, clamped), so the
codes equal quant_per_token of the kernel's own normalized row bit for bit."""
from __future__ import annotations

import torch

from qpass.specs import QuantSpec

from .. import bounds
from ._common import SCALE_FLOOR, tl, triton
from .quant import _rint

MAX_ROW = 32768


@triton.jit
def _store_quantized_row(y, mask, q_ptr, s_ptr, row, stride_qm, cols,
                         QMAX: tl.constexpr, DIV: tl.constexpr):
    amax = tl.max(tl.where(mask, tl.abs(y), 0.0), axis=0)
    s = tl.maximum(tl.math.div_rn(amax, DIV), SCALE_FLOOR)
    tl.store(s_ptr + row, s)
    q = tl.minimum(tl.maximum(_rint(tl.math.div_rn(y, s)), -QMAX - 1.0), QMAX * 1.0)
    tl.store(q_ptr + row * stride_qm + cols, q.to(tl.int8), mask=mask)


@triton.jit
def _rmsnorm_quant_kernel(x_ptr, w_ptr, q_ptr, s_ptr, y_ptr, K, stride_xm, stride_qm, eps,
                          QMAX: tl.constexpr, DIV: tl.constexpr, BLOCK: tl.constexpr,
                          STORE_Y: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < K
    xin = tl.load(x_ptr + row * stride_xm + cols, mask=mask, other=0.0)
    x = xin.to(tl.float32)
    ms = tl.math.div_rn(tl.sum(x * x, axis=0), K * 1.0)
    rstd = tl.math.div_rn(1.0, tl.math.sqrt_rn(ms + eps))
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    y = ((x * rstd) * w).to(xin.dtype)                  # the norm's output dtype
    if STORE_Y:
        tl.store(y_ptr + row * K + cols, y, mask=mask)
    _store_quantized_row(y.to(tl.float32), mask, q_ptr, s_ptr, row, stride_qm, cols, QMAX, DIV)


@triton.jit
def _silu_mul_quant_kernel(g_ptr, u_ptr, q_ptr, s_ptr, y_ptr, K, stride_gm, stride_um,
                           stride_qm, QMAX: tl.constexpr, DIV: tl.constexpr,
                           BLOCK: tl.constexpr, STORE_Y: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < K
    gin = tl.load(g_ptr + row * stride_gm + cols, mask=mask, other=0.0)
    g = gin.to(tl.float32)
    u = tl.load(u_ptr + row * stride_um + cols, mask=mask, other=0.0).to(tl.float32)
    h = (g / (1.0 + tl.exp(-g))).to(gin.dtype)          # F.silu rounds to the input dtype
    y = (h.to(tl.float32) * u).to(gin.dtype)            # and so does the product
    if STORE_Y:
        tl.store(y_ptr + row * K + cols, y, mask=mask)
    _store_quantized_row(y.to(tl.float32), mask, q_ptr, s_ptr, row, stride_qm, cols, QMAX, DIV)


def _launch_args(K: int, bits: int, grid: str):
    spec = QuantSpec(bits, granularity="token", dynamic=True, grid=grid)
    block = triton.next_power_of_2(K)
    warps = 4 if block <= 4096 else 8 if block <= 8192 else 16
    return dict(QMAX=spec.qmax, DIV=spec.sym_divisor, BLOCK=block, num_warps=warps)


def _outputs(x2: torch.Tensor, want_y: bool):
    M, K = x2.shape
    q = torch.empty((M, K), device=x2.device, dtype=torch.int8)
    s = torch.empty((M, 1), device=x2.device, dtype=torch.float32)
    y = torch.empty((M, K), device=x2.device, dtype=x2.dtype) if want_y else q
    return q, s, y


def rmsnorm_quant_rows(x2, weight, eps: float, bits: int, grid: str, want_y: bool = False):
    """x2 (M, K) -> codes (M, K) int8, scales (M, 1) fp32[, the normalized rows]."""
    bounds.rows("rmsnorm_quant", "x", x2)
    bounds.rmsnorm_quant(x2, weight, eps, bits, grid)
    M, K = x2.shape
    q, s, y = _outputs(x2, want_y)
    _rmsnorm_quant_kernel[(M,)](x2, weight.contiguous(), q, s, y, K, x2.stride(0), q.stride(0),
                                float(eps), STORE_Y=want_y, **_launch_args(K, bits, grid))
    return (q, s, y) if want_y else (q, s)


def silu_mul_quant_rows(g2, u2, bits: int, grid: str, want_y: bool = False):
    """gate, up (M, K) -> codes of silu(gate)·up (M, K) int8, scales (M, 1)[, the product]."""
    bounds.rows("silu_mul_quant", "gate", g2)
    bounds.rows("silu_mul_quant", "up", u2)
    bounds.silu_mul_quant(g2, u2, bits, grid)
    M, K = g2.shape
    q, s, y = _outputs(g2, want_y)
    _silu_mul_quant_kernel[(M,)](g2, u2, q, s, y, K, g2.stride(0), u2.stride(0), q.stride(0),
                                 STORE_Y=want_y, **_launch_args(K, bits, grid))
    return (q, s, y) if want_y else (q, s)

"""Exact integer arithmetic on the formats' codes: the unpack fast path, the int8 GEMM emulated
exactly in fp32 chunks, and `integer_linear` — what every integer kernel computes, so that
simulation (ir/qlinear.py) and the reference backend share one implementation.

An int8×int8 product is at most 2^14 in magnitude, so a dot product over ≤ 1024 of them stays
within ±2^24, where every integer is an exact float32: each K-chunk of 1024 is one fp32 matmul,
and chunk sums are added in float64 (exact to 2^53)."""
from __future__ import annotations

import sys

import torch

from .codes import quantize_per_token, to_signed
from .packing import unpack

EXACT_CHUNK = 1024        # K per fp32 matmul: 1024 · 128 · 128 = 2^24, still exact in fp32


# ----- weight unpacking ---------------------------------------------------------------------
_SHIFTS: dict = {}


def _shifts(bits: int, device) -> torch.Tensor:
    key = (bits, str(device))
    if key not in _SHIFTS:
        _SHIFTS[key] = torch.arange(0, 8, bits, dtype=torch.uint8, device=device)
    return _SHIFTS[key]


def unpack_codes(qweight: torch.Tensor, bits: int, K: int) -> torch.Tensor:
    """Canonical bit stream (docs/FORMATS.md) -> unsigned codes (N, K) as uint8.

    For 1/2/4/8 bits no code crosses a byte, and on a little-endian host the int32 words
    viewed as bytes are the stream in order, so codes come from byte shifts on uint8 (a
    quarter of the traffic of int32 shifts). Other widths use formats.unpack."""
    if 8 % bits or sys.byteorder != "little":
        return unpack(qweight, bits, K)
    b = qweight.contiguous().view(torch.uint8)
    if bits == 8:
        codes = b
    else:
        codes = ((b.unsqueeze(-1) >> _shifts(bits, b.device)) & ((1 << bits) - 1))
        codes = codes.reshape(b.shape[0], -1)
    return codes if codes.shape[1] == K else codes[:, :K]


def dequant_weight(qweight, scales, zeros, bits: int, group_size: int, K: int) -> torch.Tensor:
    """(u − z) · s in float32 (the formats.dequantize formula, bit for bit), shape (N, K).
    One float pass plus two in-place passes: cheap next to the matmul when M ≫ 1."""
    w = unpack_codes(qweight, bits, K).to(torch.float32)
    N = w.shape[0]
    G = scales.shape[-1] if scales.dim() == 2 else 1
    view = w.view(N, G, K // G)
    if zeros is None:
        view.sub_(float(1 << (bits - 1)))
    else:
        view.sub_(zeros.to(torch.float32).reshape(-1, G, 1))
    view.mul_(scales.to(torch.float32).reshape(-1, G, 1))
    return w


def signed_weight(qweight, bits: int, K: int) -> torch.Tensor:
    """Symmetric stored codes u -> signed int8 q = u − 2^(b−1), (N, K)."""
    return to_signed(unpack_codes(qweight, bits, K), bits)


# ----- exact integer GEMM -------------------------------------------------------------------
def int_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact a @ b.T for int8 a (M, K), b (N, K), returned as float64 (exact integers)."""
    K = a.shape[-1]
    out = None
    for k0 in range(0, max(K, 1), EXACT_CHUNK):
        part = (a[:, k0:k0 + EXACT_CHUNK].to(torch.float32)
                @ b[:, k0:k0 + EXACT_CHUNK].to(torch.float32).T).to(torch.float64)
        out = part if out is None else out + part
    return out


def _rows(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


def int_linear(x, w_int8, w_scales, bias, act_bits: int, group_size: int,
               act_grid: str = "full") -> torch.Tensor:
    """Per-token dynamic activations (on `act_grid`) × signed weights with the shared epilogue."""
    N = w_int8.shape[0]
    xq, xs = quantize_per_token(_rows(x), act_bits, act_grid)
    y = int_linear_codes(xq, xs, w_int8, w_scales, bias, group_size, x.dtype)
    return y.reshape(*x.shape[:-1], N)


def int_linear_codes(xq, xs, w_int8, w_scales, bias, group_size: int, out_dtype) -> torch.Tensor:
    """Activations already quantized per token — codes xq (..., K) int8, scales xs (..., 1)
    fp32 — × signed weights (N, K), the shared epilogue, output (..., N) in out_dtype."""
    N, K = w_int8.shape
    lead = xq.shape[:-1]
    xq, xs = _rows(xq), xs.reshape(-1, 1).to(torch.float32)
    sw = w_scales.to(torch.float32).reshape(N, -1)
    G = sw.shape[1]
    if G == 1:
        facc = int_matmul(xq, w_int8).to(torch.float32) * sw[:, 0]
    else:
        g = K // G
        facc = None
        for i in range(G):   # in order, as the kernel flushes its per-group int32 sums
            part = int_matmul(xq[:, i * g:(i + 1) * g], w_int8[:, i * g:(i + 1) * g])
            part = part.to(torch.float32) * sw[:, i]
            facc = part if facc is None else facc + part
    y = facc * xs
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(out_dtype).reshape(*lead, N)


def integer_linear(x, qw, bias, act_bits: int, act_grid: str = "full") -> torch.Tensor:
    """The integer-exact W·A product for a symmetric `QuantizedWeight` (any bits, per-channel
    or per-group) with per-token dynamic activations of `act_bits` on `act_grid`."""
    w_int = to_signed(qw.codes(), qw.spec.bits)
    group = qw.spec.group_size if qw.spec.granularity == "group" else 0
    return int_linear(x, w_int, qw.scale, bias, act_bits, group, act_grid)

"""The `reference` backend: pure torch, fp32 compute, runs on any device (DESIGN §6).

Integer paths emulate int32 accumulation exactly. An int8×int8 product is at most 2^14 in
magnitude, so a dot product over ≤ 1024 of them stays within ±2^24, where every integer is an
exact float32: each K-chunk of 1024 is one fp32 matmul (fast on any CPU), and chunk sums are
added in float64 (exact to 2^53). The result equals int32 accumulation for K < 131072 (no int32
overflow), and converting it to float32 rounds exactly as an int32 -> fp32 conversion does.

Epilogue convention shared with the Triton kernels (so both are bit-exact under the
interpreter): facc = Σ_groups fp32(acc_g) · w_scale[:, g]   (one group = per-channel)
           y    = facc · x_scale + bias                     (fp32, then cast to x's dtype)
"""
from __future__ import annotations

import math
import sys

import torch
import torch.nn.functional as F

from qpass import formats, hadamard

from .registry import Backend

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
        return formats.unpack(qweight, bits, K)
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
    return formats.to_signed(unpack_codes(qweight, bits, K), bits)


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


def _int_linear(x, w_int8, w_scales, bias, act_bits: int, group_size: int) -> torch.Tensor:
    """Per-token dynamic activations × signed weights with the shared epilogue."""
    N, K = w_int8.shape
    xq, xs = formats.quantize_per_token(_rows(x), act_bits)
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
    return y.to(x.dtype).reshape(*x.shape[:-1], N)


def integer_linear(x, qw, bias, act_bits: int) -> torch.Tensor:
    """The integer-exact W·A product for a symmetric `formats.QuantizedWeight` (any bits,
    per-channel or per-group): what every integer kernel computes, used by simulation too."""
    N, K = qw.shape
    w_int = formats.to_signed(qw.codes(), qw.spec.bits)
    group = qw.spec.group_size if qw.spec.granularity == "group" else 0
    return _int_linear(x, w_int, qw.scale, bias, act_bits, group)


# ----- kernels (argument lists match qpass.kernel_ops) ----------------------------------------
def linear_w4a16(x, qweight, scales, zeros, bits, group_size, bias):
    K = x.shape[-1]
    w = dequant_weight(qweight, scales, zeros, bits, group_size, K)
    b = bias.to(torch.float32) if bias is not None else None
    return F.linear(x.to(torch.float32), w, b).to(x.dtype)


def linear_w8a8(x, w_int8, w_scales, bias):
    return _int_linear(x, w_int8, w_scales, bias, 8, 0)


def linear_w4a8(x, qweight, w_scales, bias, group_size):
    return _int_linear(x, signed_weight(qweight, 4, x.shape[-1]), w_scales, bias, 8, group_size)


def linear_w4a4(x, qweight, w_scales, bias, group_size):
    return _int_linear(x, signed_weight(qweight, 4, x.shape[-1]), w_scales, bias, 4, group_size)


def hadamard_op(x, signs):
    return hadamard.transform(x, signs=signs)


def quant_per_token(x, bits, use_hadamard, signs):
    if use_hadamard:
        x = hadamard.transform(x.to(torch.float32), signs=signs)
    return formats.quantize_per_token(x, bits)


def quantize_rows_int8(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (last dim) symmetric int8 codes and fp32 scales, as for activations."""
    return formats.quantize_per_token(t, 8)


def attention(q, k, v, key_mask, causal, int8):
    """Bidirectional (or causal) attention on (B, H, L, D); k/v may have fewer heads (GQA).
    fp32 compute (fp64 for fp64 inputs). The float path is SDPA, as qpass.ops.attention, so a
    lowered model matches its simulated twin; a query row with no visible key gives zeros
    (as SDPA and the Triton kernel do). With int8, Q and K are quantized per token (over D) and Q·Kᵀ is an exact
    integer product rescaled by the two scales (P·V stays in fp32)."""
    B, H, L, D = q.shape
    n_rep = H // k.shape[1]
    if n_rep > 1:
        k = k.repeat_interleave(n_rep, dim=1)
        v = v.repeat_interleave(n_rep, dim=1)
    cdt = torch.float64 if q.dtype == torch.float64 else torch.float32
    qf, kf, vf = (t.to(cdt) for t in (q, k, v))
    if not int8:   # the float path: qpass.ops.attention's math (SDPA), in fp32
        if key_mask is None:
            return F.scaled_dot_product_attention(qf, kf, vf, is_causal=causal).to(q.dtype)
        mask = _allowed(key_mask, causal, B, L, k.shape[2], q.device)
        return F.scaled_dot_product_attention(qf, kf, vf, attn_mask=mask).to(q.dtype)
    q8, sq = quantize_rows_int8(qf)
    k8, sk = quantize_rows_int8(kf)
    acc = torch.stack([int_matmul(q8[b, h], k8[b, h]) for b in range(B) for h in range(H)])
    s = acc.to(torch.float32).reshape(B, H, L, -1) * sq * sk.transpose(-1, -2)
    mask = _allowed(key_mask, causal, B, L, k.shape[2], q.device) \
        if key_mask is not None or causal else None
    return _attention_explicit(qf, kf, vf, s, mask).to(q.dtype)


def _allowed(key_mask, causal, B, L, Lk, device) -> torch.Tensor:
    allowed = torch.ones(B, 1, L, Lk, dtype=torch.bool, device=device)
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :].to(torch.bool)
    if causal:
        allowed = allowed & torch.ones(L, Lk, dtype=torch.bool, device=device).tril()
    return allowed


def _attention_explicit(qf, kf, vf, scores, mask) -> torch.Tensor:
    """softmax(scores / √D) @ V; a row with no visible key gives zeros (as the kernels do)."""
    s = (qf @ kf.transpose(-1, -2) if scores is None else scores) * (1.0 / math.sqrt(qf.shape[-1]))
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return p.to(vf.dtype) @ vf


class ReferenceBackend(Backend):
    """Always available; every op, any device, any float dtype."""
    name = "reference"
    priority = 0
    kernels = {"linear_w4a16": linear_w4a16, "linear_w8a8": linear_w8a8,
               "linear_w4a8": linear_w4a8, "linear_w4a4": linear_w4a4,
               "quant_per_token": quant_per_token, "hadamard": hadamard_op,
               "attention": attention}

    def available(self):
        return True, "pure torch"

    def supports(self, op, spec=None, device=None, dtype=None):
        return op in self.kernels


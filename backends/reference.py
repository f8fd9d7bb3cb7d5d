"""The `reference` backend: pure torch, fp32 compute, runs on any device (DESIGN §6).

Integer paths emulate int32 accumulation exactly. An int8×int8 product is at most 2^14 in
magnitude, so a dot product over ≤ 1024 of them stays within ±2^24, where every integer is an
exact float32: each K-chunk of 1024 is one fp32 matmul (fast on any CPU), and chunk sums are
added in float64 (exact to 2^53). The result equals int32 accumulation for K < 131072 (no int32
overflow), and converting it to float32 rounds exactly as an int32 -> fp32 conversion does.

Floating-point linears (linear_fp8, linear_fp4a16) run qpass/formats/float_linear.py, which
QuantLinear's fp8 W8A8 simulation runs too: E4M3 products summed exactly in float64.

Epilogue convention shared with the Triton kernels (so both are bit-exact under the
interpreter): facc = Σ_groups fp32(acc_g) · w_scale[:, g]   (one group = per-channel)
           y    = facc · x_scale + bias                     (fp32, then cast to x's dtype)
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from qpass import formats
from qpass.formats.attention import kv_attention
from qpass.formats.float_linear import fp4_weight_linear, fp8_linear
from qpass.hadamard import transform as hadamard_transform
from qpass.formats.integer import (dequant_weight, int_linear, int_linear_codes, int_matmul,
                                   signed_weight)

from .base import Backend, kernels_named
from .bounds import checked

# ----- kernels (argument lists match qpass.backends.op_schemas; each checks its operands first:
# backends/bounds.py) ----------------------------------------------------------------------------
@checked
def linear_w4a16(x, qweight, scales, zeros, bits, group_size, bias):
    K = x.shape[-1]
    w = dequant_weight(qweight, scales, zeros, bits, group_size, K)
    b = bias.to(torch.float32) if bias is not None else None
    return F.linear(x.to(torch.float32), w, b).to(x.dtype)


@checked
def linear_w8a8(x, w_int8, w_scales, bias, act_grid="full"):
    return int_linear(x, w_int8, w_scales, bias, 8, 0, act_grid)


@checked
def linear_w4a8(x, qweight, w_scales, bias, group_size, act_grid="full"):
    return int_linear(x, signed_weight(qweight, 4, x.shape[-1]), w_scales, bias, 8, group_size,
                      act_grid)


@checked
def linear_w4a4(x, qweight, w_scales, bias, group_size, act_grid="full"):
    return int_linear(x, signed_weight(qweight, 4, x.shape[-1]), w_scales, bias, 4, group_size,
                      act_grid)


@checked
def linear_int_codes(xq, xs, qweight, w_scales, bias, w_bits, group_size, out_dtype):
    w = qweight if w_bits == 8 else signed_weight(qweight, 4, xq.shape[-1])
    return int_linear_codes(xq, xs, w, w_scales, bias, group_size, out_dtype)


@checked
def linear_fp8(x, w_fp8, w_scales, x_scale, bias, group_size):
    return fp8_linear(x, w_fp8, w_scales, x_scale, bias, group_size)


@checked
def linear_fp4a16(x, qweight, scales, global_scale, bias, block, scale_format):
    return fp4_weight_linear(x, qweight, scales, global_scale, bias, block, scale_format)


@checked
def rmsnorm_quant(x, weight, eps, bits, grid="full"):
    from qpass.models.denoiser import rms_norm
    return formats.quantize_per_token(rms_norm(x, weight, eps), bits, grid)


@checked
def silu_mul_quant(gate, up, bits, grid="full"):
    return formats.quantize_per_token(F.silu(gate) * up, bits, grid)


@checked
def hadamard(x, signs):
    return hadamard_transform(x, signs=signs)


@checked
def quant_per_token(x, bits, use_hadamard, signs, grid="full"):
    if use_hadamard:
        x = hadamard_transform(x.to(torch.float32), signs=signs)
    return formats.quantize_per_token(x, bits, grid)


@checked
def attention_kv(q, k_codes, k_scales, v_codes, v_scales, key_mask):
    return kv_attention(q, k_codes, k_scales, v_codes, v_scales, key_mask)


def quantize_rows_int8(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row (last dim) symmetric int8 codes and fp32 scales for int8 attention: the
    restricted grid (absmax/127), which the attention kernels have always used."""
    return formats.quantize_per_token(t, 8, "restricted")


@checked
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
    kernels = kernels_named(globals())     # every op of OPS, each the function of its name

    def available(self):
        return True, "pure torch"

    def supports(self, op, spec=None, device=None, dtype=None):
        return op in self.kernels


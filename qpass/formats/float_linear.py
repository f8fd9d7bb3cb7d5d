"""What the floating-point linear kernels compute, exactly (issue 28 item 6): the reference
backend runs these functions, and QuantLinear simulates fp8 W8A8 with them too, so a simulated
and a lowered model agree bit for bit (as integer_linear does for the integer kernels).

fp8 W8A8 (`fp8_linear`): activations E4M3 per token (s = absmax/448, the `fp8:token:dyn` rule
of formats/floating.py) or per tensor with a calibrated static scale; weights E4M3 codes with
float32 scales per row or per group of K (tensor, channel, g<k>, and b<k> blocks with their
rows expanded). The product of two E4M3 values has at most 8 significant bits and is a
multiple of 2^-18, so a float64 dot product of them is exact for K < 2^17: each group's sum is
the exact one, rounded once to float32 — what an fp32-accumulating tensor core approximates.
Epilogue (the integer kernels' order): facc = Σ_g fp32(acc_g)·w_scale[:, g]; y = facc·x_scale
+ bias, in fp32, cast to x's dtype.

fp4 weight-only (`fp4_weight_linear`: nvfp4, mxfp4): the kernel's tile is decode(E2M1 code) ·
decode(block scale) — exact in fp32, fp16 and bf16 (2 + 4 significant bits; E8M0 scales are
powers of two) — multiplied by x with fp32 accumulation; nvfp4's global scale divides the
result once (y = acc / G + bias). The simulated QuantLinear multiplies by b/G per element
instead: the two differ by float32 rounding only (mxfp4, with no global scale, not at all)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..specs import QuantSpec
from .packing import unpack
from .quantized_weight import QuantizedWeight
from .floating import float_qparams
from .minifloat import E2M1, E4M3, decode, e8m0_decode, round_to

FP8_DYNAMIC = QuantSpec.parse("fp8:token:dyn")
FP4_WEIGHT_FORMATS = {"nvfp4": ("e4m3", 16), "mxfp4": ("e8m0", 32)}   # scale kind, block


def fp8_w8a8_why_not(w: QuantSpec | None, a: QuantSpec | None, static_act: bool) -> str | None:
    """Why fp8_linear cannot run weights `w` × activations `a` (None: it can). static_act:
    the linear holds a calibrated per-tensor activation scale."""
    if w is None or a is None or w.format != "fp8" or a.format != "fp8":
        return "fp8 W8A8 needs fp8 weights and fp8 activations"
    if a.dynamic:
        if a.granularity != "token":
            return f"dynamic fp8 activations {a} are not per token"
        if a.observer != "minmax" or a.clip_ratio != 1.0:
            return f"dynamic fp8 activations {a} do not take the absmax (kernels do)"
        return None
    if a.granularity != "tensor" or not static_act:
        return f"static fp8 activations {a} need one calibrated per-tensor scale"
    return None


def fp8_act_values(x2: torch.Tensor, x_scale: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(E4M3 values of the (M, K) activations in their work dtype, float32 scales (M, 1) or
    (1, 1)): the codes and scales float_fake_quantize gives for `fp8:token:dyn` (x_scale None)
    or for `fp8:tensor` with that static scale."""
    s = float_qparams(x2, FP8_DYNAMIC).scale if x_scale is None else \
        x_scale.to(torch.float32).reshape(1, 1)
    return round_to(x2 / s.to(x2.dtype), E4M3), s


def fp8_kernel_scales(stored: torch.Tensor, spec: QuantSpec, N: int, K: int
                      ) -> tuple[torch.Tensor, int]:
    """(float32 scales (N, G), group size along K; 0 = one per row) for the fp8 kernels from
    an fp8 weight's stored scales: tensor (1, 1) and channel (N, 1) become one per row, g<k>
    stays (N, K/k), b<k> blocks (⌈N/k⌉, ⌈K/k⌉) repeat over the rows of their block."""
    s = stored.to(torch.float32)
    if spec.granularity in ("tensor", "channel"):
        return s.reshape(-1, 1).expand(N, 1).contiguous(), 0
    if spec.granularity == "block":
        s = s.repeat_interleave(spec.group_size, dim=0)[:N]
    return s.contiguous(), spec.group_size


def fp8_linear(x: torch.Tensor, w_fp8: torch.Tensor, w_scales: torch.Tensor,
               x_scale: torch.Tensor | None, bias: torch.Tensor | None,
               group_size: int) -> torch.Tensor:
    """x (..., K) float × E4M3 weight codes w_fp8 uint8 (N, K) with scales (N, G) per group of
    `group_size` (0: per row; the last group may be short), activations quantized per token
    (x_scale None) or with the static scale x_scale; output (..., N) in x's dtype."""
    N, K = w_fp8.shape
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    xv, xs = fp8_act_values(x.reshape(-1, K).to(work), x_scale)
    xv, wv = xv.to(torch.float64), decode(w_fp8, E4M3).to(torch.float64)
    sw = w_scales.to(torch.float32).reshape(N, -1)
    g = group_size or K
    facc = None
    for i, k0 in enumerate(range(0, K, g)):   # in order, as the kernel flushes its groups
        part = (xv[:, k0:k0 + g] @ wv[:, k0:k0 + g].T).to(torch.float32) * sw[:, i]
        facc = part if facc is None else facc + part
    y = facc * xs
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(x.dtype).reshape(*x.shape[:-1], N)


def fp8_quantized_linear(x: torch.Tensor, qw: QuantizedWeight, bias: torch.Tensor | None,
                         act_scale: torch.Tensor | None) -> torch.Tensor:
    """fp8_linear for an fp8 `QuantizedWeight` (QuantLinear's simulation of fp8 W8A8)."""
    N, K = qw.shape
    scales, group = fp8_kernel_scales(qw.scale, qw.spec, N, K)
    return fp8_linear(x, qw.codes(), scales, act_scale, bias, group)


def fp4_weight_tile(qweight: torch.Tensor, scales: torch.Tensor, K: int, block: int,
                    scale_format: str) -> torch.Tensor:
    """float32 (N, K): decode(E2M1 code) · decode(block scale), exact; qweight the packed
    4-bit stream (N, K/8) int32, scales uint8 (N, K/block) E4M3 or E8M0 codes."""
    vals = decode(unpack(qweight, 4, K), E2M1)
    s = decode(scales, E4M3) if scale_format == "e4m3" else e8m0_decode(scales)
    return vals * s.repeat_interleave(block, dim=1)


def fp4_weight_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                      global_scale: torch.Tensor | None, bias: torch.Tensor | None, block: int,
                      scale_format: str) -> torch.Tensor:
    """x (..., K) @ fp4_weight_tile(...)ᵀ in fp32 (fp64 for fp64 x), divided by nvfp4's global
    scale, + bias, in x's dtype."""
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    w = fp4_weight_tile(qweight, scales, x.shape[-1], block, scale_format).to(work)
    b = None if bias is None else bias.to(work)
    if global_scale is None:
        return F.linear(x.to(work), w, b).to(x.dtype)
    y = F.linear(x.to(work), w) / global_scale.to(work).reshape(())
    return (y if b is None else y + b).to(x.dtype)

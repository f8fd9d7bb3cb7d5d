"""The schemas of the lowered ops: `torch.library` custom ops in the `qpass` namespace (DESIGN
§6). Not to be confused with qpass/ops.py, the
graph-level functions (attention, rope, routing) that capture keeps as single nodes.

Each op body asks the backend registry for a kernel for the tensor's device and dtype and calls
it; each op has a fake (meta) implementation, so lowered graphs still trace, export and run on
the meta device. Weight tensors arrive in the canonical layouts of docs/FORMATS.md:
  qweight  int32 (N, ceil(K/32)·bits), a little-endian bit stream of unsigned codes along K
  scales   float32 (N, K/g) for groups, (N, 1) per channel; zeros int32 like scales or None
           (symmetric: implicit 2^(b−1))
  w_int8   int8 (N, K) signed codes u − 128 (W8A8)
`backend` pins a backend by name ("auto": highest-priority available one that supports the call).
`act_grid` / `grid` is the symmetric per-token activation grid of qpass.specs ("full": s =
2·absmax/(2^b−1), the default; "restricted": s = absmax/(2^(b−1)−1), checkpoints saved before
grids existed); kernels take it as their last argument.
"""
from __future__ import annotations

from collections import Counter
from typing import Optional

import torch
from torch import Tensor

_cache: dict = {}
_calls: Counter = Counter()


def _kernel(op: str, t: Tensor, backend: str, **spec):
    """Registry lookup, cached per (op, device, dtype, spec, backend); the cache is dropped
    whenever the registry changes (see qpass.backends.registry.register). Every call is
    tallied per (op, backend that ran it, device) for `kernel_calls()`."""
    from qpass.backends import registry
    key = (op, t.device.type, t.dtype, tuple(sorted(spec.items())), backend, registry.generation())
    hit = _cache.get(key)
    if hit is None:
        chosen = registry.select(op, t.device, spec, t.dtype, prefer=backend)
        hit = _cache[key] = (chosen.kernels[op], chosen.name)
    _calls[(op, hit[1], t.device.type)] += 1
    return hit[0]


def kernel_calls() -> dict[tuple[str, str, str], int]:
    """{(op, backend, device type): calls} of the lowered ops run since the last reset: what
    actually ran, as opposed to what a binding predicted."""
    return dict(_calls)


def reset_kernel_calls() -> None:
    _calls.clear()


def _schema(fn):
    """`fn` as the torch.library custom op `qpass::<its name>` (it mutates no argument). The
    names are backends/base.py's OPS (tests/backends/test_backend_registry.py checks both
    ways)."""
    return torch.library.custom_op(f"qpass::{fn.__name__}", mutates_args=())(fn)


def _dim(t: Tensor, i: int) -> int:
    """Size `i` of `t` for choosing a kernel; -1 when `t` has no such dim (the kernel's own
    operand check then refuses the call: backends/bounds.py)."""
    return t.shape[i] if -t.dim() <= i < t.dim() else -1


def _out_shape(x: Tensor, n: int) -> list[int]:
    return [*x.shape[:-1], n]


# ----- linear ops --------------------------------------------------------------------------
@_schema
def linear_w4a16(x: Tensor, qweight: Tensor, scales: Tensor, zeros: Optional[Tensor], bits: int,
                 group_size: int, bias: Optional[Tensor] = None, backend: str = "auto") -> Tensor:
    """Weight-only: y = x @ dequant(qweight).T + bias, any 1..8 bits (w3a16 too), float acts."""
    fn = _kernel("linear_w4a16", x, backend, bits=bits, group_size=group_size,
                 asym=zeros is not None, K=_dim(x, -1), N=_dim(qweight, 0))
    return fn(x, qweight, scales, zeros, bits, group_size, bias)


@linear_w4a16.register_fake
def _(x, qweight, scales, zeros, bits, group_size, bias=None, backend="auto"):
    return x.new_empty(_out_shape(x, qweight.shape[0]))


@_schema
def linear_w8a8(x: Tensor, w_int8: Tensor, w_scales: Tensor, bias: Optional[Tensor] = None,
                backend: str = "auto", act_grid: str = "full") -> Tensor:
    """Per-channel int8 weights × per-token dynamic int8 activations, int32 accumulation,
    fused rescale (+ bias)."""
    fn = _kernel("linear_w8a8", x, backend, K=_dim(x, -1), N=_dim(w_int8, 0), act_grid=act_grid)
    return fn(x, w_int8, w_scales, bias, act_grid)


@linear_w8a8.register_fake
def _(x, w_int8, w_scales, bias=None, backend="auto", act_grid="full"):
    return x.new_empty(_out_shape(x, w_int8.shape[0]))


def _int4_weight_linear(op, x, qweight, w_scales, bias, group_size, backend, act_grid):
    fn = _kernel(op, x, backend, group_size=group_size, K=_dim(x, -1), N=_dim(qweight, 0),
                 act_grid=act_grid)
    return fn(x, qweight, w_scales, bias, group_size, act_grid)


def _int4_weight_linear_fake(x, qweight, w_scales, bias=None, group_size=0, backend="auto",
                             act_grid="full"):
    return x.new_empty(_out_shape(x, qweight.shape[0]))


@_schema
def linear_w4a8(x: Tensor, qweight: Tensor, w_scales: Tensor, bias: Optional[Tensor] = None,
                group_size: int = 0, backend: str = "auto", act_grid: str = "full") -> Tensor:
    """Symmetric int4 weights (packed) × per-token dynamic int8 activations; w_scales (N, 1)
    or (N, K/group_size) with int32 sums flushed per group."""
    return _int4_weight_linear("linear_w4a8", x, qweight, w_scales, bias, group_size, backend,
                               act_grid)


@_schema
def linear_w4a4(x: Tensor, qweight: Tensor, w_scales: Tensor, bias: Optional[Tensor] = None,
                group_size: int = 0, backend: str = "auto", act_grid: str = "full") -> Tensor:
    """Symmetric int4 weights × per-token dynamic int4 activations (codes in int8 containers)."""
    return _int4_weight_linear("linear_w4a4", x, qweight, w_scales, bias, group_size, backend,
                               act_grid)


linear_w4a8.register_fake(_int4_weight_linear_fake)
linear_w4a4.register_fake(_int4_weight_linear_fake)


# ----- floating-point linear ops (qpass/formats/float_linear.py defines what they compute) --
@_schema
def linear_fp8(x: Tensor, w_fp8: Tensor, w_scales: Tensor, x_scale: Optional[Tensor] = None,
               bias: Optional[Tensor] = None, group_size: int = 0,
               backend: str = "auto") -> Tensor:
    """FP8 W8A8: E4M3 weight codes w_fp8 uint8 (N, K) with fp32 scales (N, ⌈K/group_size⌉)
    (group_size 0: (N, 1)) × E4M3 activations, per token (x_scale None) or with the static
    per-tensor scale x_scale (1, 1); fp32 accumulation, the integer kernels' epilogue."""
    fn = _kernel("linear_fp8", x, backend, K=_dim(x, -1), N=_dim(w_fp8, 0),
                 group_size=group_size, static=x_scale is not None)
    return fn(x, w_fp8, w_scales, x_scale, bias, group_size)


@linear_fp8.register_fake
def _(x, w_fp8, w_scales, x_scale=None, bias=None, group_size=0, backend="auto"):
    return x.new_empty(_out_shape(x, w_fp8.shape[0]))


@_schema
def linear_fp4a16(x: Tensor, qweight: Tensor, scales: Tensor, global_scale: Optional[Tensor],
                  bias: Optional[Tensor], block: int, scale_format: str,
                  backend: str = "auto") -> Tensor:
    """FP4 weight-only (nvfp4 / mxfp4): E2M1 codes in the packed 4-bit stream (N, K/8) int32,
    uint8 block scales (N, K/block) — E4M3 ("e4m3", nvfp4, with its fp32 global scale (1,))
    or E8M0 ("e8m0", mx) — float activations; y = x @ (e2m1·scale)ᵀ / global + bias."""
    fn = _kernel("linear_fp4a16", x, backend, K=_dim(x, -1), N=_dim(qweight, 0), block=block,
                 scale_format=scale_format)
    return fn(x, qweight, scales, global_scale, bias, block, scale_format)


@linear_fp4a16.register_fake
def _(x, qweight, scales, global_scale, bias, block, scale_format, backend="auto"):
    return x.new_empty(_out_shape(x, qweight.shape[0]))


# ----- activation ops ----------------------------------------------------------------------
@_schema
def quant_per_token(x: Tensor, bits: int, hadamard: bool = False, signs: Optional[Tensor] = None,
                    backend: str = "auto", grid: str = "full") -> tuple[Tensor, Tensor]:
    """Symmetric dynamic per-token codes (int8, x's shape) and scales (fp32, (..., 1)),
    optionally after the online Hadamard transform (x·signs) @ Hᵀ/√n, fused."""
    fn = _kernel("quant_per_token", x, backend, bits=bits, hadamard=hadamard, n=_dim(x, -1),
                 grid=grid)
    return fn(x, bits, hadamard, signs, grid)


@quant_per_token.register_fake
def _(x, bits, hadamard=False, signs=None, backend="auto", grid="full"):
    return (x.new_empty(x.shape, dtype=torch.int8),
            x.new_empty([*x.shape[:-1], 1], dtype=torch.float32))


@_schema
def linear_int_codes(xq: Tensor, xs: Tensor, qweight: Tensor, w_scales: Tensor,
                     bias: Optional[Tensor], w_bits: int, group_size: int, out_dtype: torch.dtype,
                     backend: str = "auto") -> Tensor:
    """An integer linear whose activations were quantized by their producer (rmsnorm_quant,
    silu_mul_quant): codes xq (..., K) int8, per-token scales xs (..., 1) fp32; weights int8
    (N, K) for w_bits 8, the packed int4 stream for 4; the W8A8/W4A8/W4A4 epilogue."""
    fn = _kernel("linear_int_codes", xs, backend, w_bits=w_bits, group_size=group_size,
                 K=_dim(xq, -1), N=_dim(qweight, 0), out_dtype=out_dtype)
    return fn(xq, xs, qweight, w_scales, bias, w_bits, group_size, out_dtype)


@linear_int_codes.register_fake
def _(xq, xs, qweight, w_scales, bias, w_bits, group_size, out_dtype, backend="auto"):
    return xq.new_empty(_out_shape(xq, qweight.shape[0]), dtype=out_dtype)


@_schema
def rmsnorm_quant(x: Tensor, weight: Tensor, eps: float, bits: int, grid: str = "full",
                  backend: str = "auto") -> tuple[Tensor, Tensor]:
    """RMSNorm (qpass.models.denoiser.rms_norm) fused with symmetric per-token quantization:
    the codes and scales quant_per_token would give for the norm's output, in one pass."""
    fn = _kernel("rmsnorm_quant", x, backend, bits=bits, grid=grid, K=_dim(x, -1))
    return fn(x, weight, eps, bits, grid)


@rmsnorm_quant.register_fake
def _(x, weight, eps, bits, grid="full", backend="auto"):
    return (x.new_empty(x.shape, dtype=torch.int8),
            x.new_empty([*x.shape[:-1], 1], dtype=torch.float32))


@_schema
def silu_mul_quant(gate: Tensor, up: Tensor, bits: int, grid: str = "full",
                   backend: str = "auto") -> tuple[Tensor, Tensor]:
    """silu(gate)·up (in gate's dtype, as the MLP computes it) fused with symmetric per-token
    quantization: the codes and scales quant_per_token would give for the product."""
    fn = _kernel("silu_mul_quant", gate, backend, bits=bits, grid=grid, K=_dim(gate, -1))
    return fn(gate, up, bits, grid)


@silu_mul_quant.register_fake
def _(gate, up, bits, grid="full", backend="auto"):
    return (gate.new_empty(gate.shape, dtype=torch.int8),
            gate.new_empty([*gate.shape[:-1], 1], dtype=torch.float32))


@_schema
def hadamard(x: Tensor, signs: Optional[Tensor] = None, backend: str = "auto") -> Tensor:
    """Online Hadamard: qpass.hadamard.transform(x, signs=signs) along the last dim."""
    fn = _kernel("hadamard", x, backend, n=_dim(x, -1))
    return fn(x, signs)


@hadamard.register_fake
def _(x, signs=None, backend="auto"):
    return torch.empty_like(x)


@_schema
def attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Optional[Tensor] = None,
              causal: bool = False, int8: bool = False, backend: str = "auto") -> Tensor:
    """Scaled dot-product attention on (B, H, L, D), bidirectional unless causal; GQA when k/v
    have fewer heads; key_mask (B, L) bool, True for real tokens; optional int8 Q·Kᵀ."""
    fn = _kernel("attention", q, backend, D=_dim(q, -1), int8=int8, causal=causal)
    return fn(q, k, v, key_mask, causal, int8)


@attention.register_fake
def _(q, k, v, key_mask=None, causal=False, int8=False, backend="auto"):
    return torch.empty_like(q)


@_schema
def attention_kv(q: Tensor, k_codes: Tensor, k_scales: Tensor, v_codes: Tensor, v_scales: Tensor,
                 key_mask: Optional[Tensor] = None, backend: str = "auto") -> Tensor:
    """Bidirectional attention of float q (B, H, L, D) over quantized K/V: int8 containers of
    int8/int4 codes (B, H_kv, L_k, D) with per-head per-token fp32 scales (B, H_kv, L_k, 1);
    integer Q·Kᵀ and P·V as qpass.formats.attention defines them."""
    fn = _kernel("attention_kv", q, backend, D=_dim(q, -1))
    return fn(q, k_codes, k_scales, v_codes, v_scales, key_mask)


@attention_kv.register_fake
def _(q, k_codes, k_scales, v_codes, v_scales, key_mask=None, backend="auto"):
    return torch.empty_like(q)

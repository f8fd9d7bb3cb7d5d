"""The operand contract of every lowered op (the layouts of docs/FORMATS.md), checked by each
built-in kernel before it computes: a kernel indexes its operands by the shapes it derives from
the others (N from the weight, G from the scales, H_kv from the keys), so operands that
disagree would make it read or write past the end of one of them. These checks look at shapes,
dtypes and devices only (no device sync, nothing proportional to the data) and raise a
BackendError, never an assert (python -O strips those). A checkpoint's tensors were already
checked against their modules at load (qpass.runtime.tensor_checks); this is the last line for
callers that reach the ops directly."""
from __future__ import annotations

import functools

import torch

from qpass.errors import BackendError
from qpass.formats import packed_cols
from qpass.specs import GRIDS

FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INTS = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8, torch.bool)


def _refuse(op: str, what: str, want, got) -> None:
    raise BackendError(f"qpass::{op}: {what} must be {want}, got {got}; the operands do not fit "
                       f"together, so no kernel ran (a kernel would read out of bounds)")


def _int(op: str, name: str, v, lo: int, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo or (hi is not None and v > hi):
        _refuse(op, name, f"an integer in [{lo}, {'∞' if hi is None else hi}]", repr(v))
    return v


def tensor(op: str, name: str, t, dtypes, shape=None, device=None):
    """`t` a tensor of one of `dtypes`, of exactly `shape` (when given), on `device`."""
    if not isinstance(t, torch.Tensor):
        _refuse(op, name, "a tensor", type(t).__name__)
    if t.dtype not in dtypes:
        _refuse(op, f"{name}'s dtype", " or ".join(str(d).removeprefix("torch.") for d in dtypes),
                str(t.dtype).removeprefix("torch."))
    if shape is not None and tuple(t.shape) != tuple(shape):
        _refuse(op, f"{name}'s shape", tuple(shape), tuple(t.shape))
    if device is not None and t.device != device:
        _refuse(op, f"{name}'s device", str(device), str(t.device))
    return t


def _matrix(op: str, name: str, t, dtypes, cols: int, device) -> int:
    """`t` 2-D (N, cols); returns N."""
    tensor(op, name, t, dtypes, None, device)
    if t.dim() != 2 or t.shape[1] != cols:
        _refuse(op, f"{name}'s shape", f"(N, {cols})", tuple(t.shape))
    return t.shape[0]


def _optional(op, name, t, dtypes, shape, device) -> None:
    if t is not None:
        tensor(op, name, t, dtypes, shape, device)


def _activations(op: str, name: str, x, dtypes=FLOATS) -> int:
    """x (..., K) with K >= 1; returns K."""
    tensor(op, name, x, dtypes)
    if x.dim() < 1 or x.shape[-1] < 1:
        _refuse(op, f"{name}'s shape", "(..., K) with K >= 1", tuple(x.shape))
    return x.shape[-1]


def _groups(op: str, K: int, group_size: int, zero_means_row: bool) -> int:
    """Scale columns per row: K / group_size (group_size 0: one per row, where allowed)."""
    _int(op, "group_size", group_size, 0 if zero_means_row else 1)
    if group_size == 0:
        return 1
    if K % group_size:
        _refuse(op, "group_size", f"a divisor of K={K}", group_size)
    return K // group_size


def _scales(op: str, name: str, s, N: int, G: int, device) -> None:
    """Weight scales (N, G), float; one scale per row may also come as (N,)."""
    tensor(op, name, s, FLOATS, None, device)
    if tuple(s.shape) != (N, G) and not (G == 1 and tuple(s.shape) == (N,)):
        _refuse(op, f"{name}'s shape", (N, G), tuple(s.shape))


def _grid(op: str, grid) -> None:
    if grid not in GRIDS:
        _refuse(op, "the activation grid", " or ".join(GRIDS), repr(grid))


def rows(op: str, name: str, x2) -> None:
    """A kernel launcher's (M, K) operand: 2-D with unit column stride (the row stride is free)."""
    if not isinstance(x2, torch.Tensor) or x2.dim() != 2 or (x2.shape[1] > 1 and x2.stride(1) != 1):
        _refuse(op, name, "a 2-D tensor with unit column stride",
                tuple(x2.shape) if isinstance(x2, torch.Tensor) else type(x2).__name__)


# ----- one function per op of backends/base.py OPS, same arguments --------------------------
def linear_w4a16(x, qweight, scales, zeros, bits, group_size, bias) -> None:
    op = "linear_w4a16"
    K, dev = _activations(op, "x", x), x.device
    _int(op, "bits", bits, 1, 8)
    N = _matrix(op, "qweight", qweight, (torch.int32,), packed_cols(K, bits), dev)
    G = _groups(op, K, group_size, zero_means_row=False)
    tensor(op, "scales", scales, FLOATS, (N, G), dev)
    _optional(op, "zeros", zeros, (torch.int32,), (N, G), dev)
    _optional(op, "bias", bias, FLOATS, (N,), dev)


def _int_weight(op, K, qweight, w_bits, dev) -> int:
    """Integer-linear weights: int8 (N, K) codes, or the packed int4 stream; returns N."""
    if w_bits == 8:
        return _matrix(op, "the int8 weight", qweight, (torch.int8,), K, dev)
    return _matrix(op, "the packed int4 weight", qweight, (torch.int32,), packed_cols(K, 4), dev)


def _int_linear(op, x, qweight, w_scales, bias, w_bits, group_size, act_grid) -> None:
    K, dev = _activations(op, "x", x), x.device
    _grid(op, act_grid)
    N = _int_weight(op, K, qweight, w_bits, dev)
    _scales(op, "w_scales", w_scales, N, _groups(op, K, group_size, zero_means_row=True), dev)
    _optional(op, "bias", bias, FLOATS, (N,), dev)


def linear_w8a8(x, w_int8, w_scales, bias, act_grid="full") -> None:
    _int_linear("linear_w8a8", x, w_int8, w_scales, bias, 8, 0, act_grid)


def linear_w4a8(x, qweight, w_scales, bias, group_size, act_grid="full") -> None:
    _int_linear("linear_w4a8", x, qweight, w_scales, bias, 4, group_size, act_grid)


def linear_w4a4(x, qweight, w_scales, bias, group_size, act_grid="full") -> None:
    _int_linear("linear_w4a4", x, qweight, w_scales, bias, 4, group_size, act_grid)


def linear_int_codes(xq, xs, qweight, w_scales, bias, w_bits, group_size, out_dtype) -> None:
    op = "linear_int_codes"
    K, dev = _activations(op, "the activation codes", xq, (torch.int8,)), xq.device
    tensor(op, "the activation scales", xs, FLOATS, (*xq.shape[:-1], 1), dev)
    if w_bits not in (4, 8):
        _refuse(op, "w_bits", "4 or 8", repr(w_bits))
    if out_dtype not in FLOATS:
        _refuse(op, "out_dtype", "a float dtype", out_dtype)
    N = _int_weight(op, K, qweight, w_bits, dev)
    _scales(op, "w_scales", w_scales, N, _groups(op, K, group_size, zero_means_row=True), dev)
    _optional(op, "bias", bias, FLOATS, (N,), dev)


def linear_fp8(x, w_fp8, w_scales, x_scale, bias, group_size) -> None:
    op = "linear_fp8"
    K, dev = _activations(op, "x", x), x.device
    N = _matrix(op, "the fp8 weight codes", w_fp8, (torch.uint8,), K, dev)
    _int(op, "group_size", group_size, 0)
    G = 1 if group_size == 0 else -(-K // group_size)      # fp8 b<k> blocks: the last is short
    _scales(op, "w_scales", w_scales, N, G, dev)
    _optional(op, "x_scale", x_scale, (torch.float32,), (1, 1), dev)
    _optional(op, "bias", bias, FLOATS, (N,), dev)


def linear_fp4a16(x, qweight, scales, global_scale, bias, block, scale_format) -> None:
    op = "linear_fp4a16"
    K, dev = _activations(op, "x", x), x.device
    if (block, scale_format) not in ((16, "e4m3"), (32, "e8m0")):
        _refuse(op, "the block and its scale format", "(16, 'e4m3') for nvfp4 or (32, 'e8m0') "
                "for mxfp4", (block, scale_format))
    N = _matrix(op, "the packed fp4 weight", qweight, (torch.int32,), packed_cols(K, 4), dev)
    tensor(op, "scales", scales, (torch.uint8,), (N, _groups(op, K, block, False)), dev)
    if scale_format == "e4m3":
        tensor(op, "global_scale", global_scale, (torch.float32,), (1,), dev)
    elif global_scale is not None:
        _refuse(op, "global_scale", "None for E8M0 (mx) scales", tuple(global_scale.shape))
    _optional(op, "bias", bias, FLOATS, (N,), dev)


def _signs(op, signs, n, dev) -> None:
    _optional(op, "signs", signs, FLOATS, (n,), dev)


def quant_per_token(x, bits, use_hadamard, signs, grid="full") -> None:
    op = "quant_per_token"
    n = _activations(op, "x", x)
    _int(op, "bits", bits, 2, 8)
    _grid(op, grid)
    _signs(op, signs, n, x.device)


def rmsnorm_quant(x, weight, eps, bits, grid="full") -> None:
    op = "rmsnorm_quant"
    K = _activations(op, "x", x)
    tensor(op, "the norm weight", weight, FLOATS, (K,), x.device)
    _int(op, "bits", bits, 2, 8)
    _grid(op, grid)


def silu_mul_quant(gate, up, bits, grid="full") -> None:
    op = "silu_mul_quant"
    _activations(op, "gate", gate)
    tensor(op, "up", up, FLOATS, tuple(gate.shape), gate.device)
    _int(op, "bits", bits, 2, 8)
    _grid(op, grid)


def hadamard(x, signs) -> None:
    _signs("hadamard", signs, _activations("hadamard", "x", x), x.device)


def _heads(op, q, k_shape) -> tuple[int, int]:
    """q (B, H, L, D); keys (B, H_kv, L_k, D) with H_kv dividing H; returns (B, L_k)."""
    tensor(op, "q", q, FLOATS)
    if q.dim() != 4 or min(q.shape) < 1:
        _refuse(op, "q's shape", "(B, H, L, D), none of them 0", tuple(q.shape))
    B, H, _, D = q.shape
    if len(k_shape) != 4 or k_shape[0] != B or k_shape[3] != D or k_shape[1] < 1 or \
            H % k_shape[1] or k_shape[2] < 1:
        _refuse(op, "the keys' shape", f"({B}, H_kv, L_k, {D}) with H_kv dividing {H}",
                tuple(k_shape))
    return B, k_shape[2]


def _key_mask(op, key_mask, B, Lk, dev) -> None:
    _optional(op, "key_mask", key_mask, FLOATS + _INTS, (B, Lk), dev)


def attention(q, k, v, key_mask, causal, int8) -> None:
    op = "attention"
    B, Lk = _heads(op, q, tuple(k.shape) if isinstance(k, torch.Tensor) else ())
    tensor(op, "k", k, (q.dtype,), None, q.device)
    tensor(op, "v", v, (q.dtype,), tuple(k.shape), q.device)
    _key_mask(op, key_mask, B, Lk, q.device)


def attention_kv(q, k_codes, k_scales, v_codes, v_scales, key_mask) -> None:
    op = "attention_kv"
    kshape = tuple(k_codes.shape) if isinstance(k_codes, torch.Tensor) else ()
    B, Lk = _heads(op, q, kshape)
    tensor(op, "k_codes", k_codes, (torch.int8,), None, q.device)
    tensor(op, "v_codes", v_codes, (torch.int8,), kshape, q.device)
    tensor(op, "k_scales", k_scales, FLOATS, (*kshape[:3], 1), q.device)
    tensor(op, "v_scales", v_scales, FLOATS, (*kshape[:3], 1), q.device)
    _key_mask(op, key_mask, B, Lk, q.device)


def checked(kernel):
    """`kernel` (a backend's function named after its op) with the op's operand contract
    checked before it runs; the built-in backends decorate every kernel with it."""
    check = globals()[kernel.__name__]

    @functools.wraps(kernel)
    def run(*args, **kwargs):
        check(*args, **kwargs)
        return kernel(*args, **kwargs)
    run.qpass_bounds_checked = True
    return run

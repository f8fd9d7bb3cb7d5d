"""The `triton` backend: CUDA kernels for every qpass op (and, for tests, the same kernels on
CPU under TRITON_INTERPRET=1). Weight tensors arrive in the canonical layouts of
docs/FORMATS.md: W8A8 int8 (N, K) and the int4 streams of W4A8/W4A4 are read as is; W4A16 int4
weights run on a private MMA-friendly repacked copy (w4_layout.py), made once per weight tensor
by `prepare` when a checkpoint is bound to a device (or on the first call otherwise); other
weight-only bit widths read the canonical stream. FP8 W8A8 (gemm_fp8.py) needs float8 tensor
cores (sm_89+: older GPUs are declined with that reason and the reference runs it); FP4
weight-only (gemm_fp4a16.py) decodes nvfp4/mxfp4 with integer arithmetic on any GPU. Shapes the kernels do not cover (K not a multiple of 32, Hadamard sizes that are not
2^k with 256 ≤ n ≤ 16384, head dims that are not powers of two) are declined in supports()
with a reason, and the registry falls back to the next backend."""
from __future__ import annotations

import torch

from ..base import Backend, kernels_named
from ..bounds import checked
from ._common import HAVE_TRITON, IMPORT_ERROR, hadamard_split, interpreting

_FLOATS = (torch.float16, torch.bfloat16, torch.float32)


def _rows(x):
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


@checked
def linear_w4a16(x, qweight, scales, zeros, bits, group_size, bias):
    if bits == 4:
        from .gemm_w4a16_mma import w4a16_mma
        from .w4_layout import repacked
        r = repacked(qweight, scales, zeros, x.shape[-1])
        return w4a16_mma(_rows(x), r, bias).reshape(*x.shape[:-1], -1)
    from .gemm_w4a16 import w4a16_gemm
    y = w4a16_gemm(_rows(x), qweight.contiguous(), scales, zeros, bits, group_size, bias)
    return y.reshape(*x.shape[:-1], -1)


def _int_linear(x, w, w_scales, bias, act_bits, w_bits, group_size=0, act_grid="full"):
    from .gemm_int import int_gemm
    from .quant import quant_rows
    xq, xs = quant_rows(_rows(x), act_bits, act_grid)
    y = int_gemm(xq, xs, w.contiguous(), w_scales, bias, x.dtype, w_bits, group_size)
    return y.reshape(*x.shape[:-1], -1)


@checked
def linear_w8a8(x, w_int8, w_scales, bias, act_grid="full"):
    return _int_linear(x, w_int8, w_scales, bias, 8, 8, 0, act_grid)


@checked
def linear_w4a8(x, qweight, w_scales, bias, group_size, act_grid="full"):
    return _int_linear(x, qweight, w_scales, bias, 8, 4, group_size, act_grid)


@checked
def linear_w4a4(x, qweight, w_scales, bias, group_size, act_grid="full"):
    return _int_linear(x, qweight, w_scales, bias, 4, 4, group_size, act_grid)


@checked
def linear_int_codes(xq, xs, qweight, w_scales, bias, w_bits, group_size, out_dtype):
    from .gemm_int import int_gemm
    y = int_gemm(_rows(xq), xs.reshape(-1, 1), qweight.contiguous(), w_scales, bias, out_dtype,
                 w_bits, group_size)
    return y.reshape(*xq.shape[:-1], -1)


@checked
def linear_fp8(x, w_fp8, w_scales, x_scale, bias, group_size):
    from .gemm_fp8 import fp8_gemm
    return fp8_gemm(_rows(x), w_fp8, w_scales, x_scale, bias, group_size).reshape(
        *x.shape[:-1], -1)


@checked
def linear_fp4a16(x, qweight, scales, global_scale, bias, block, scale_format):
    from .gemm_fp4a16 import fp4a16_gemm
    return fp4a16_gemm(_rows(x), qweight, scales, global_scale, bias, block,
                       scale_format).reshape(*x.shape[:-1], -1)


@checked
def rmsnorm_quant(x, weight, eps, bits, grid="full"):
    from .fused_quant import rmsnorm_quant_rows
    q, s = rmsnorm_quant_rows(_rows(x), weight, eps, bits, grid)
    return q.reshape(x.shape), s.reshape(*x.shape[:-1], 1)


@checked
def silu_mul_quant(gate, up, bits, grid="full"):
    from .fused_quant import silu_mul_quant_rows
    q, s = silu_mul_quant_rows(_rows(gate), _rows(up), bits, grid)
    return q.reshape(gate.shape), s.reshape(*gate.shape[:-1], 1)


@checked
def quant_per_token(x, bits, use_hadamard, signs, grid="full"):
    from .quant import hadamard_rows, quant_rows
    x2 = _rows(x)
    q, s = hadamard_rows(x2, signs, bits, grid) if use_hadamard else quant_rows(x2, bits, grid)
    return q.reshape(x.shape), s.reshape(*x.shape[:-1], 1)


@checked
def hadamard(x, signs):
    from .quant import hadamard_rows
    return hadamard_rows(_rows(x), signs, None).reshape(x.shape)


@checked
def attention(q, k, v, key_mask, causal, int8):
    from .attention import flash_attention
    return flash_attention(q, k, v, key_mask, causal, int8)


@checked
def attention_kv(q, k_codes, k_scales, v_codes, v_scales, key_mask):
    from .attention_kv import kv_attention
    return kv_attention(q, k_codes, k_scales, v_codes, v_scales, key_mask)


class TritonBackend(Backend):
    name = "triton"
    priority = 10
    kernels = kernels_named(globals())     # every op of OPS, each the function of its name

    def available(self):
        if not HAVE_TRITON:
            return False, f"triton is not importable ({IMPORT_ERROR})"
        if interpreting():
            return True, "TRITON_INTERPRET=1: kernels run in the CPU interpreter"
        if not torch.cuda.is_available():
            return False, "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on CPU)"
        return True, f"CUDA: {torch.cuda.get_device_name()}"

    def prepare(self, op, module) -> str | None:
        """Backend-private weight layouts, built once when a model is bound to a device."""
        if op == "linear_w4a16" and getattr(module, "bits", None) == 4:
            from .w4_layout import TILE_K, repacked
            repacked(module.qweight, module.scales, module.zeros, module.in_features)
            return f"int4 repacked for tl.dot (K tiles of {TILE_K}, 8 nibble sub-blocks)"
        return None

    def _device_ok(self, device) -> bool:
        dev = torch.device(device) if device is not None else torch.device("cpu")
        return dev.type == "cuda" or (dev.type == "cpu" and interpreting())

    def _reason(self, op, spec, device, dtype) -> str | None:
        """Why this backend declines the call, or None: the one rule behind supports() and
        why_not()."""
        if op not in self.kernels:
            return f"no kernel for {op}"
        if not self._device_ok(device):
            return f"triton runs on CUDA devices, not {device}"
        if dtype not in _FLOATS:
            return f"triton kernels take fp16/bf16/fp32 inputs, not {dtype}"
        if interpreting() and torch.bfloat16 in (dtype, dict(spec or {}).get("out_dtype")):
            return "the Triton interpreter has no bf16"
        if op == "linear_fp8":
            why = _fp8_capability_reason(device)
            if why:
                return why
        return _shape_reason(op, dict(spec or {}))

    def why_not(self, op, spec, device, dtype):
        return self._reason(op, spec, device, dtype) or super().why_not(op, spec, device, dtype)

    def supports(self, op, spec=None, device=None, dtype=None):
        return self._reason(op, spec, device, dtype) is None


def _fp8_capability_reason(device) -> str | None:
    """float8 tensor cores (tl.dot on float8e4nv) start at compute capability 8.9."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type != "cuda" or interpreting():
        return None
    major, minor = torch.cuda.get_device_capability(dev)
    if (major, minor) < (8, 9):
        return (f"FP8 tl.dot needs compute capability 8.9+ (Ada, Hopper); this GPU is "
                f"sm_{major}{minor}, so qpass::linear_fp8 runs on the next backend")
    return None


def _shape_reason(op: str, spec: dict) -> str | None:
    """Why the kernels cannot take this shape, or None."""
    K = spec.get("K")
    if op.startswith("linear"):
        if K is not None and K % 32:
            return f"K={K} is not a multiple of 32"
        gs = spec.get("group_size", 0)
        if gs and gs % 32:
            return f"group size {gs} is not a multiple of 32"
    if op in ("hadamard",) or (op == "quant_per_token" and spec.get("hadamard")):
        n = spec.get("n")
        if n is not None and hadamard_split(n) is None:
            return f"Hadamard size {n} is not 2^k with 256 <= n <= 16384"
    if op in ("rmsnorm_quant", "silu_mul_quant"):
        from .fused_quant import MAX_ROW
        if K is not None and K > MAX_ROW:
            return f"rows of {K} exceed the fused kernel's one-row-in-registers limit {MAX_ROW}"
    if op in ("attention", "attention_kv"):
        D = spec.get("D")
        if D is not None and (D & (D - 1) or not 16 <= D <= 256):
            return f"head dim {D} is not a power of two in [16, 256]"
    return None

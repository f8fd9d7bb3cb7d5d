"""What the Lower pass puts in the graph: `LoweredLinear` modules and thin call_function
wrappers around the `qpass::*` custom ops (backends/op_schemas.py).

LoweredLinear holds its specs and the weights in the layout its op takes (docs/FORMATS.md);
its kind, bits, group size and zero points all follow from the specs (kernel_kind):
  kind "w4a16"       qweight int32 packed stream, scales fp32 (N, G), zeros int32 (N, G) | None
  kind "w8a8"        qweight int8 (N, K) signed codes u − 128, scales fp32 (N, 1)
  kind "w4a8"/"w4a4" qweight int32 packed int4 stream (symmetric), scales fp32 (N, G)
Tensor-granularity scales are expanded to (N, 1) at lowering, so every kernel indexes (n, g).
qpass.runtime.graph_io lists the class and the wrappers in the checkpoint vocabulary."""
from __future__ import annotations

import torch
import torch.nn as nn

from qpass import kvcache
from qpass.errors import QpassError
from qpass.backends import op_schemas  # noqa: F401  (registers torch.ops.qpass.*)
from qpass.specs import QuantSpec

KINDS = ("w4a16", "w8a8", "w4a8", "w4a4")


def kernel_kind(w: QuantSpec | None, a: QuantSpec | None, static_act: bool = False
                ) -> tuple[str | None, str]:
    """Which integer op runs a linear with weight spec `w` and activation spec `a`, or
    (None, why not)."""
    if w is None:
        return None, "weights stay in high precision (activation-only quantization)"
    if w.is_kquant:
        return None, (f"llama.cpp K-quant {w}: no qpass kernel (llama.cpp runs it from the GGUF "
                      f"export); the reference QuantLinear (dequantize + fp32 matmul) runs it")
    floats = [str(x) for x in (w, a) if x is not None and x.is_float]
    if floats:
        return None, (f"floating-point format {', '.join(floats)}: no kernel yet, the "
                      f"reference QuantLinear (dequantize + fp32 matmul) runs it")
    if a is None:
        return "w4a16", ""
    if static_act:
        return None, "static (calibrated) activation scales have no integer kernel yet"
    if not (a.symmetric and a.granularity == "token" and a.bits in (4, 8)):
        return None, f"activation spec {a} is not symmetric dynamic per-token int8/int4"
    if a.clip_ratio != 1.0:
        return None, (f"clipped activations ({a}): the kernels scale each token by its unclipped "
                      f"absmax; the reference QuantLinear runs it")
    if not w.symmetric:
        return None, f"integer kernels need symmetric weights, got {w}"
    if a.bits == 8 and w.bits == 8 and w.granularity in ("channel", "tensor"):
        return "w8a8", ""
    if w.bits == 4 and w.granularity in ("channel", "tensor", "group"):
        return ("w4a8" if a.bits == 8 else "w4a4"), ""
    return None, f"no integer kernel for weights {w} with activations {a}"


class LoweredLinear(nn.Module):
    """A linear on an integer kernel. Built from its specs alone; `kind`, `bits`,
    `group_size` (0: one group per row) and whether it has zero points are derived from them.
    The legacy keyword arguments are what checkpoints saved before this stored beside the
    specs: they are checked against the derived values, never trusted instead of them."""
    qpass_role = "linear"

    def __init__(self, in_features: int, out_features: int, weight_spec: str,
                 act_spec: str | None = None, bias: bool = False, backend: str = "auto",
                 **legacy):
        super().__init__()
        self.in_features, self.out_features, self.backend = in_features, out_features, backend
        self.weight_spec = QuantSpec.parse(weight_spec)
        self.act_spec = QuantSpec.parse(act_spec) if act_spec is not None else None
        kind, why = kernel_kind(self.weight_spec, self.act_spec)
        if kind is None:
            raise ValueError(f"no integer kernel for weights {self.weight_spec} with activations "
                             f"{self.act_spec}: {why}")
        w = self.weight_spec
        derived = {"kind": kind, "bits": w.bits,
                   "group_size": w.group_size if w.granularity == "group" else 0,
                   "has_zeros": not w.symmetric}
        unknown = sorted(set(legacy) - set(derived))
        if unknown:
            raise TypeError(f"LoweredLinear got unexpected arguments {unknown}")
        for key, value in legacy.items():
            if value != derived[key]:
                raise ValueError(f"LoweredLinear {key}={value!r} contradicts its weight spec {w} "
                                 f"(which gives {derived[key]!r})")
        self.kind, self.bits, self.group_size = kind, derived["bits"], derived["group_size"]
        has_zeros, group_size, bits = derived["has_zeros"], self.group_size, self.bits
        N, K = out_features, in_features
        G = K // group_size if group_size else 1
        if kind == "w8a8":
            self.register_buffer("qweight", torch.zeros(N, K, dtype=torch.int8))
        else:
            self.register_buffer("qweight", torch.zeros(N, -(-K // 32) * bits, dtype=torch.int32))
        self.register_buffer("scales", torch.ones(N, G, dtype=torch.float32))
        self.register_buffer("zeros", torch.zeros(N, G, dtype=torch.int32) if has_zeros else None)
        self.bias = nn.Parameter(torch.zeros(N)) if bias else None

    @classmethod
    def from_quant_linear(cls, q, kind: str, backend: str = "auto") -> "LoweredLinear":
        """Build from a QuantLinear (packed codes per qpass.formats), repacking for `kind`."""
        from qpass.formats import to_signed
        qw = q.quantized_weight()
        spec = qw.spec
        N, K = qw.shape
        m = cls(K, N, str(spec), None if q.act_spec is None else str(q.act_spec),
                q.bias is not None, backend, kind=kind)
        if kind == "w8a8":
            m.qweight = to_signed(qw.codes(), 8).contiguous()
        else:
            m.qweight = qw.packed.contiguous()
        m.scales = qw.scale.to(torch.float32).expand(N, -1).contiguous()
        if qw.zero is not None:
            m.zeros = qw.zero.to(torch.int32).expand(N, -1).contiguous()
        if q.bias is not None:
            m.bias = nn.Parameter(q.bias.detach().clone())
        return m.to(qw.packed.device)

    def qpass_init_kwargs(self) -> dict:
        return {"in_features": self.in_features, "out_features": self.out_features,
                "weight_spec": str(self.weight_spec),
                "act_spec": None if self.act_spec is None else str(self.act_spec),
                "bias": self.bias is not None, "backend": self.backend}

    def forward(self, x: torch.Tensor, x_scales: torch.Tensor | None = None,
                like: torch.Tensor | None = None) -> torch.Tensor:
        """x float; or, after a producer-fused quantization (NormQuant, SiluMulQuant), x the
        int8 codes and x_scales their per-token scales, the output in `like`'s dtype."""
        ops = torch.ops.qpass
        if x_scales is not None:
            if self.kind == "w4a16" or like is None:
                raise QpassError(f"{self.kind} linear given pre-quantized activations: only "
                                 f"integer linears take codes, with a float `like` tensor")
            return ops.linear_int_codes(x, x_scales, self.qweight, self.scales, self.bias,
                                        8 if self.kind == "w8a8" else 4, self.group_size,
                                        like.dtype, self.backend)
        if self.kind == "w4a16":
            return ops.linear_w4a16(x, self.qweight, self.scales, self.zeros, self.bits,
                                    self.group_size or self.in_features, self.bias, self.backend)
        grid = self.act_spec.grid if self.act_spec is not None else "full"
        if self.kind == "w8a8":
            return ops.linear_w8a8(x, self.qweight, self.scales, self.bias, self.backend, grid)
        op = ops.linear_w4a8 if self.kind == "w4a8" else ops.linear_w4a4
        return op(x, self.qweight, self.scales, self.bias, self.group_size, self.backend, grid)

    def weight_nbytes(self) -> int:
        """Stored weight bytes: packed codes + scales (+ zeros); the bias is not a weight."""
        ts = [self.qweight, self.scales] + ([] if self.zeros is None else [self.zeros])
        return sum(t.numel() * t.element_size() for t in ts)

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, kind={self.kind}, "
                f"w={self.weight_spec}, a={self.act_spec}, backend={self.backend}")


class NormQuant(nn.Module):
    """RMSNorm fused with the per-token quantization of its consumers' activations (all of
    them integer linears with one activation spec): forward returns (codes, scales)."""
    qpass_role = "norm_quant"

    def __init__(self, dim: int, eps: float, bits: int, grid: str = "full",
                 backend: str = "auto"):
        super().__init__()
        self.eps, self.bits, self.grid, self.backend = eps, bits, grid, backend
        self.weight = nn.Parameter(torch.ones(dim))

    def qpass_init_kwargs(self) -> dict:
        return {"dim": self.weight.shape[0], "eps": self.eps, "bits": self.bits,
                "grid": self.grid, "backend": self.backend}

    def forward(self, x):
        return torch.ops.qpass.rmsnorm_quant(x, self.weight, self.eps, self.bits, self.grid,
                                             self.backend)


class SiluMulQuant(nn.Module):
    """silu(gate)·up fused with the per-token quantization of the integer linear it feeds:
    forward returns (codes, scales)."""
    qpass_role = "silu_mul_quant"

    def __init__(self, bits: int, grid: str = "full", backend: str = "auto"):
        super().__init__()
        self.bits, self.grid, self.backend = bits, grid, backend

    def qpass_init_kwargs(self) -> dict:
        return {"bits": self.bits, "grid": self.grid, "backend": self.backend}

    def forward(self, gate, up):
        return torch.ops.qpass.silu_mul_quant(gate, up, self.bits, self.grid, self.backend)


def attention(q, k, v, key_mask=None, causal: bool = False, int8: bool = False,
              backend: str = "auto", kv_bits: int = 0):
    """Graph target for lowered attention (role "attention"): torch.ops.qpass.attention, or
    with kv_bits (a `kv<bits>` scheme) K/V quantized per head per token by
    qpass::quant_per_token and qpass::attention_kv (integer Q·Kᵀ and P·V).
    Inside a K/V cache window the key side comes from the cache (qpass.kvcache), which then
    holds the codes and scales."""
    cache = kvcache.active()
    ops = torch.ops.qpass
    if kv_bits:
        if causal:
            raise QpassError("quantized K/V attention (kv_bits) serves bidirectional denoisers")
        kc, ks = ops.quant_per_token(k, kv_bits, False, None, backend)
        vc, vs = ops.quant_per_token(v, kv_bits, False, None, backend)
        if cache is not None:
            (kc, ks, vc, vs), key_mask = cache.attend((kc, ks, vc, vs), key_mask)
        return ops.attention_kv(q, kc, ks, vc, vs, key_mask, backend)
    if cache is not None:
        (k, v), key_mask = cache.attend((k, v), key_mask, causal)
    return ops.attention(q, k, v, key_mask, causal, int8, backend)


attention.qpass_role = "attention"


def hadamard(x, signs=None, backend: str = "auto"):
    """Graph target for a lowered online Hadamard (role "hadamard"): torch.ops.qpass.hadamard."""
    return torch.ops.qpass.hadamard(x, signs, backend)


hadamard.qpass_role = "hadamard"

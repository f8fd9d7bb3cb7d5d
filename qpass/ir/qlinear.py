"""QuantLinear: the graph's representation of a quantized linear before lowering.

It keeps packed integer weights (real memory saving: docs/FORMATS.md) and, until lowering
replaces it with a kernel op, runs a reference dequantize + matmul. Activations are
fake-quantized per `act_spec` (simulation), statically when the spec has calibrated scales.
Floating-point specs (fp8, nvfp4, mx) keep their packed element codes and stored scales
(nvfp4 adds a `global_scale` buffer) and run this reference: dequantize in float32,
fake-quantize the activations, matmul in float32 — except fp8 W8A8, which runs the fp8
kernels' exact arithmetic (formats/float_linear.py), so its lowered twin agrees bit for bit."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..formats import QuantizedWeight, fake_quantize, integer_linear
from ..formats.float_linear import fp8_quantized_linear, fp8_w8a8_why_not
from ..specs import QuantSpec


class QuantLinear(nn.Module):
    qpass_role = "linear"

    def __init__(self, in_features: int, out_features: int, weight_spec: QuantSpec | None,
                 act_spec: QuantSpec | None = None, bias: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight_spec = QuantSpec.parse(weight_spec) if weight_spec is not None else None
        self.act_spec = QuantSpec.parse(act_spec) if act_spec is not None else None
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.weight = None           # float weight, only when weights stay high precision
        self.register_buffer("act_scale", None)   # static activation scale, if calibrated
        self.register_buffer("act_zero", None)

    # ---- construction ---------------------------------------------------------------
    @classmethod
    def from_linear(cls, lin: nn.Linear, weight_spec=None, act_spec=None,
                    qweight: QuantizedWeight | None = None) -> "QuantLinear":
        """Quantize `lin` with RTN (or take precomputed `qweight`, e.g. from GPTQ)."""
        q = cls(lin.in_features, lin.out_features, weight_spec, act_spec, lin.bias is not None)
        w = lin.weight.detach()
        if q.bias is not None:
            q.bias = nn.Parameter(lin.bias.detach().clone())
        if q.weight_spec is None:
            q.weight = nn.Parameter(w.clone())
        else:
            qw = qweight if qweight is not None else QuantizedWeight.from_float(w.float(), q.weight_spec)
            q.set_qweight(qw)
        return q.to(w.device)

    def set_qweight(self, qw: QuantizedWeight) -> None:
        self.register_buffer("qweight", qw.packed)
        self.register_buffer("scales", qw.scale)
        self.register_buffer("zeros", qw.zero)
        if qw.global_scale is not None or "global_scale" in self._buffers:
            self.register_buffer("global_scale", qw.global_scale)    # nvfp4 only
        if qw.super_scale is not None or "super_scales" in self._buffers:
            self.register_buffer("super_scales", qw.super_scale)     # K-quants only

    def quantized_weight(self) -> QuantizedWeight | None:
        if self.weight_spec is None:
            return None
        return QuantizedWeight(self.qweight, self.scales, self.zeros, self.weight_spec,
                               (self.out_features, self.in_features),
                               self._buffers.get("global_scale"),
                               self._buffers.get("super_scales"))

    def dequantized_weight(self, dtype=torch.float32) -> torch.Tensor:
        if self.weight_spec is None:
            return self.weight.to(dtype)
        return self.quantized_weight().dequantize(dtype)

    # ---- execution --------------------------------------------------------------------
    def _integer_emulation(self, x: torch.Tensor) -> bool:
        """Per-token dynamic symmetric activations × symmetric weights: simulate with the
        integer-exact arithmetic the kernels use, so simulated and lowered models agree (a
        float matmul would round differently and flip later activation codes)."""
        a, w = self.act_spec, self.weight_spec
        return (a is not None and w is not None and x.dtype != torch.float64
                and a.format == "int" and w.format == "int"
                and a.granularity == "token" and a.dynamic and a.symmetric and a.clip_ratio == 1.0
                and w.symmetric and w.granularity in ("channel", "group") and self.act_scale is None)

    def _fp8_emulation(self, x: torch.Tensor) -> bool:
        """fp8 weights × fp8 per-token (or calibrated per-tensor) activations: the fp8
        kernels' arithmetic (exact products, fp32 epilogue), for the same reason."""
        return x.dtype != torch.float64 and fp8_w8a8_why_not(
            self.weight_spec, self.act_spec, self.act_scale is not None) is None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._integer_emulation(x):
            return integer_linear(x, self.quantized_weight(), self.bias, self.act_spec.bits,
                                  self.act_spec.grid)
        if self._fp8_emulation(x):
            return fp8_quantized_linear(x, self.quantized_weight(), self.bias, self.act_scale)
        if self.act_spec is not None:
            x = fake_quantize(x, self.act_spec, self.act_scale, self.act_zero)
        w = self.dequantized_weight(x.dtype if x.dtype == torch.float64 else torch.float32)
        b = self.bias.to(w.dtype) if self.bias is not None else None
        return F.linear(x.to(w.dtype), w, b).to(x.dtype)

    def weight_nbytes(self) -> int:
        if self.weight_spec is None:
            return self.weight.numel() * self.weight.element_size()
        return self.quantized_weight().nbytes()

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, w={self.weight_spec}, "
                f"a={self.act_spec}, bias={self.bias is not None}")


def is_quantized_module(m) -> bool:
    """Quantized replacements (QuantLinear, lowered kernel modules) carry a weight or act spec."""
    return getattr(m, "weight_spec", None) is not None or getattr(m, "act_spec", None) is not None

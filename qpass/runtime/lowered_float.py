"""`LoweredFloatLinear`: what Lower puts in the graph for a floating-point linear a kernel runs
(issue 28 item 6); the integer kinds are runtime/lowered.py's LoweredLinear.

  kind "fp8"    fp8 weights (tensor, channel, g<k>, b<k>) × fp8 activations per token
                (dynamic) or per tensor (static, calibrated): qpass::linear_fp8
  kind "fp4a16" nvfp4 / mxfp4 weights, float activations: qpass::linear_fp4a16

It keeps the QuantLinear's tensors as they are (the packed element codes `qweight`, the stored
scales, nvfp4's `global_scale`, a static `act_scale`), so checkpoints, tensor checks and
exporters read it as they read a QuantLinear (`quantized_weight()`); the kernels' operands
are views of them (fp8 codes: the int32 stream's bytes) and fp8 scales expanded per row."""
from __future__ import annotations

import torch
import torch.nn as nn

from qpass.backends import op_schemas  # noqa: F401  (registers torch.ops.qpass.*)
from qpass.runtime import lowered
from qpass.formats import QuantizedWeight, packed_cols, stored_layout
from qpass.formats.float_linear import FP4_WEIGHT_FORMATS, fp8_kernel_scales, fp8_w8a8_why_not
from qpass.specs import QuantSpec

KINDS = ("fp8", "fp4a16")


def float_kernel_kind(w: QuantSpec, a: QuantSpec | None, static_act: bool = False
                      ) -> tuple[str | None, str]:
    """Which float op runs a linear with float weight spec `w` (or float activations `a`), or
    (None, why not)."""
    if w is not None and w.format in FP4_WEIGHT_FORMATS and a is None:
        return "fp4a16", ""
    if w is not None and w.format == "fp8" and a is not None:
        why = fp8_w8a8_why_not(w, a, static_act)
        if why is None:
            return "fp8", ""
    else:
        why = f"no kernel for weights {w} with activations {a}"
    return None, (f"floating-point format: {why}; the reference QuantLinear (dequantize + fp32 "
                  f"matmul) runs it (kernels: fp8 W8A8, nvfp4/mxfp4 weight-only)")


class LoweredFloatLinear(nn.Module):
    """A floating-point linear on a kernel; built from its specs alone, like LoweredLinear."""
    qpass_role = "linear"

    def __init__(self, in_features: int, out_features: int, weight_spec: str,
                 act_spec: str | None = None, bias: bool = False, backend: str = "auto"):
        super().__init__()
        self.in_features, self.out_features, self.backend = in_features, out_features, backend
        self.weight_spec = QuantSpec.parse(weight_spec)
        self.act_spec = QuantSpec.parse(act_spec) if act_spec is not None else None
        static = self.act_spec is not None and not self.act_spec.dynamic
        kind, why = float_kernel_kind(self.weight_spec, self.act_spec, static)
        if kind is None:
            raise ValueError(f"no float kernel for weights {self.weight_spec} with activations "
                             f"{self.act_spec}: {why}")
        self.kind = kind
        N, K = out_features, in_features
        self.register_buffer("qweight", torch.zeros(N, packed_cols(K, self.weight_spec.bits),
                                                    dtype=torch.int32))
        for name, (dt, shape) in stored_layout(N, K, self.weight_spec).items():
            self.register_buffer(name, torch.ones(shape, dtype=dt))
        self.register_buffer("act_scale", torch.ones(1, 1) if static else None)
        self.bias = nn.Parameter(torch.zeros(N)) if bias else None

    @classmethod
    def from_quant_linear(cls, q, backend: str = "auto") -> "LoweredFloatLinear":
        qw = q.quantized_weight()
        m = cls(q.in_features, q.out_features, str(qw.spec),
                None if q.act_spec is None else str(q.act_spec), q.bias is not None, backend)
        m.qweight = qw.packed
        m.scales = qw.scale
        if qw.global_scale is not None:
            m.global_scale = qw.global_scale
        if m.act_scale is not None:
            m.act_scale = q.act_scale.to(torch.float32).reshape(1, 1)
        if q.bias is not None:
            m.bias = nn.Parameter(q.bias.detach().clone())
        return m.to(qw.packed.device)

    # the same constructor arguments as LoweredLinear's, read the same way
    qpass_init_kwargs = lowered.LoweredLinear.qpass_init_kwargs

    def quantized_weight(self) -> QuantizedWeight:
        return QuantizedWeight(self.qweight, self.scales, None, self.weight_spec,
                               (self.out_features, self.in_features),
                               self._buffers.get("global_scale"))

    def dequantized_weight(self, dtype=torch.float32) -> torch.Tensor:
        return self.quantized_weight().dequantize(dtype)

    def fp4_format(self) -> tuple[int, str]:
        """(block, scale format) of an fp4a16 linear."""
        scale, block = FP4_WEIGHT_FORMATS[self.weight_spec.format]
        return block, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ops = torch.ops.qpass
        N, K = self.out_features, self.in_features
        if self.kind == "fp8":
            codes = self.qweight.view(torch.uint8)[:, :K]       # the stream's bytes are codes
            scales, group = fp8_kernel_scales(self.scales, self.weight_spec, N, K)
            return ops.linear_fp8(x, codes, scales, self.act_scale, self.bias, group,
                                  self.backend)
        block, scale = self.fp4_format()
        return ops.linear_fp4a16(x, self.qweight, self.scales, self._buffers.get("global_scale"),
                                 self.bias, block, scale, self.backend)

    def weight_nbytes(self) -> int:
        return self.quantized_weight().nbytes()

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, out={self.out_features}, kind={self.kind}, "
                f"w={self.weight_spec}, a={self.act_spec}, backend={self.backend}")

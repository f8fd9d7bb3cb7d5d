"""QuantizedWeight: a packed weight with its scales, built from codes or from a float weight,
saved to and checked against a state dict."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import CheckpointError, SpecError
from ..specs import QuantSpec
from . import kquant
from .codes import _spec, compute_qparams, dequantize, quantize
from .floating import effective_scale, float_dequantize, float_qparams, float_quantize, stored_layout
from .packing import pack, packed_cols, unpack

@dataclass
class QuantizedWeight:
    """A packed weight (N, K). zero is None for symmetric specs: the zero point is the implicit
    2^(b-1) and is not stored. Floating-point specs pack their element bit patterns the same
    way; `scale` is then what formats/floating.py stores (float32 for fp8, uint8 E4M3 / E8M0
    codes for nvfp4 / mx) and nvfp4 adds its float32 `global_scale` (1,). K-quants (q4_k,
    q6_k; formats/kquant.py): `scale` the sub-block scale codes (uint8 / int8), `zero` q4_k's
    min codes (uint8), `super_scale` the float16-valued float32 super-block d (and dmin)."""

    packed: torch.Tensor          # int32 (N, ceil(K/32)*bits)
    scale: torch.Tensor           # float32, compute_qparams shape (floats: stored_layout)
    zero: torch.Tensor | None     # int32 like scale, asymmetric only
    spec: QuantSpec
    shape: tuple[int, int]
    global_scale: torch.Tensor | None = None      # nvfp4 only
    super_scale: torch.Tensor | None = None       # K-quants only: (N, K/256, 1|2)

    @classmethod
    def from_codes(cls, codes: torch.Tensor, scale, zero, spec,
                   global_scale: torch.Tensor | None = None,
                   super_scale: torch.Tensor | None = None) -> QuantizedWeight:
        """Pack codes produced elsewhere (e.g. by GPTQ) with their parameters (a float spec's
        scales in their stored form, floating.FloatScales.stored, and nvfp4's global scale; a
        K-quant's scale / min codes and super-block scales)."""
        spec = _spec(spec)
        if codes.dim() != 2:
            raise SpecError(f"a quantized weight is 2-D (N, K), got shape {tuple(codes.shape)}")
        if spec.is_kquant:
            N, K = codes.shape
            if scale.is_floating_point() or (zero is not None and zero.is_floating_point()):
                raise SpecError(f"{spec}: from_codes takes the sub-block scale (and min) codes, "
                                f"integers; got {scale.dtype}")
            lay = kquant.stored_layout(N, K, spec)
            zero = None if "zeros" not in lay else zero.to(lay["zeros"][0])
            qw = cls(pack(codes, spec.bits), scale.to(lay["scales"][0]), zero, spec, (N, K),
                     None, super_scale.to(torch.float32))
            why = kquant.check_parts(N, K, spec, qw.scale, qw.zero, qw.super_scale)
            if why:
                raise SpecError(f"{spec} weight {(N, K)}: {why}")
            return qw
        if spec.is_float:
            return cls(pack(codes, spec.bits), scale, None, spec, tuple(codes.shape),
                       None if global_scale is None else global_scale.to(torch.float32))
        return cls(pack(codes, spec.bits), scale.to(torch.float32),
                   None if spec.symmetric else zero.to(torch.int32), spec, tuple(codes.shape))

    @classmethod
    def from_float(cls, w: torch.Tensor, spec,
                   global_scale: torch.Tensor | None = None) -> QuantizedWeight:
        """Round-to-nearest quantization of a float weight (N, K); `global_scale`: nvfp4's,
        when it is shared with sibling linears (passes/_quantize_common.py), else from w."""
        spec = _spec(spec)
        if w.dim() != 2:
            raise SpecError(f"a quantized weight is 2-D (N, K), got shape {tuple(w.shape)}")
        if spec.is_activation_only:
            raise SpecError(f"{spec} is an activation spec; weights use channel/group/tensor")
        if spec.is_float:
            fs = float_qparams(w, spec, global_scale)
            return cls.from_codes(float_quantize(w, spec, fs.scale), fs.stored, None, spec,
                                  fs.global_scale)
        if spec.is_kquant:
            codes, p = kquant.kquant_rtn(w, spec)
            return cls.from_codes(codes, p.sc, p.m, spec, super_scale=p.sup)
        scale, zero = compute_qparams(w, spec)
        return cls.from_codes(quantize(w, spec, scale, zero), scale, zero, spec)

    def codes(self) -> torch.Tensor:
        return unpack(self.packed, self.spec.bits, self.shape[1])

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if self.spec.is_kquant:
            return kquant.kquant_dequantize(self.codes(), self.spec, self.scale, self.zero,
                                            self.super_scale, dtype)
        if self.spec.is_float:
            return float_dequantize(self.codes(), self.spec, self.float_scale(), dtype)
        return dequantize(self.codes(), self.scale, self.zero, self.spec, dtype)

    def float_scale(self) -> torch.Tensor:
        """A float spec's effective float32 scale per cell (what multiplies element values)."""
        return effective_scale(self.scale, self.global_scale, self.spec)

    def nbytes(self) -> int:
        """Bytes actually stored: packed codes + scales (+ zeros when asymmetric, + the
        global scale of nvfp4)."""
        ts = [self.packed, self.scale] + [t for t in (self.zero, self.global_scale,
                                                      self.super_scale) if t is not None]
        return sum(t.numel() * t.element_size() for t in ts)

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        p = _prefix(prefix)
        sd = {p + "qweight": self.packed, p + "scales": self.scale}
        if self.zero is not None:
            sd[p + "zeros"] = self.zero
        if self.global_scale is not None:
            sd[p + "global_scale"] = self.global_scale
        if self.super_scale is not None:
            sd[p + "super_scales"] = self.super_scale
        return sd

    @classmethod
    def from_state_dict(cls, sd: dict, prefix: str, spec, shape) -> QuantizedWeight:
        """Rebuild from checkpoint tensors; spec and shape come from the manifest."""
        spec, p = _spec(spec), _prefix(prefix)
        N, K = (int(d) for d in shape)
        if spec.is_kquant:
            return cls._kquant_from_state_dict(sd, p, spec, N, K)
        want = {p + "qweight": (torch.int32, (N, packed_cols(K, spec.bits))),
                p + "scales": (torch.float32, tuple(_scale_shape(N, K, spec)))}
        if spec.is_float:
            want.update({p + k: v for k, v in stored_layout(N, K, spec).items()})
        elif not spec.symmetric:
            want[p + "zeros"] = (torch.int32, want[p + "scales"][1])
        for key, (dtype, shp) in want.items():
            if key not in sd:
                raise CheckpointError(f"missing tensor {key!r} for a {spec} weight of shape "
                                      f"{(N, K)}")
            t = sd[key]
            if t.dtype != dtype or tuple(t.shape) != shp:
                raise CheckpointError(f"{key!r}: expected {dtype} {shp}, found {t.dtype} "
                                      f"{tuple(t.shape)}")
        return cls(sd[p + "qweight"], sd[p + "scales"], sd.get(p + "zeros") if not spec.symmetric
                   else None, spec, (N, K), sd.get(p + "global_scale"))


    @classmethod
    def _kquant_from_state_dict(cls, sd: dict, p: str, spec, N: int, K: int) -> QuantizedWeight:
        want = {p + "qweight": (torch.int32, (N, packed_cols(K, spec.bits)))}
        want.update({p + k: v for k, v in kquant.stored_layout(N, K, spec).items()})
        for key, (dtype, shp) in want.items():
            t = sd.get(key)
            if t is None or t.dtype != dtype or tuple(t.shape) != shp:
                raise CheckpointError(f"{key!r}: expected {dtype} {shp} for a {spec} weight of "
                                      f"shape {(N, K)}, found "
                                      f"{None if t is None else (t.dtype, tuple(t.shape))}")
        return cls(sd[p + "qweight"], sd[p + "scales"], sd.get(p + "zeros"), spec, (N, K),
                   None, sd[p + "super_scales"])


def _prefix(prefix: str) -> str:
    return prefix if not prefix or prefix.endswith(".") else prefix + "."


def _scale_shape(N: int, K: int, spec: QuantSpec) -> tuple[int, int]:
    if spec.granularity == "tensor":
        return (1, 1)
    if spec.granularity == "group":
        spec.check_shape(K)
        return (N, K // spec.group_size)
    return (N, 1)

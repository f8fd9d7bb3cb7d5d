"""Integer formats: scales/zero points, quantize/dequantize, and bit-stream packing.

The one owner of the code convention (docs/FORMATS.md): passes produce codes with it and
backends consume them with it, so the two can never disagree. Summary for a weight W (N, K),
quantized along K, b bits:
  symmetric   s = clip*absmax / d, q = clamp(round(w/s), -2^(b-1), 2^(b-1)-1),
              stored u = q + 2^(b-1), implicit zero z = 2^(b-1); d = spec.sym_divisor:
              (2^b-1)/2 on the full grid (default), 2^(b-1)-1 on the restricted one
  asymmetric  lo = clip*min(min w, 0), hi = clip*max(max w, 0), s = (hi-lo)/(2^b-1),
              z = clamp(round(-lo/s), 0, 2^b-1), u = clamp(round(w/s) + z, 0, 2^b-1)
  both        w ~ (u - z) * s; round half to even (torch.round); scales float32, zeros int32.
  f16scale    s is rounded to the nearest float16 (kept as float32) before any code is chosen
              with it, so fp16-scale formats (GGUF) hold the same weights.
  signed      (symmetric grid "signed", llama.cpp's Q4_0 choice) m = the group's first element
              of largest magnitude, s = m / -2^(b-1) (negative when m > 0), so m lands on the
              code -2^(b-1) exactly; u = min(2^b-1, trunc(w*(1/s) + (z + 1/2))) with llama.cpp's
              roundings (quantize_row_q4_0: the reciprocal, the product, the sum): round half
              up, ties decided exactly as llama.cpp decides them.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch

from ..errors import CheckpointError, SpecError
from ..specs import QuantSpec
from ..specs.float_spec import is_static_global
from .floating import (effective_scale, float_dequantize, float_fake_quantize, float_qparams,
                       float_quantize, static_global_scale, stored_layout)
from . import kquant

# Floor for scales of all-zero rows/groups: w/s stays 0, so dequantization returns exact zeros.
SCALE_FLOOR = torch.finfo(torch.float32).tiny
F16_SCALE_FLOOR = 2.0 ** -24        # the smallest float16 (subnormal): the fp16 floor
PERCENTILE = 0.999          # fraction of |x| kept by the "percentile" observer
MSE_GRID = [1.0 - 0.025 * i for i in range(21)]  # range shrink factors tried by "mse"


def _spec(spec) -> QuantSpec:
    return QuantSpec.parse(spec)


def _grouped(x: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """View x as (R, G, gs): rows = leading dims flattened, G groups of gs along the last dim."""
    if spec.granularity == "tensor":
        return x.reshape(1, 1, -1)
    if x.dim() == 0:
        raise SpecError(f"{spec} needs a tensor with a last (reduction) dim, got a scalar")
    K = x.shape[-1]
    if spec.granularity == "group":
        spec.check_shape(K)
        return x.reshape(-1, K // spec.group_size, spec.group_size)
    return x.reshape(-1, 1, K)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def qparams_from_range(lo: torch.Tensor, hi: torch.Tensor, spec
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (float32) and zero (int32) from observed min/max; observers use this too, so
    calibrated and on-the-fly parameters follow the same convention. clip is applied here."""
    spec = _spec(spec)
    # float64 for these few numbers: the stored float32 scale is then the (nearly always
    # correctly) rounded exact formula, on every device and for every input dtype.
    dt = torch.float64
    lo = torch.clamp(lo.to(dt), max=0.0) * spec.clip_ratio   # 0 must be representable
    hi = torch.clamp(hi.to(dt), min=0.0) * spec.clip_ratio
    if spec.grid == "signed":
        # the extreme of larger magnitude (the negative one on a tie) lands on -2^(b-1)
        scale = _stored_scale(torch.where(hi > -lo, hi, lo) / -spec.sym_divisor, spec)
        zero = torch.full(scale.shape, 1 << (spec.bits - 1), dtype=torch.int32, device=scale.device)
    elif spec.symmetric:
        scale = _stored_scale(torch.maximum(hi, -lo) / spec.sym_divisor, spec)
        zero = torch.full(scale.shape, 1 << (spec.bits - 1), dtype=torch.int32, device=scale.device)
    else:
        scale = _stored_scale((hi - lo) / (spec.levels - 1), spec)
        zero = torch.round(-lo / scale.to(dt)).clamp(0, spec.levels - 1).to(torch.int32)
    return scale, zero


def _stored_scale(exact: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """The float32 scale that is stored: the exact one rounded to float32, or to float16 under
    ':f16scale' (never 0; a range past float16's largest number is a SpecError). Rounding and
    the floor act on the magnitude: a signed-grid scale keeps its sign (0 becomes +floor)."""
    sign = torch.where(exact < 0, -1.0, 1.0).to(torch.float32)
    scale = exact.abs().to(torch.float32)
    if spec.scale_dtype != "float16":
        return scale.clamp(min=SCALE_FLOOR) * sign
    half = scale.to(torch.float16)
    if torch.isinf(half).any():
        raise SpecError(f"{spec}: a weight range needs a scale above float16's largest number "
                        f"(65504); drop ':f16scale' for this tensor")
    return half.to(torch.float32).clamp(min=F16_SCALE_FLOOR) * sign


def _observe(g: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-(row, group) lo/hi of a grouped view (R, G, gs) by the spec's observer."""
    if spec.observer == "percentile":
        n = g.shape[-1]
        k_hi = max(1, min(n, math.ceil(PERCENTILE * n)))
        if spec.symmetric:
            a = g.abs().kthvalue(k_hi, dim=-1).values
            return -a, a
        return g.kthvalue(n + 1 - k_hi, dim=-1).values, g.kthvalue(k_hi, dim=-1).values
    return g.amin(dim=-1), g.amax(dim=-1)


def _signed_range(g: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The observed range made one-sided for the signed grid: magnitude max(hi, −lo), on the
    side of the sign of the group's first element of largest |w| (llama.cpp's quantize_row_q4_0
    scans for it with a strict '<', so the first one wins a tie between +a and −a)."""
    a = torch.maximum(hi, -lo)
    first = g.gather(-1, g.abs().argmax(dim=-1, keepdim=True)).squeeze(-1)
    zero = torch.zeros_like(a)
    pos = first > 0
    return torch.where(pos, zero, -a), torch.where(pos, a, zero)


def compute_qparams(w: torch.Tensor, spec) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero for `w` under `spec`: (N, K//g) for group, (rows, 1) for channel/token
    (rows = leading dims flattened), (1, 1) for tensor. zero is int32 (2^(b-1) if symmetric).
    Floating-point specs: the effective float32 scale per cell (formats/floating.py), zero 0;
    nvfp4:tensor its global scale (1, 1)."""
    spec = _spec(spec)
    if spec.is_float:
        # nvfp4:tensor keeps its calibrated global scale; the block scales come at run time
        scale = static_global_scale(w, spec) if is_static_global(spec) else \
            float_qparams(w, spec).scale
        return scale, torch.zeros(scale.shape, dtype=torch.int32, device=scale.device)
    _no_kquant(spec, "compute_qparams")
    g = _grouped(w.detach().to(_compute_dtype(w)), spec)
    lo, hi = _observe(g, spec)
    if spec.grid == "signed":
        lo, hi = _signed_range(g, lo, hi)
    if spec.observer != "mse":
        return qparams_from_range(lo, hi, spec)
    # MSE observer: try shrunken ranges, keep per (row, group) the one with least squared error.
    best_err = best_s = best_z = None
    for f in MSE_GRID:
        s, z = qparams_from_range(lo * f, hi * f, spec)
        err = (_fq_grouped(g, spec, s, z) - g).pow(2).sum(-1)
        if best_err is None:
            best_err, best_s, best_z = err, s, z
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_s, best_z = torch.where(better, s, best_s), torch.where(better, z, best_z)
    return best_s, best_z


def _codes_grouped(g: torch.Tensor, spec: QuantSpec, scale, zero) -> torch.Tensor:
    s = scale.to(g.dtype).unsqueeze(-1)
    z = zero.to(g.dtype).unsqueeze(-1)
    if spec.grid == "signed":
        # llama.cpp's arithmetic (quantize_row_q4_0: id = 1/d, (int)(x*id + 8.5f), three
        # separately rounded ops), so its ties fall as they do there: same codes, bit for bit
        inv = torch.ones_like(s) / s
        return torch.trunc(g * inv + (z + 0.5)).clamp(0, spec.levels - 1)
    # round first, then add the integer zero: identical for sym, and the documented asym order
    return (torch.round(g / s) + z).clamp(0, spec.levels - 1)


def _fq_grouped(g, spec, scale, zero):
    u = _codes_grouped(g, spec, scale, zero)
    return (u - zero.to(g.dtype).unsqueeze(-1)) * scale.to(g.dtype).unsqueeze(-1)


def _zero_or_default(zero, scale, spec: QuantSpec) -> torch.Tensor:
    if zero is None:
        if not spec.symmetric:
            raise SpecError(f"asymmetric spec {spec} needs explicit zero points")
        return torch.full(scale.shape, 1 << (spec.bits - 1), dtype=torch.int32, device=scale.device)
    return zero


def quantize(w: torch.Tensor, spec, scale: torch.Tensor,
             zero: torch.Tensor | None = None) -> torch.Tensor:
    """Unsigned codes u (uint8, same shape as w). zero may be None for symmetric specs.
    Floating-point specs: the element bit patterns under effective scales (zero unused)."""
    spec = _spec(spec)
    if spec.is_float:
        return float_quantize(w, spec, scale)
    _no_kquant(spec, "quantize")
    zero = _zero_or_default(zero, scale, spec)
    g = _grouped(w.detach().to(_compute_dtype(w)), spec)
    return _codes_grouped(g, spec, scale, zero).to(torch.uint8).reshape(w.shape)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None, spec,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(u - z) * s in float32, then cast to dtype (floating-point specs: value(u) * s)."""
    spec = _spec(spec)
    if spec.is_float:
        return float_dequantize(codes, spec, scale, dtype)
    _no_kquant(spec, "dequantize")
    zero = _zero_or_default(zero, scale, spec)
    g = _grouped(codes, spec).to(torch.float32)
    out = (g - zero.to(torch.float32).unsqueeze(-1)) * scale.to(torch.float32).unsqueeze(-1)
    return out.reshape(codes.shape).to(dtype)


def fake_quantize(x: torch.Tensor, spec, scale: torch.Tensor | None = None,
                  zero: torch.Tensor | None = None) -> torch.Tensor:
    """quantize -> dequantize in x's dtype. Without scale, parameters come from x itself (the
    dynamic case: per-token rows for token granularity)."""
    spec = _spec(spec)
    if spec.is_float:
        return float_fake_quantize(x, spec, scale)
    if spec.is_kquant and scale is None:
        return kquant.kquant_fake_quantize(x, spec)
    _no_kquant(spec, "fake_quantize with given scales")
    if scale is None:
        scale, zero = compute_qparams(x, spec)
    return dequantize(quantize(x, spec, scale, zero), scale, zero, spec, dtype=x.dtype)


def _no_kquant(spec: QuantSpec, what: str) -> None:
    if spec.is_kquant:
        raise SpecError(f"{spec} is a K-quant: its scales are sub-block codes under float16 "
                        f"super-block scales, not (scale, zero) groups; {what} does not take "
                        f"it (QuantizedWeight.from_float / formats.kquant do)")


def quantize_per_token(x: torch.Tensor, bits: int = 8, grid: str = "full"
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric dynamic per-token activation quantization: signed q (int8, x's shape) and
    scale (float32, x.shape[:-1] + (1,)); s = absmax/d with d = QuantSpec.sym_divisor of
    `grid` ((2^b-1)/2 full, 2^(b-1)-1 restricted), x ~ q * s."""
    spec = QuantSpec(bits, granularity="token", dynamic=True, grid=grid)
    xf = x.detach().to(_compute_dtype(x))
    amax = xf.abs().amax(dim=-1, keepdim=True)
    # Divide by a same-device tensor, not a Python scalar: torch turns scalar division into a
    # multiplication by the reciprocal on some devices (1 ulp off), while kernels divide exactly.
    s = (amax / torch.full_like(amax, spec.sym_divisor)).to(torch.float32).clamp(min=SCALE_FLOOR)
    q = torch.round(xf / s.to(xf.dtype)).clamp(spec.qmin, spec.qmax).to(torch.int8)
    return q, s


def to_signed(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned symmetric codes u -> signed int8 q = u - 2^(b-1) (e.g. for int8 matmuls)."""
    return (codes.to(torch.int16) - (1 << (bits - 1))).to(torch.int8)


# ----- bit-stream packing ---------------------------------------------------------------------
_MASK32 = 0xFFFFFFFF


def packed_cols(K: int, bits: int) -> int:
    """int32 words per row: each run of 32 codes takes `bits` words."""
    return -(-K // 32) * bits


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise SpecError(f"pack bits must be an integer from 1 to 8, got {bits!r}")


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes (..., K) -> int32 (..., ceil(K/32)*bits), a little-endian bit stream along K.
    Code i of each 32-run sits at stream bit bits*i; word j holds stream bits 32j..32j+31."""
    _check_bits(bits)
    if codes.dtype != torch.uint8:
        raise SpecError(f"pack expects uint8 codes, got {codes.dtype}")
    if codes.numel() and int(codes.max()) >= (1 << bits):
        raise SpecError(f"a code exceeds {bits} bits (max {int(codes.max())})")
    K = codes.shape[-1]
    pad = (-K) % 32
    if 8 % bits == 0 and sys.byteorder == "little":
        # 1/2/4/8 bits: no code crosses a byte and the stream's bytes are the int32 words' bytes
        # in memory order, so OR the codes of each byte together and view the bytes as int32.
        per = 8 // bits
        c = torch.nn.functional.pad(codes, (0, pad)).reshape(*codes.shape[:-1], -1, per)
        byte = c[..., 0].clone()
        for j in range(1, per):
            byte |= c[..., j] << (bits * j)
        return byte.contiguous().view(torch.int32)
    c = torch.nn.functional.pad(codes.to(torch.int64), (0, pad)).reshape(*codes.shape[:-1], -1, 32)
    offsets = bits * torch.arange(32, dtype=torch.int64, device=codes.device)
    words = []
    for j in range(bits):  # at most 8 words per run; each gathers the codes that touch it
        sh = offsets - 32 * j
        idx = ((sh > -bits) & (sh < 32)).nonzero().squeeze(1)
        s = sh[idx]
        part = (c[..., idx] << s.clamp(min=0)) >> (-s).clamp(min=0)
        words.append((part & _MASK32).sum(-1))  # disjoint bits: sum == OR
    w = torch.stack(words, dim=-1)
    w = torch.where(w >= 1 << 31, w - (1 << 32), w)  # reinterpret as two's-complement int32
    return w.to(torch.int32).reshape(*codes.shape[:-1], -1)


def unpack(packed: torch.Tensor, bits: int, K: int) -> torch.Tensor:
    """Inverse of pack: int32 (..., ceil(K/32)*bits) -> uint8 codes (..., K)."""
    _check_bits(bits)
    if packed.dtype != torch.int32 or packed.shape[-1] != packed_cols(K, bits):
        raise SpecError(f"unpack expects int32 (..., {packed_cols(K, bits)}) for K={K}, "
                        f"bits={bits}; got {packed.dtype} {tuple(packed.shape)}")
    if 32 % bits == 0:
        # Fast path (bits 1, 2, 4, 8): no code straddles words; arithmetic shift + mask on
        # int32 is exact for every bit pattern, so this stays in int32 (hot in simulation).
        per = 32 // bits
        shifts = bits * torch.arange(per, dtype=torch.int32, device=packed.device)
        codes = (packed.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
        return codes.reshape(*packed.shape[:-1], -1)[..., :K].to(torch.uint8)
    w = (packed.to(torch.int64) & _MASK32).reshape(*packed.shape[:-1], -1, bits)
    offsets = bits * torch.arange(32, dtype=torch.int64, device=packed.device)
    j, sh = offsets // 32, offsets % 32
    lo = w[..., j] >> sh
    # a code may straddle two words; when it does not, the shifted high part lies above the mask
    hi = w[..., (j + 1).clamp(max=bits - 1)] << (32 - sh)
    codes = ((lo | hi) & ((1 << bits) - 1)).to(torch.uint8)
    return codes.reshape(*packed.shape[:-1], -1)[..., :K]


# ----- packed weight --------------------------------------------------------------------------
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

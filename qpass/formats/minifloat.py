"""Small floating-point encodings: E4M3 (OCP e4m3fn), E2M1 (FP4) and E8M0 (MX scales).

A value is (−1)^s · 2^(e − bias) · (1 + m/2^M) for a biased exponent field e ≥ 1, and
(−1)^s · 2^(1 − bias) · m/2^M for e = 0 (subnormals). E4M3 (bias 7, M = 3) has no infinity:
its largest finite value is 448 (S.1111.110) and S.1111.111 is NaN. E2M1 (bias 1, M = 1)
holds 0, ±0.5, ±1, ±1.5, ±2, ±3, ±4, ±6. E8M0 is an exponent alone: code c means 2^(c − 127),
255 is NaN.

`round_to(x, fmt)` rounds to the nearest value of the format, ties to the even mantissa (round
half to even on the binade's quantum, exact: the quantum is a power of two), saturating at
±max; NaN stays NaN. `encode` gives the bit pattern of a value already on the grid (sign bit
from the sign, so −0.0 keeps it, as IEEE casts do), `decode` reads codes back in float32.
"""
from __future__ import annotations

from dataclasses import dataclass

import math

import torch


@dataclass(frozen=True)
class MiniFloat:
    name: str
    ebits: int
    mbits: int
    bias: int
    max: float               # largest finite magnitude (saturation bound)
    nan_codes: tuple         # magnitude codes that mean NaN

    @property
    def bits(self) -> int:
        return 1 + self.ebits + self.mbits

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal binade (and the subnormals' scale)."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        """Exponent of the largest binade (448 = 1.75·2^8: 8; 6 = 1.5·2^2: 2)."""
        return math.floor(math.log2(self.max))

    @property
    def max_code(self) -> int:
        """Largest magnitude code of a finite value."""
        return (1 << (self.ebits + self.mbits)) - 1 - len(self.nan_codes)


E4M3 = MiniFloat("e4m3", 4, 3, 7, 448.0, (0x7F,))
E2M1 = MiniFloat("e2m1", 2, 1, 1, 6.0, ())
ELEMENTS = {"e4m3": E4M3, "e2m1": E2M1}
E8M0_BIAS = 127
E8M0_NAN = 255

_TABLES: dict = {}


def table(fmt: MiniFloat, device=None) -> torch.Tensor:
    """float32 value of every code 0 .. 2^bits − 1 (NaN where the format has NaN)."""
    key = (fmt.name, str(device))
    if key not in _TABLES:
        n = 1 << (fmt.ebits + fmt.mbits)
        mag = torch.arange(n, dtype=torch.float64)
        e = torch.div(mag, 1 << fmt.mbits, rounding_mode="floor")
        m = mag - e * (1 << fmt.mbits)
        frac = torch.where(e > 0, 1.0 + m / (1 << fmt.mbits), m / (1 << fmt.mbits))
        val = frac * pow2(torch.clamp(e, min=1).long() - fmt.bias, torch.float64)
        for c in fmt.nan_codes:
            val[c] = float("nan")
        _TABLES[key] = torch.cat([val, -val]).to(torch.float32).to(device)
    return _TABLES[key]


def round_to(x: torch.Tensor, fmt: MiniFloat, out: torch.Tensor | None = None) -> torch.Tensor:
    """x rounded to the nearest value of `fmt` (ties to even, saturating at ±fmt.max), in x's
    float dtype. `out` may be x itself (in place; GPTQ's column loop)."""
    a = x.abs()
    # the binade's quantum 2^e; above the largest binade every value saturates anyway (and
    # inf / 3e38 keep 2^-e a normal number)
    e = _exponent(a).clamp_(fmt.emin, fmt.emax + 1).sub_(fmt.mbits)
    a.mul_(pow2(-e, x.dtype)).round_().mul_(pow2(e, x.dtype)).clamp_(max=fmt.max)
    return torch.copysign(a, x, out=out)


def _exponent(a: torch.Tensor) -> torch.Tensor:
    """floor(log2 a) of float32/float64 magnitudes from their exponent bits (zero and
    subnormals give the format's smallest exponent, below every minifloat's emin)."""
    if a.dtype == torch.float64:
        return ((a.view(torch.int64) >> 52) & 0x7FF) - 1023
    return ((a.view(torch.int32) >> 23) & 0xFF) - 127


def encode(v: torch.Tensor, fmt: MiniFloat) -> torch.Tensor:
    """uint8 bit patterns of values already on `fmt`'s grid (round_to's output)."""
    a = v.abs().to(torch.float32)
    e = _exponent(a)
    normal = ((e + fmt.bias) << fmt.mbits) | ((a.view(torch.int32) >> (23 - fmt.mbits))
                                               & ((1 << fmt.mbits) - 1))
    sub = (a * pow2(torch.full_like(e, fmt.mbits - fmt.emin), torch.float32)).to(torch.int32)
    mag = torch.where(e >= fmt.emin, normal, sub)
    sign = torch.signbit(v).to(torch.uint8) << (fmt.ebits + fmt.mbits)
    return mag.to(torch.uint8) | sign


def decode(codes: torch.Tensor, fmt: MiniFloat) -> torch.Tensor:
    """float32 values of uint8 codes."""
    return table(fmt, codes.device)[codes.long()]


def pow2(e: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """2^e exactly for integer e in the normal range of float32 / float64 (built from the
    exponent bits: no exp2 approximation can creep in)."""
    if dtype == torch.float64:
        return ((e.to(torch.int64) + 1023) << 52).view(torch.float64)
    return ((e.to(torch.int32) + 127) << 23).view(torch.float32).to(dtype)


def e8m0_decode(codes: torch.Tensor) -> torch.Tensor:
    """float32 2^(c − 127) of E8M0 codes (c = 255 is NaN)."""
    key = ("e8m0", str(codes.device))
    if key not in _TABLES:
        vals = [math.ldexp(1.0, c - E8M0_BIAS) for c in range(E8M0_NAN)] + [float("nan")]
        _TABLES[key] = torch.tensor(vals, dtype=torch.float32, device=codes.device)
    return _TABLES[key][codes.long()]


def e8m0_encode(exponent: torch.Tensor) -> torch.Tensor:
    """uint8 E8M0 codes of integer exponents, clamped to the finite range [−127, 127]."""
    return (exponent.to(torch.int32) + E8M0_BIAS).clamp(0, E8M0_NAN - 1).to(torch.uint8)

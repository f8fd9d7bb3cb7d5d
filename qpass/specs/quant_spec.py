"""QuantSpec: one tensor's integer format (`int4:g128:sym`) or floating-point one (`fp8:channel`,
`nvfp4`: float_spec.py), parsed and validated at construction; the grid and scale-dtype
conventions are in the package doc (qpass.specs)."""
from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, replace

from qpass.errors import SpecError

from .float_spec import (FLOAT_FORM, FLOAT_FORMATS, check_float_spec, float_check_shape,
                         float_parse_fields, float_text, is_float_head)
from .kquant_spec import (KQUANT_FORM, KQUANT_FORMATS, check_kquant_spec, is_kquant_head,
                          kquant_check_shape, kquant_parse_fields)

GRANULARITIES = ("tensor", "channel", "group", "token")
OBSERVERS = ("minmax", "percentile", "mse")
GRIDS = ("full", "restricted", "signed")
GROUP_FITS = ("model", "layer")
# group sizes a fallback may pick, largest first: those serving kernels implement (vLLM's
# Marlin/Machete take 32, 64 and 128; GGUF blocks are 32), so a fitted model stays deployable
FALLBACK_GROUPS = (128, 64, 32)
SCALE_DTYPES = {"float32": None, "float16": "f16scale"}     # dtype -> its spec token
_SPEC_FORM = ("int<bits>[:tensor|channel|token|g<size>][:sym|asym][:dyn][:clip<ratio>]"
              "[:minmax|percentile|mse][:full|restricted|signed][:f16scale]")


@dataclass(frozen=True)
class QuantSpec:
    """Integer (or, with `format`, floating-point) format of one tensor. Weights are (N, K) and
    quantized along K (the reduction dim); activations are (..., K) and "token" means one scale
    per row of the (M, K) view."""

    bits: int | None = None         # fixed by the format for floating-point specs
    symmetric: bool = True
    granularity: str = "channel"
    group_size: int | None = None
    dynamic: bool = False
    clip_ratio: float = 1.0
    observer: str = "minmax"
    grid: str = "full"
    scale_dtype: str = "float32"
    format: str = "int"             # or a floating-point format (qpass/specs/float_spec.py) or
                                    # a llama.cpp K-quant (qpass/specs/kquant_spec.py)

    def __post_init__(self):
        if self.format in KQUANT_FORMATS:
            return check_kquant_spec(self, lambda k, v: object.__setattr__(self, k, v), _raise)
        if self.format != "int":
            return check_float_spec(self, lambda k, v: object.__setattr__(self, k, v), _raise)
        bits = self.bits
        if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or not 1 <= bits <= 8:
            raise SpecError(f"bits must be an integer from 1 to 8 (the packed formats hold 1..8-bit "
                            f"codes), got {bits!r}")
        object.__setattr__(self, "bits", int(bits))
        if self.bits == 1 and self.symmetric:
            # codes -1 and 0 only: the restricted scale would be absmax/0 and the full-range one
            # rounds every weight in [-absmax, absmax] to 0.
            raise SpecError("symmetric int1 has no positive level (codes -1 and 0 only); "
                            "use 'int1:asym' or at least 2 bits")
        if self.granularity not in GRANULARITIES:
            raise SpecError(f"unknown granularity {self.granularity!r}; valid: "
                            f"{', '.join(GRANULARITIES)}")
        if self.granularity == "group":
            g = self.group_size
            if isinstance(g, bool) or not isinstance(g, numbers.Integral) or g <= 0:
                raise SpecError(f"group granularity needs a positive integer group_size "
                                f"(e.g. 'int4:g128'), got {g!r}")
            object.__setattr__(self, "group_size", int(g))
        elif self.group_size is not None:
            raise SpecError(f"group_size={self.group_size} only makes sense with granularity "
                            f"'group', not {self.granularity!r}; write e.g. 'int{self.bits}:"
                            f"g{self.group_size}'")
        if self.granularity == "token":
            # Token counts change every call, so per-token scales can only be computed at run
            # time: token granularity implies a dynamic (activation) spec.
            object.__setattr__(self, "dynamic", True)
        try:
            clip = float(self.clip_ratio)
        except (TypeError, ValueError):
            raise SpecError(f"clip_ratio must be a number in (0, 1], got {self.clip_ratio!r}") from None
        if not 0.0 < clip <= 1.0:
            raise SpecError(f"clip_ratio must be in (0, 1] (a fraction of the observed range), "
                            f"got {self.clip_ratio!r}")
        object.__setattr__(self, "clip_ratio", clip)
        if self.observer not in OBSERVERS:
            raise SpecError(f"unknown observer {self.observer!r}; valid: {', '.join(OBSERVERS)}")
        if self.grid not in GRIDS:
            raise SpecError(f"unknown grid {self.grid!r}; valid: {', '.join(GRIDS)}")
        if self.scale_dtype not in SCALE_DTYPES:
            raise SpecError(f"unknown scale dtype {self.scale_dtype!r}; valid: "
                            f"{', '.join(SCALE_DTYPES)}")
        if self.scale_dtype != "float32" and self.granularity == "token":
            raise SpecError(f"':f16scale' rounds stored weight scales; per-token activation "
                            f"scales are computed at run time in float32, drop it from "
                            f"'int{self.bits}:token'")
        if self.grid != "full" and not self.symmetric:
            raise SpecError(f"':{self.grid}' is a symmetric grid; an asymmetric spec always "
                            f"spans its range with 2^b-1 steps, drop one of 'asym' / "
                            f"'{self.grid}'")
        if self.grid == "signed" and self.granularity == "token":
            # weights only: the scale's sign follows the data, which per-token activation
            # kernels (and calibrated activation scales) do not carry
            raise SpecError(f"':signed' (the signed extreme on code -2^(b-1), scale of either "
                            f"sign) is a weight grid; per-token activations use 'full' or "
                            f"'restricted', drop it from 'int{self.bits}:token'")

    # ----- code range -------------------------------------------------------------------------
    @property
    def qmin(self) -> int:
        """Smallest integer code: signed range for symmetric, unsigned for asymmetric."""
        return -(1 << (self.bits - 1)) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.symmetric else (1 << self.bits) - 1

    @property
    def levels(self) -> int:
        return 1 << self.bits

    @property
    def sym_divisor(self) -> float:
        """absmax / |scale| of a symmetric spec: (2^b − 1)/2 on the full grid (±absmax land on
        −2^(b−1) and, clipped, 2^(b−1) − 1), 2^(b−1) − 1 on the restricted one, 2^(b−1) on the
        signed one (the signed extreme m lands on −2^(b−1): scale m/−2^(b−1), negative when m
        is positive; llama.cpp's Q4_0 choice). Exact in float32, so absmax / divisor is the same
        correctly rounded number everywhere."""
        if self.grid == "full":
            return ((1 << self.bits) - 1) / 2
        if self.grid == "signed":
            return float(1 << (self.bits - 1))
        return float((1 << (self.bits - 1)) - 1)

    @property
    def is_float(self) -> bool:
        """A floating-point grid (fp8, nvfp4, mxfp4, mxfp8), not an integer one."""
        return self.format in FLOAT_FORMATS

    @property
    def is_kquant(self) -> bool:
        """A llama.cpp K-quant (q4_k, q6_k): integer codes under sub-block scale codes and
        float16 super-block scales (qpass/formats/kquant.py), not qpass's (u − z)·s groups."""
        return self.format in KQUANT_FORMATS

    @property
    def is_activation_only(self) -> bool:
        """Per-token specs (and nvfp4:tensor, a calibrated activation global scale) describe
        activations; weights never use them."""
        return self.granularity == "token" or (self.format == "nvfp4" and
                                               self.granularity == "tensor")

    def check_shape(self, K: int, name: str | None = None) -> None:
        """Raise SpecError if this spec cannot quantize a reduction dim of size K."""
        if self.is_float:
            return float_check_shape(self, K, name, _raise)
        if self.is_kquant:
            return kquant_check_shape(self, K, name, _raise)
        if self.granularity != "group" or K % self.group_size == 0:
            return
        where = f"layer {name!r}" if name else "tensor"
        raise SpecError(f"{where}: in_features K={K} is not divisible by group size "
                        f"{self.group_size}; use a group size that divides K, e.g. "
                        f"g{_suggest_group(K, self.group_size)}, or override this layer")

    # ----- text form --------------------------------------------------------------------------
    @classmethod
    def parse(cls, s: str | QuantSpec) -> QuantSpec:
        """Parse `int4:g128:sym`, `int8:token:dyn`, `int4:channel:asym:clip0.9:mse`, ..."""
        if isinstance(s, QuantSpec):
            return s
        if not isinstance(s, str):
            raise SpecError(f"expected a spec string like 'int4:g128:sym', got {type(s).__name__}")
        tokens = [t.strip() for t in s.strip().lower().split(":")]
        head = tokens[0]
        if is_kquant_head(head):
            return cls(**kquant_parse_fields(head, tokens[1:], s, _raise))
        if is_float_head(head):
            return cls(**float_parse_fields(head, _token_fields(tokens[1:], s), s, _raise))
        if not head.startswith("int") or not head[3:].isdigit():
            raise SpecError(f"spec {s!r} must start with int<bits> (e.g. 'int4:g128:sym'), a "
                            f"floating-point format ({', '.join(FLOAT_FORMATS)}) or a K-quant "
                            f"({', '.join(KQUANT_FORMATS)}); form: {_SPEC_FORM} | {FLOAT_FORM}"
                            f" | {KQUANT_FORM}")
        kw = {"bits": int(head[3:]), **_token_fields(tokens[1:], s)}
        if kw.get("granularity") == "token" and kw.get("dynamic") is False:
            raise SpecError(f"{s!r}: per-token scales are computed at run time, so 'token' is "
                            f"always dynamic; write 'int{kw['bits']}:token:dyn', or 'tensor' / "
                            f"'channel' for static scales")
        return cls(**kw)

    def with_tokens(self, tokens, s: str) -> QuantSpec:
        """This spec with the fields the spec tokens (`['g64']`, `['asym', 'mse']`) set
        replaced: what the modifiers of a scheme string such as `w4a16:g64` do to its weight
        spec (`s`, the whole string, for the error messages)."""
        kw = _token_fields(tokens, s)
        if kw.get("granularity", "group") not in ("group", "block"):
            kw["group_size"] = None
        return replace(self, **kw)

    def __str__(self) -> str:
        if self.is_kquant:
            return self.format
        if self.is_float:
            return float_text(self)
        gran = f"g{self.group_size}" if self.granularity == "group" else self.granularity
        parts = [f"int{self.bits}", gran]
        # Group specs always spell out symmetry (the form GPTQ/AWQ recipes use); elsewhere only
        # the non-default 'asym' is written.
        if not self.symmetric:
            parts.append("asym")
        elif self.granularity == "group":
            parts.append("sym")
        if self.dynamic:
            parts.append("dyn")
        if self.clip_ratio != 1.0:
            parts.append(f"clip{self.clip_ratio!r}")
        if self.observer != "minmax":
            parts.append(self.observer)
        if self.grid != "full":
            parts.append(self.grid)
        if SCALE_DTYPES[self.scale_dtype]:
            parts.append(SCALE_DTYPES[self.scale_dtype])
        return ":".join(parts)


SCALE_TOKENS = {tok: dt for dt, tok in SCALE_DTYPES.items() if tok}


def legacy_grid(spec) -> QuantSpec:
    """The meaning of a spec string saved before grids existed (checkpoint format version 1):
    symmetric specs then always used the restricted grid."""
    spec = QuantSpec.parse(spec)
    if spec.symmetric and spec.grid != "restricted" and spec.format == "int":
        return dataclasses.replace(spec, grid="restricted")
    return spec


def _token_fields(tokens, s: str) -> dict:
    """The QuantSpec fields that spec tokens after `int<bits>` set (`g128`, `sym`, `dyn`, ...)."""
    kw: dict = {}
    for tok in tokens:
        if tok in ("tensor", "channel", "token"):
            key, val = "granularity", tok
        elif tok.startswith("g") and tok[1:].isdigit():
            _set(kw, "granularity", "group", s)
            key, val = "group_size", int(tok[1:])
        elif tok.startswith("b") and tok[1:].isdigit():      # fp8 b128: 128x128 weight blocks
            _set(kw, "granularity", "block", s)
            key, val = "group_size", int(tok[1:])
        elif tok in ("sym", "asym"):
            key, val = "symmetric", tok == "sym"
        elif tok in ("dyn", "dynamic", "static"):
            key, val = "dynamic", tok != "static"
        elif tok.startswith("clip"):
            try:
                key, val = "clip_ratio", float(tok[4:])
            except ValueError:
                raise SpecError(f"bad clip token {tok!r} in {s!r}; write e.g. 'clip0.9'") from None
        elif tok in OBSERVERS:
            key, val = "observer", tok
        elif tok in GRIDS:
            key, val = "grid", tok
        elif tok in SCALE_TOKENS:
            key, val = "scale_dtype", SCALE_TOKENS[tok]
        else:
            raise SpecError(f"unknown token {tok!r} in spec {s!r}; form: {_SPEC_FORM}")
        _set(kw, key, val, s)
    return kw


def _raise(msg: str):
    raise SpecError(msg)


def _set(kw: dict, key: str, val, s: str) -> None:
    if key in kw and kw[key] != val:
        raise SpecError(f"spec {s!r} sets {key} twice ({kw[key]!r} and {val!r})")
    kw[key] = val


def _fallback_group(g: int, ks) -> int | None:
    """The largest FALLBACK_GROUPS entry below g that divides every K in ks, else None."""
    return next((d for d in FALLBACK_GROUPS if d < g and all(k % d == 0 for k in ks)), None)


def _suggest_group(K: int, g: int) -> int:
    """Largest divisor of K not above g, preferring multiples of 32 (one packed run)."""
    divisors = [d for d in range(1, min(g, K) + 1) if K % d == 0]
    aligned = [d for d in divisors if d % 32 == 0]
    return (aligned or divisors)[-1]

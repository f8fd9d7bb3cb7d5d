"""Quantization specs and schemes: what to quantize, to how many bits, at which granularity.

`QuantSpec` describes one tensor's integer format (`int4:g128:sym`); `Scheme` says which spec
applies to the weights, activations and attention of every node, with per-node overrides.
Both validate at construction so a typo fails before any compute, with a message that says
what would have been valid. The arithmetic lives in qpass/formats/.

Symmetric grid (DESIGN §4): "full" (the default) is the convention of GPTQ, llm-compressor and
compressed-tensors, s = 2·absmax/(2^b − 1), codes in [−2^(b−1), 2^(b−1) − 1], all 2^b levels
used; "restricted" (`:restricted`) is s = absmax/(2^(b−1) − 1), one level unused. Spec strings
saved by qpass before the grid existed mean the restricted grid (`legacy_grid`).

Scale dtype: scales are stored in float32; `:f16scale` makes every weight scale a float16
number (the exact one rounded to fp16) before the codes are chosen with it, so formats that
store fp16 scales (GGUF Q8_0/Q4_0) carry the weights without changing them.
"""
from __future__ import annotations

import dataclasses
import fnmatch
import numbers
from dataclasses import dataclass, field, replace

from .errors import SpecError

GRANULARITIES = ("tensor", "channel", "group", "token")
OBSERVERS = ("minmax", "percentile", "mse")
GRIDS = ("full", "restricted")
GROUP_FITS = ("model", "layer")
# group sizes a fallback may pick, largest first: those serving kernels implement (vLLM's
# Marlin/Machete take 32, 64 and 128; GGUF blocks are 32), so a fitted model stays deployable
FALLBACK_GROUPS = (128, 64, 32)
SCALE_DTYPES = {"float32": None, "float16": "f16scale"}     # dtype -> its spec token
_SPEC_FORM = ("int<bits>[:tensor|channel|token|g<size>][:sym|asym][:dyn][:clip<ratio>]"
              "[:minmax|percentile|mse][:full|restricted][:f16scale]")


@dataclass(frozen=True)
class QuantSpec:
    """Integer format of one tensor. Weights are (N, K) and quantized along K (the reduction
    dim); activations are (..., K) and "token" means one scale per row of the (M, K) view."""

    bits: int
    symmetric: bool = True
    granularity: str = "channel"
    group_size: int | None = None
    dynamic: bool = False
    clip_ratio: float = 1.0
    observer: str = "minmax"
    grid: str = "full"
    scale_dtype: str = "float32"

    def __post_init__(self):
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
        if self.grid == "restricted" and not self.symmetric:
            raise SpecError("':restricted' is a symmetric grid (absmax/(2^(b-1)-1)); an "
                            "asymmetric spec always spans its range with 2^b-1 steps, drop "
                            "one of 'asym' / 'restricted'")

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
        """absmax / scale of a symmetric spec: (2^b − 1)/2 on the full grid (±absmax land on
        −2^(b−1) and, clipped, 2^(b−1) − 1), 2^(b−1) − 1 on the restricted one. Exact in
        float32, so absmax / divisor is the same correctly rounded number everywhere."""
        if self.grid == "full":
            return ((1 << self.bits) - 1) / 2
        return float((1 << (self.bits - 1)) - 1)

    @property
    def is_activation_only(self) -> bool:
        """Per-token specs describe activations; weights never use them."""
        return self.granularity == "token"

    def check_shape(self, K: int, name: str | None = None) -> None:
        """Raise SpecError if this spec cannot quantize a reduction dim of size K."""
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
        if not head.startswith("int") or not head[3:].isdigit():
            raise SpecError(f"spec {s!r} must start with int<bits> (e.g. 'int4:g128:sym'); "
                            f"form: {_SPEC_FORM}")
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
        if kw.get("granularity", "group") != "group":
            kw["group_size"] = None
        return replace(self, **kw)

    def __str__(self) -> str:
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
    if spec.symmetric and spec.grid != "restricted":
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


# ----------------------------------------------------------------------------------------------
def _spec_or_none(x) -> QuantSpec | None:
    return None if x is None else QuantSpec.parse(x)


@dataclass(frozen=True)
class Scheme:
    """Weight / activation / attention specs plus per-node overrides.

    `overrides` is an ordered sequence (or dict) of (pattern, spec-or-None): a pattern is an
    fnmatch glob on the node/module name, or `role:<glob>` on the node's role. None keeps the
    node in high precision; a spec replaces its weight spec (its activations keep the scheme's
    act spec). The LAST matching override wins, so later entries refine earlier ones; any
    override beats the `keep_roles` default (head, embeddings and MoE routers stay high
    precision).
    """

    name: str
    weight: QuantSpec | None
    act: QuantSpec | None = None
    attn: QuantSpec | None = None
    overrides: tuple = ()
    keep_roles: frozenset = field(default_factory=lambda: frozenset({"head", "embed", "router"}))
    strict_groups: bool = False     # refuse (SpecError) instead of fitting a group size to K
    # how a group size that does not divide some layer's K is fitted: "model" picks one group
    # size for every layer of the model (fit_to), "layer" fits each layer alone
    group_fit: str = "model"
    model_group: int | None = field(default=None, compare=False)   # set by fit_to

    def __post_init__(self):
        object.__setattr__(self, "weight", _spec_or_none(self.weight))
        object.__setattr__(self, "act", _spec_or_none(self.act))
        object.__setattr__(self, "attn", _spec_or_none(self.attn))
        items = self.overrides.items() if isinstance(self.overrides, dict) else self.overrides
        norm = []
        for item in items:
            if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str)):
                raise SpecError(f"an override is (pattern, spec or None), got {item!r}")
            norm.append((item[0], _spec_or_none(item[1])))
        object.__setattr__(self, "overrides", tuple(norm))
        object.__setattr__(self, "keep_roles", frozenset(self.keep_roles))
        if self.group_fit not in GROUP_FITS:
            raise SpecError(f"scheme {self.name!r}: group_fit must be one of {GROUP_FITS}, got "
                            f"{self.group_fit!r}")
        w = self.weight
        if w is not None and (w.is_activation_only or w.dynamic):
            raise SpecError(f"scheme {self.name!r}: weight spec {w} is dynamic/per-token; weights "
                            f"are quantized once, use e.g. 'int{w.bits}:channel' or "
                            f"'int{w.bits}:g128'")
        for label, a in (("act", self.act), ("attn", self.attn)):
            if a is not None and a.granularity == "channel":
                raise SpecError(f"scheme {self.name!r}: {label} spec {a} is per-channel, which no "
                                f"integer matmul can apply; use 'int{a.bits}:token:dyn' or "
                                f"'int{a.bits}:tensor'")

    def spec_for(self, name: str, role: str | None = None
                 ) -> tuple[QuantSpec | None, QuantSpec | None, str]:
        """(weight spec, activation spec, reason) for one node. None = keep high precision."""
        for pattern, spec in reversed(self.overrides):
            if _matches(pattern, name, role):
                if spec is None:
                    return None, None, f"kept high precision: override {pattern!r}"
                if role == "attention":
                    return None, spec, f"override {pattern!r}: attention {spec}"
                return spec, self.act, f"override {pattern!r}: weight {spec}"
        if role == "attention":
            if self.attn is None:
                return None, None, f"kept high precision: scheme {self.name} has no attention spec"
            return None, self.attn, f"scheme {self.name}: attention {self.attn}"
        if role in self.keep_roles:
            return None, None, f"kept high precision: role {role} (default rule)"
        if self.weight is None and self.act is None:
            return None, None, f"kept high precision: scheme {self.name} quantizes nothing"
        return self.weight, self.act, f"scheme {self.name}"

    @classmethod
    def parse(cls, x) -> Scheme:
        """A Scheme, a scheme name (`w4a4`, `w4a16g128`, optional `kv<bits>` suffix for
        attention) optionally followed by spec tokens that change its weight spec
        (`w4a16:g64`, `w4a8:g128:asym`), or a weight spec (`'int4:g128:sym'`, activations
        unquantized)."""
        if isinstance(x, Scheme):
            return x
        if isinstance(x, QuantSpec):
            return cls(name=str(x), weight=x)
        if not isinstance(x, str):
            raise SpecError(f"expected a scheme name, spec string or Scheme, got {type(x).__name__}")
        key = x.strip().lower()
        if key.startswith("int"):
            return cls(name=key, weight=QuantSpec.parse(key))
        named, *mods = [t.strip() for t in key.split(":")]
        base, kv = named, None
        if "kv" in named:
            base, _, kv_bits = named.rpartition("kv")
            if not kv_bits.isdigit():
                base = named
            else:
                kv = QuantSpec(int(kv_bits), granularity="token", dynamic=True)
        if base not in SCHEMES:
            raise SpecError(f"unknown scheme {x!r}; known: {', '.join(SCHEMES)} (optionally with "
                            f"a 'kv<bits>' suffix and weight spec tokens, e.g. 'w4a16:g64'), or "
                            f"a weight spec such as 'int4:g128:sym'")
        weight, act = SCHEMES[base]
        if mods:
            weight = QuantSpec.parse(weight).with_tokens(mods, x)
        return cls(name=key, weight=weight, act=act, attn=kv)

    def fit_to(self, ks) -> Scheme:
        """This scheme fitted to a model whose layers under the scheme's group weight spec have
        the input sizes `ks`. With group_fit="model", when the group size does not divide
        every K, one group size is chosen for the whole model (`model_group`): the largest
        FALLBACK_GROUPS entry below it dividing every K. One group size per model is what
        GPTQ-format checkpoints hold, and a layer whose K does divide keeps the same grid
        quality as its neighbours (issue 18: SmolLM2's K=1536 layers kept at g128 beside g64
        ones cost RTN 6 perplexity points, docs/RESULTS.md)."""
        w = self.weight
        if (self.strict_groups or self.group_fit != "model" or w is None
                or w.granularity != "group"):
            return self
        ks = sorted({int(k) for k in ks})
        if all(k % w.group_size == 0 for k in ks):
            return replace(self, model_group=None)
        return replace(self, model_group=_fallback_group(w.group_size, ks))

    def fit_weight(self, spec: QuantSpec | None, K: int, name: str = "",
                   reason: str = "") -> tuple[QuantSpec | None, str]:
        """`spec` made to fit a layer with K inputs, and the reason to report. The scheme's
        own weight spec takes the model-wide group size when fit_to chose one; otherwise a
        group size that does not divide K falls back to the largest FALLBACK_GROUPS entry
        below it dividing K, else to per-channel scales; with strict_groups it is a
        SpecError instead."""
        if spec is None or spec.granularity != "group":
            return spec, reason
        if self.model_group and spec == self.weight and K % self.model_group == 0:
            fitted = replace(spec, group_size=self.model_group)
            return fitted, (f"{reason}; group size {spec.group_size} does not divide the K of "
                            f"every layer: {fitted} for the whole model (fallback, "
                            f"group_fit='model')")
        if K % spec.group_size == 0:
            return spec, reason
        if self.strict_groups:
            spec.check_shape(K, name)                    # raises, naming the layer
        g = _fallback_group(spec.group_size, [K])
        fitted = replace(spec, group_size=g) if g else \
            replace(spec, granularity="channel", group_size=None)
        return fitted, (f"{reason}; group size {spec.group_size} does not divide K={K}: "
                        f"{fitted} instead (fallback)")

    def specs_for(self, name: str, role: str | None, K: int
                  ) -> tuple[QuantSpec | None, QuantSpec | None, str]:
        """spec_for with the weight spec fitted to the layer's K (fit_weight)."""
        w, a, reason = self.spec_for(name, role)
        w, reason = self.fit_weight(w, K, name, reason)
        return w, a, reason

    def to_dict(self) -> dict:
        s = lambda spec: None if spec is None else str(spec)  # noqa: E731
        return {"name": self.name, "weight": s(self.weight), "act": s(self.act),
                "attn": s(self.attn), "overrides": [[p, s(v)] for p, v in self.overrides],
                "keep_roles": sorted(self.keep_roles), "strict_groups": self.strict_groups,
                "group_fit": self.group_fit}

    @classmethod
    def from_dict(cls, d: dict) -> Scheme:
        """The scheme of a to_dict() record. A key the record lacks takes the field's default,
        except where OLD_RECORD_MEANING says what a record written before the key existed meant."""
        if not isinstance(d, dict) or "name" not in d or "weight" not in d:
            raise SpecError(f"scheme dict needs 'name' and 'weight' keys, got {d!r}")
        kw = {**OLD_RECORD_MEANING, **{k: d[k] for k in RECORDED_FIELDS if k in d}}
        try:
            return cls(**kw)
        except TypeError as e:
            raise SpecError(f"scheme dict {d!r}: {e}") from None


# What a Scheme record (manifests, pass configs) written before a field existed meant, where
# that differs from the field's default today: before `group_fit` (issue 18) every layer's
# group size was fitted alone, i.e. "layer"; the default became "model". Every other missing
# key takes the dataclass default (keep_roles, strict_groups: records always held keep_roles,
# and strict_groups=False is what they did before it existed).
OLD_RECORD_MEANING = {"group_fit": "layer"}
RECORDED_FIELDS = tuple(f.name for f in dataclasses.fields(Scheme) if f.compare)  # to_dict's keys


def _matches(pattern: str, name: str, role: str | None) -> bool:
    if pattern.startswith("role:"):
        return role is not None and fnmatch.fnmatchcase(role, pattern[5:])
    return fnmatch.fnmatchcase(name, pattern)


# name -> (weight spec, activation spec); w4a16 is the common shorthand for the g128 variant.
SCHEMES: dict[str, tuple[str, str | None]] = {
    "w4a16g128": ("int4:g128:sym", None),
    "w4a16": ("int4:g128:sym", None),
    "w3a16g128": ("int3:g128:sym", None),
    "w2a16g128": ("int2:g128:sym", None),
    "w8a16": ("int8:channel", None),
    "w8a8": ("int8:channel", "int8:token:dyn"),
    "w4a8": ("int4:channel", "int8:token:dyn"),
    "w4a8g128": ("int4:g128:sym", "int8:token:dyn"),
    "w4a4": ("int4:channel", "int4:token:dyn"),
    # llama.cpp's block formats (GGUF export): 32-weight blocks, float16 scales chosen first
    "q4_0": ("int4:g32:sym:f16scale", None),
    "q8_0": ("int8:g32:sym:f16scale", None),
}

"""Scheme: which spec applies to the weights, activations and attention of every node, with
per-node overrides and keep-in-float rules; the named schemes (SCHEMES)."""
from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass, field, replace

from qpass.errors import SpecError

from .float_spec import is_float_head, spec_head
from .kquant_spec import KQUANT_FORMATS, MIXES, is_kquant_head
from .quant_spec import GROUP_FITS, QuantSpec, _fallback_group

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
    # a K-quant mix (qpass/specs/kquant_spec.py MIXES, e.g. "q4_k_m"): per-tensor types by
    # llama.cpp's rule, expanded into overrides for one model (qpass.pipeline.group_fit)
    mix: str | None = None

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
        if self.mix is not None and self.mix not in MIXES:
            raise SpecError(f"scheme {self.name!r}: unknown K-quant mix {self.mix!r}; known: "
                            f"{', '.join(MIXES)}")
        if self.group_fit not in GROUP_FITS:
            raise SpecError(f"scheme {self.name!r}: group_fit must be one of {GROUP_FITS}, got "
                            f"{self.group_fit!r}")
        w = self.weight
        if w is not None and (w.is_activation_only or w.dynamic):
            use = f"'{w.format}'" if _fixed_block(w) else \
                f"e.g. '{spec_head(w)}:channel' or '{spec_head(w)}:g128'"
            raise SpecError(f"scheme {self.name!r}: weight spec {w} is an activation spec "
                            f"(dynamic, per-token or a calibrated activation scale); weights "
                            f"are quantized once, use {use}")
        for label, a in (("act", self.act), ("attn", self.attn)):
            if a is not None and a.granularity == "channel":
                raise SpecError(f"scheme {self.name!r}: {label} spec {a} is per-channel, which no "
                                f"integer matmul can apply; use '{spec_head(a)}:token:dyn' or "
                                f"'{spec_head(a)}:tensor'")

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
        head = key.split(":")[0]
        if key.startswith("int") or is_float_head(head) or is_kquant_head(head):
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
        return cls(name=key, weight=weight, act=act, attn=kv,
                   mix=base if base in MIXES else None)

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
                or w.granularity != "group" or _fixed_block(w)):
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
        if spec.is_kquant:
            return self._kquant_fallback(spec, K, name, reason)
        if K % spec.group_size == 0:
            return spec, reason
        if self.strict_groups or _fixed_block(spec):    # nvfp4 / mx blocks have one size
            spec.check_shape(K, name)                    # raises, naming the layer
        g = _fallback_group(spec.group_size, [K])
        fitted = replace(spec, group_size=g) if g else \
            replace(spec, granularity="channel", group_size=None)
        return fitted, (f"{reason}; group size {spec.group_size} does not divide K={K}: "
                        f"{fitted} instead (fallback)")

    def _kquant_fallback(self, spec: QuantSpec, K: int, name: str, reason: str
                         ) -> tuple[QuantSpec | None, str]:
        """A K-quant where K is a multiple of 256; else llama.cpp's own fallback
        (llama-quantize's tensor_type_fallback): q4_k -> q5_0, q6_k -> q8_0 when K is a
        multiple of 32, else high precision (llama.cpp: F16). Strict schemes refuse."""
        if K % 256 == 0:
            return spec, reason
        if self.strict_groups:
            spec.check_shape(K, name)                    # raises, naming the layer
        fb = KQUANT_FORMATS[spec.format].fallback
        if K % 32:
            return None, (f"{reason}; K={K} is not a multiple of {spec}'s 256-weight super-blocks "
                          f"nor of {fb}'s 32-weight blocks: kept in high precision (llama.cpp: "
                          f"F16)")
        return QuantSpec.parse(SCHEMES[fb][0]), (
            f"{reason}; K={K} is not a multiple of {spec}'s 256-weight super-blocks: {fb} "
            f"instead (llama.cpp's fallback)")

    def specs_for(self, name: str, role: str | None, K: int
                  ) -> tuple[QuantSpec | None, QuantSpec | None, str]:
        """spec_for with the weight spec fitted to the layer's K (fit_weight)."""
        w, a, reason = self.spec_for(name, role)
        w, reason = self.fit_weight(w, K, name, reason)
        if a is not None and a.is_float:
            a.check_shape(K, name)                       # nvfp4 / mx activation blocks
        return w, a, reason

    def to_dict(self) -> dict:
        s = lambda spec: None if spec is None else str(spec)  # noqa: E731
        return {"name": self.name, "weight": s(self.weight), "act": s(self.act),
                "attn": s(self.attn), "overrides": [[p, s(v)] for p, v in self.overrides],
                "keep_roles": sorted(self.keep_roles), "strict_groups": self.strict_groups,
                "group_fit": self.group_fit, "mix": self.mix}

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


def _fixed_block(spec: QuantSpec) -> bool:
    """nvfp4 / mxfp4 / mxfp8 / K-quants: the format fixes the block along K, no other group
    size fits."""
    return (spec.is_float and spec.format != "fp8") or spec.is_kquant


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
    # llama.cpp's block formats (GGUF export): 32-weight blocks, float16 scales chosen first,
    # on llama.cpp's own grids: Q4_0 the signed extreme on -8, Q8_0 absmax/127 (restricted; the
    # full grid's clipped extreme costs 8% more error in blocks of 32). Spec strings are what
    # records keep, so checkpoints made with the full grid still say int<b>:g32:sym:f16scale
    "q4_0": ("int4:g32:sym:signed:f16scale", None),
    "q8_0": ("int8:g32:sym:restricted:f16scale", None),
    # Q5_0: Q4_0's rule at 5 bits (quantize_row_q5_0_ref); what llama.cpp writes for a Q4_K
    # tensor whose K is not a multiple of 256
    "q5_0": ("int5:g32:sym:signed:f16scale", None),
    # llama.cpp's K-quants (qpass/specs/kquant_spec.py): 256-weight super-blocks; q4_k_m is
    # llama-quantize's Q4_K_M mix (q6_k for the attn_v / ffn_down / output tensors it picks)
    "q4_k": ("q4_k", None),
    "q6_k": ("q6_k", None),
    "q4_k_m": ("q4_k", None),
    # floating-point grids (qpass/specs/float_spec.py): w<bits>a<bits>-<format>, named after
    # llm-compressor's schemes (FP8_DYNAMIC, NVFP4A16, NVFP4, MXFP4A16, MXFP4)
    "w8a16-fp8": ("fp8:channel", None),
    "w8a8-fp8": ("fp8:channel", "fp8:token:dyn"),
    "w4a16-nvfp4": ("nvfp4", None),
    "w4a4-nvfp4": ("nvfp4", "nvfp4:token:dyn"),
    # llm-compressor's NVFP4 exactly (exports as compressed-tensors W4A4): one calibrated
    # activation global scale per tensor; w4a4-nvfp4's per-token global measured better on
    # tiny-llada (bench/results/float_grid_variants_nvfp4_static_tiny-llada_cpu_2026-12-07.json)
    "w4a4-nvfp4-static": ("nvfp4", "nvfp4:tensor"),
    "w4a16-mxfp4": ("mxfp4", None),
    "w4a4-mxfp4": ("mxfp4", "mxfp4:token:dyn"),
    "w8a8-mxfp8": ("mxfp8", "mxfp8:token:dyn"),
}

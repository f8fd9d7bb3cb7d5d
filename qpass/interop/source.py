"""What an exporter reads from a compiled checkpoint: per linear its unsigned codes (N, K),
float32 scales (N, G), int32 zero points (N, G) when asymmetric, group size and bias; every
other tensor (embeddings, norms, head) in the model's dtype; all under the model's original HF
names (qpass.models.naming.key_map)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from qpass.errors import CheckpointError
from qpass.formats import unpack
from qpass.formats.kquant import effective
from qpass.models.naming import config_to_hf, key_map
from qpass.ir.qlinear import is_quantized_module
from qpass.runtime.lowered import LoweredLinear
from qpass.specs import QuantSpec

# call_function targets of a plain (un-rotated, un-smoothed) denoiser graph after Lower: an
# exported HF model computes exactly this and nothing else.
_ONLINE_OPS = ("hadamard", "online", "smooth", "rotate")
# Buffers the HF model recomputes from its config (rotary tables).
_DERIVED = ("rope_cos", "rope_sin")
# Denoiser parameter names of linear weights (a float one is a linear the scheme kept).
_LINEAR_WEIGHTS = ("_proj.weight", "head.weight")


@dataclass
class QLinear:
    hf_name: str                   # "model.layers.0.self_attn.q_proj" (no ".weight")
    codes: torch.Tensor            # uint8 (N, K), unsigned, zero point 2^(b-1) (symmetric)
    scales: torch.Tensor           # float32 (N, G)
    spec: QuantSpec
    act_spec: QuantSpec | None
    group_size: int                # K when one group per row
    bias: torch.Tensor | None
    zeros: torch.Tensor | None = None   # int32 (N, G), unsigned like the codes; asymmetric only
    # floating-point specs: `codes` are the element bit patterns (E4M3 / E2M1), `scales` the
    # effective float32 scale per cell, `stored_scale` what the format keeps (float32 for
    # fp8; uint8 E4M3 codes for nvfp4) and `global_scale` nvfp4's float32 global scale (1,)
    stored_scale: torch.Tensor | None = None
    global_scale: torch.Tensor | None = None
    act_scale: torch.Tensor | None = None     # a static activation spec's calibrated scale
    # K-quants (q4_k, q6_k): `scales` the effective float32 sub-block scale d·sc (N, K/sub),
    # `stored_scale` the sub-block scale codes, `stored_min` q4_k's min codes and
    # `super_scale` the float16-valued super-block d (and dmin), (N, K/256, 1|2)
    stored_min: torch.Tensor | None = None
    super_scale: torch.Tensor | None = None


@dataclass
class ExportSource:
    config: object                 # qpass.models.config.ModelConfig
    hf_config: dict
    linears: list[QLinear] = field(default_factory=list)
    dense: dict[str, torch.Tensor] = field(default_factory=dict)   # HF name -> float tensor
    tokenizer: object = None
    kept_linears: list[str] = field(default_factory=list)   # HF names of float linears (head…)

    @property
    def dtype(self) -> torch.dtype:
        """The model's float dtype: that of its embedding (what exporters write dense tensors in)."""
        return next(iter(self.dense.values())).dtype if self.dense else torch.float32


def _weight_parts(name: str, m) -> tuple[torch.Tensor, torch.Tensor, QuantSpec, int,
                                         torch.Tensor | None]:
    """(unsigned codes (N, K), float32 scales (N, G), spec, group size, int32 zeros (N, G) or
    None) of a quantized linear, a QuantLinear (packed per qpass.formats) or a LoweredLinear
    (repacked for its kernel)."""
    N, K = m.out_features, m.in_features
    if isinstance(m, LoweredLinear):
        if m.qweight.dtype == torch.int8:         # w8a8 kernels hold signed codes u - 128
            codes = (m.qweight.to(torch.int16) + 128).to(torch.uint8)
        else:
            codes = unpack(m.qweight, m.bits, K)
        zeros = None if m.zeros is None else m.zeros.to(torch.int32)
        return codes, m.scales.float(), m.weight_spec, m.group_size or K, zeros
    qw = m.quantized_weight() if hasattr(m, "quantized_weight") else None
    if qw is None:
        raise CheckpointError(f"linear {name!r} keeps float weights but quantizes activations "
                              f"({m.act_spec}); no export format represents that")
    spec = qw.spec
    g = spec.group_size if spec.granularity == "group" else K
    if spec.is_kquant:
        return qw.codes(), effective(qw.scale, qw.zero, qw.super_scale, spec)[0], spec, g, None
    if spec.is_float:
        return qw.codes(), qw.float_scale(), spec, g, None
    zeros = None if qw.zero is None else qw.zero.to(torch.int32).expand(N, -1).contiguous()
    return qw.codes(), qw.scale.float().expand(N, -1).contiguous(), spec, g, zeros


def attach_float_parts(q: QLinear, m) -> QLinear:
    """Fill a float-spec QLinear's stored scales, nvfp4 global scale and static activation
    scale, or a K-quant's stored scale / min codes and super-block scales, from its QuantLinear
    `m` (integer specs: unchanged)."""
    if q.spec is not None and q.spec.is_kquant:
        qw = m.quantized_weight()
        q.stored_scale = qw.scale.detach().cpu()
        q.stored_min = None if qw.zero is None else qw.zero.detach().cpu()
        q.super_scale = qw.super_scale.detach().cpu()
        return q
    if q.spec is not None and q.spec.is_float:
        qw = m.quantized_weight()
        q.stored_scale = qw.scale.detach().cpu()
        q.global_scale = None if qw.global_scale is None else qw.global_scale.detach().cpu()
        a = m._buffers.get("act_scale")
        q.act_scale = None if a is None else a.detach().float().cpu()
    return q


def _quantized_attention(n, name: str) -> bool:
    """An attention node that quantizes Q·Kᵀ or K/V (a kv<bits> or attention spec)."""
    if "attention" not in name:
        return False
    kv = n.kwargs.get("kv_bits", n.args[5] if len(n.args) > 5 else 0)
    return bool(kv) or "attention_kv" in name or bool(n.kwargs.get("int8")) \
        or n.meta.get("attn_spec") is not None


def _check_plain_graph(gm) -> None:
    for n in gm.graph.nodes:
        if n.op == "call_function":
            name = getattr(n.target, "__name__", str(n.target)).lower()
            if _quantized_attention(n, name):
                raise CheckpointError(
                    "the compiled graph quantizes attention (Q·Kᵀ or per-token K/V, a kv<bits> "
                    "or attention spec); no export format carries that, so the engine would "
                    "compute attention differently. Export a scheme without kv/attention bits")
            if any(k in name for k in _ONLINE_OPS):
                raise CheckpointError(
                    f"the compiled graph applies {name} at run time (a rotation or smoothing "
                    f"pass); an exported HF model has no place for it, so the export would "
                    f"compute something else. Export a checkpoint quantized without "
                    f"Rotate/DuQuant/online ops (e.g. w4a16-gptq, w8a8-rtn)")


def _check_family(cfg) -> None:
    """Only the layouts the exporters map tensor for tensor; anything else would be written as
    a model that computes something different."""
    extra = []
    if getattr(cfg, "n_experts", 0):
        extra.append("mixture-of-experts layers (LLaDA-MoE / LLaDA2)")
    if getattr(cfg, "attn_block_size", 0):
        extra.append(f"block-causal attention (blocks of {cfg.attn_block_size}, SDAR)")
    if getattr(cfg, "qk_norm", False):
        extra.append("q/k norms")
    if extra:
        raise CheckpointError(f"model {cfg.name!r} has {', '.join(extra)}; qpass's exporters "
                              f"write the LLaDA, Dream and LLaMA layouts only, so no export "
                              f"would compute this model. Keep the qpass checkpoint (qpass "
                              f"generate / eval run it)")


def _head_is_embedding(gm) -> bool:
    """Whether the graph's head still is its embedding: a float head equal to it. FuseNorms
    folds the final norm's gain into a tied head, and a scheme may quantize the head; either
    unties them."""
    sd = gm.state_dict()
    return "head.weight" in sd and "embed.weight" in sd and torch.equal(sd["head.weight"],
                                                                        sd["embed.weight"])


def export_config(compiled):
    """The config an export describes: the model's own, untied (`tie_word_embeddings: false`,
    LLaDA `weight_tying: false`, the head written as `lm_head.weight` / `ff_out.weight` /
    GGUF `output.weight`) when a tied model's head no longer equals its embedding, as
    llm-compressor writes such models."""
    cfg = compiled.config
    if cfg.tie_embeddings and not _head_is_embedding(compiled.gm):
        return dataclasses.replace(cfg, tie_embeddings=False)
    return cfg


def read_source(compiled) -> ExportSource:
    """ExportSource of a CompiledDenoiser; CheckpointError if its graph or names do not map
    onto the HF model's tensors one to one."""
    cfg = export_config(compiled)
    gm = compiled.gm
    _check_family(cfg)
    _check_plain_graph(gm)
    to_hf = {dst: src for src, dst in key_map(cfg).items()}
    src = ExportSource(cfg, config_to_hf(cfg), tokenizer=compiled.tokenizer)
    owned: list[str] = []      # state-dict prefixes of the quantized linears
    for name, m in gm.named_modules():
        if not is_quantized_module(m):
            continue
        hf = to_hf.get(name + ".weight")
        if hf is None:
            raise CheckpointError(f"quantized linear {name!r} has no tensor in the "
                                  f"{cfg.family} HF naming; it cannot be exported")
        codes, scales, spec, g, zeros = _weight_parts(name, m)
        bias = getattr(m, "bias", None)
        src.linears.append(QLinear(hf[: -len(".weight")], codes, scales, spec, m.act_spec, g,
                                   None if bias is None else bias.detach().float(), zeros))
        attach_float_parts(src.linears[-1], m)
        owned.append(name + ".")
    sd = gm.state_dict()
    for name, t in sd.items():
        if name in _DERIVED or any(name.startswith(p) for p in owned):
            continue
        if cfg.tie_embeddings and name == "head.weight" and torch.equal(t, sd["embed.weight"]):
            continue        # a tied head is the embedding: HF checkpoints store it once
        hf = to_hf.get(name)
        if hf is None:
            raise CheckpointError(f"tensor {name!r} of the compiled graph has no place in the "
                                  f"{cfg.family} HF naming; it cannot be exported")
        src.dense[hf] = t.detach()
        if name.endswith(_LINEAR_WEIGHTS):
            src.kept_linears.append(hf[: -len(".weight")])
    if cfg.tie_embeddings and cfg.family != "llada":
        # transformers still builds an `lm_head` Linear (sharing the embedding): a format's
        # "all Linear" target must not reach it
        src.kept_linears.append("lm_head")
    have = set(src.dense) | {q.hf_name + ".weight" for q in src.linears}
    missing = sorted(set(to_hf.values()) - have - {q.hf_name + ".bias" for q in src.linears})
    if missing:
        raise CheckpointError(f"the compiled graph lacks HF tensors {missing[:3]}")
    return src

"""GGUF export of a model captured as it is (qpass.runtime.as_is_model), for the one as-is
architecture llama.cpp has a graph for: LLaDA-MoE (`LLaDAMoEModelLM`) as llama.cpp's
`llada-moe` (read by llama-diffusion-cli).

What llama.cpp's llada-moe graph computes (src/models/llada-moe.cpp, gguf-py MODEL_ARCH.LLADA_MOE,
convert_hf_to_gguf.py LLaDAMoEModel), and so what a checkpoint must be to be written:
  every layer a mixture of experts (no dense layer, no shared expert), a softmax router over
  all experts without expert bias, top-k weights neither renormalised nor scaled, SiLU-gated
  experts, per-head RMS q/k norms, full-width NEOX RoPE (llama.cpp's rope type for this
  architecture, the rotate-half layout of the HF code: q/k rows are written in HF order, not
  permuted as for dense LLaDA), no attention biases, no q/k/v clipping, bidirectional
  attention. Anything else is refused with one error listing what differs.

Tensors (ggml dims innermost first):
  token_embd (hidden, vocab)          model.embed_tokens            model dtype
  blk.N.attn_norm / ffn_norm          input_ / post_attention_layernorm   F32
  blk.N.attn_q/k/v/output             self_attn.{q,k,v,o}_proj      Q4_0 / Q8_0 from qpass's codes
  blk.N.attn_q_norm / attn_k_norm     self_attn.{q,k}_norm (head_dim)     F32
  blk.N.ffn_gate_inp (hidden, E)      mlp.gate (router)             F32, as the converter forces it
  blk.N.ffn_{gate,up}_exps (hidden, ff_exp, E), ffn_down_exps (ff_exp, hidden, E)
                                      mlp.experts.{e}.{gate,up,down}_proj stacked in expert order
  output_norm                         model.norm                    F32
  output (hidden, vocab)              lm_head (written even when tied: llama.cpp requires it)
Quantized linears are written as ggml blocks by qpass.interop.gguf.block_bytes (same
rules, same refusals: symmetric int4/int8, whole 32-weight blocks, fp16 scales); a linear
kept in float is written in the model's dtype. The experts of one stack must share one type."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch
import torch.nn as nn

from qpass.errors import CheckpointError
from qpass.interop.gguf import (_DENSE_TYPE, _dense, block_bytes, file_type,
                                tokenizer_metadata)
from qpass.interop.gguf_blocks import NAMES
from qpass.interop.gguf_file import BOOL, F32, STRING, U32, Tensor, Value, write_file
from qpass.interop.source import QLinear, _weight_parts, attach_float_parts
from qpass.ir.qlinear import QuantLinear

# HF architecture -> llama.cpp architecture
ARCHS = {"LLaDAMoEModelLM": "llada-moe"}
# LLaDA-MoE's mask token in the released tokenizer (156895), which llama.cpp's converter writes
# for every LLaDAMoEModelLM; used only when neither config nor tokenizer names a mask token.
RELEASED_MASK_ID = 156895
_ATTN = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output"}
_EXPERTS = {"gate_proj": "ffn_gate_exps", "up_proj": "ffn_up_exps", "down_proj": "ffn_down_exps"}


def supported() -> str:
    return ", ".join(f"{hf} (llama.cpp {a})" for hf, a in ARCHS.items())


def architecture_of(directory) -> str:
    """The HF architecture an as-is checkpoint directory was captured from (its manifest),
    read before anything is loaded."""
    from qpass.runtime.as_is_model import MANIFEST
    try:
        return str(json.loads((Path(directory) / MANIFEST).read_text())["architecture"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{directory}: cannot read the as-is manifest {MANIFEST} "
                              f"({e})") from None


def export_as_is_gguf(model, out, scale_dtype: str = "float16",
                      trust_remote_code: bool = False) -> Path:
    """Write an AsIsModel of a supported architecture (or the directory it was saved to) as
    one GGUF file OUT (a new file; nothing existing is replaced)."""
    from qpass.runtime import as_is_model
    from qpass.runtime.output import check_new_output
    if scale_dtype != "float16":
        raise CheckpointError(f"--scale-dtype {scale_dtype}: GGUF Q4_0/Q8_0 block scales are "
                              f"float16 by definition; drop the option")
    out = check_new_output(out, "--out")
    if isinstance(model, as_is_model.AsIsModel):
        arch = type(model.model).__name__
    else:
        arch = architecture_of(model)
    if arch not in ARCHS:
        raise CheckpointError(f"the as-is model is a {arch}; GGUF export of models captured as "
                              f"they are covers {supported()} only (no other llama.cpp graph "
                              f"is mapped). This one exports as --format compressed-tensors "
                              f"only (transformers loads it with the model's own code)")
    from qpass.interop.as_is_export import exportable
    q = exportable(model, trust_remote_code)
    m = q.model
    tensors = llada_moe_tensors(m)
    md = llada_moe_metadata(m, q.tokenizer, tensors, name=_name(q))
    return _write(out, md, tensors)


def _name(q) -> str:
    path = getattr(q, "path", None) or getattr(q.model.config, "name_or_path", "")
    return Path(str(path)).name or type(q.model).__name__


# ---- what llama.cpp's llada-moe graph can compute ------------------------------------------

def check_llada_moe(m: nn.Module) -> None:
    """One CheckpointError listing every way `m` differs from llama.cpp's llada-moe graph."""
    c = m.config
    layers = m.model.layers
    diff = []
    dense = [i for i, layer in enumerate(layers) if not hasattr(layer.mlp, "experts")]
    if dense:
        diff.append(f"dense (non-MoE) layers {dense} (moe_layer_freq)")
    if any(hasattr(layer, "shared_expert") for layer in layers) or \
            getattr(c, "shared_expert_intermediate_size", None):
        diff.append("a shared expert (shared_expert_intermediate_size)")
    if getattr(c, "moe_router_enable_expert_bias", False) or \
            any(getattr(layer.mlp, "expert_bias", None) is not None for layer in layers):
        diff.append("a router expert bias (moe_router_enable_expert_bias)")
    score = getattr(c, "moe_router_score_function", None)
    if score not in (None, "softmax"):
        diff.append(f"router scores {score!r} (llama.cpp: softmax)")
    if getattr(c, "norm_topk_prob", False):
        diff.append("renormalised top-k weights (norm_topk_prob; llama.cpp does not renormalise)")
    scale = getattr(c, "routed_scaling_factor", None)
    if scale not in (None, 1, 1.0):
        diff.append(f"routed_scaling_factor {scale} (llama.cpp reads no expert weight scale for "
                    f"llada-moe)")
    if not getattr(c, "qk_layernorm", False) or \
            any(not hasattr(layer.self_attn, "q_norm") for layer in layers):
        diff.append("no q/k norms (llama.cpp's llada-moe requires attn_q_norm/attn_k_norm)")
    if float(getattr(c, "partial_rotary_factor", 1.0) or 1.0) != 1.0:
        diff.append(f"partial RoPE (partial_rotary_factor {c.partial_rotary_factor}; llama.cpp "
                    f"asserts full-width RoPE)")
    rope = _rope(c)
    if rope.get("rope_type", "default") not in (None, "default"):
        diff.append(f"RoPE scaling {rope.get('rope_type')!r} (llama.cpp's llada-moe: plain RoPE)")
    if _rope_theta(c) is None:
        diff.append("no rope_theta")
    q_out = {layer.self_attn.q_proj.out_features for layer in layers}
    if q_out != {c.hidden_size}:
        diff.append(f"q_proj widths {sorted(q_out)} other than hidden_size {c.hidden_size} "
                    f"(llama.cpp's llada-moe: heads × head_dim = hidden)")
    if getattr(c, "attention_bias", False):
        diff.append("attention biases (attention_bias)")
    if getattr(c, "clip_qkv", None) is not None:
        diff.append(f"q/k/v clipping (clip_qkv {c.clip_qkv})")
    if getattr(c, "hidden_act", "silu") != "silu":
        diff.append(f"activation {c.hidden_act!r} (llama.cpp: SiLU-gated experts)")
    if diff:
        raise CheckpointError(f"this LLaDA-MoE differs from what llama.cpp's llada-moe graph "
                              f"computes: {'; '.join(diff)}. No GGUF file would compute this "
                              f"model; keep the qpass checkpoint or export compressed-tensors")


def _rope(c) -> dict:
    """rope_scaling / rope_parameters (transformers 5 may standardise either), {} if none."""
    r = getattr(c, "rope_parameters", None) or getattr(c, "rope_scaling", None) or {}
    return r if isinstance(r, dict) else {}


def _rope_theta(c) -> float | None:
    v = getattr(c, "rope_theta", None)
    return float(v) if v is not None else _rope(c).get("rope_theta")


# ---- tensors ------------------------------------------------------------------------------

def _dtype(m: nn.Module) -> torch.dtype:
    dt = m.model.embed_tokens.weight.dtype
    return dt if dt in _DENSE_TYPE else torch.float32


def _linear_parts(path: str, mod: nn.Module, dtype: torch.dtype) -> tuple[int, tuple, bytes]:
    """(ggml type, dims innermost first, data) of one linear: Q4_0/Q8_0 blocks from its codes
    when quantized, else its float weight in `dtype`."""
    if getattr(mod, "bias", None) is not None:
        raise CheckpointError(f"linear {path} has a bias; llama.cpp's llada-moe has none there")
    if isinstance(mod, QuantLinear) and (mod.weight_spec is not None or mod.act_spec is not None):
        codes, scales, spec, g, zeros = _weight_parts(path, mod)
        ql = QLinear(path, codes.cpu(), scales.cpu(), spec, mod.act_spec, g, None,
                     None if zeros is None else zeros.cpu())
        kind, data = block_bytes(attach_float_parts(ql, mod), None)
        return kind, (codes.shape[1], codes.shape[0]), data
    w = getattr(mod, "weight", None)
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        raise CheckpointError(f"{path} is a {type(mod).__name__} without a 2-D weight; it has "
                              f"no place in llama.cpp's llada-moe")
    t = _dense(path, w, dtype)
    return t.ggml_type, t.dims, t.data


def _linear(name: str, path: str, mod: nn.Module, dtype: torch.dtype) -> Tensor:
    kind, dims, data = _linear_parts(path, mod, dtype)
    return Tensor(name, kind, dims, data)


def _experts(name: str, path: str, experts: nn.ModuleList, proj: str,
             dtype: torch.dtype) -> Tensor:
    """One (K, N, E) tensor of the experts' `proj` linears, experts outermost."""
    parts = [_linear_parts(f"{path}.{e}.{proj}", getattr(x, proj), dtype)
             for e, x in enumerate(experts)]
    kinds, dims = {p[0] for p in parts}, {p[1] for p in parts}
    if len(kinds) > 1 or len(dims) > 1:
        types = Counter(NAMES.get(p[0], str(p[0])) for p in parts)
        raise CheckpointError(f"the experts {path}.*.{proj} are stored as "
                              f"{dict(types)} with shapes {sorted(dims)}; llama.cpp stacks "
                              f"them into one tensor of one type, so every expert of a layer "
                              f"must be quantized with the same spec (or all kept in float)")
    K, N = dims.pop()
    return Tensor(name, kinds.pop(), (K, N, len(parts)), b"".join(p[2] for p in parts))


def _norm(name: str, p: torch.Tensor) -> Tensor:
    return _dense(name, p, torch.float32)


def llada_moe_tensors(m: nn.Module) -> list[Tensor]:
    """Every tensor of llama.cpp's llada-moe for the LLaDAMoEModelLM `m` (CheckpointError if
    the model computes something else, or has a tensor with no place in it)."""
    check_llada_moe(m)
    dtype = _dtype(m)
    base = m.model
    out = [_dense("token_embd.weight", base.embed_tokens.weight, dtype)]
    used = {"model.embed_tokens", "model.norm", "lm_head"}
    for i, layer in enumerate(base.layers):
        p = f"model.layers.{i}"
        at, mlp = layer.self_attn, layer.mlp
        out.append(_norm(f"blk.{i}.attn_norm.weight", layer.input_layernorm.weight))
        for proj, g in _ATTN.items():
            out.append(_linear(f"blk.{i}.{g}.weight", f"{p}.self_attn.{proj}",
                               getattr(at, proj), dtype))
        out.append(_norm(f"blk.{i}.attn_q_norm.weight", at.q_norm.weight))
        out.append(_norm(f"blk.{i}.attn_k_norm.weight", at.k_norm.weight))
        out.append(_norm(f"blk.{i}.ffn_norm.weight", layer.post_attention_layernorm.weight))
        # the router in F32, as llama.cpp's converter forces ffn_gate_inp
        out.append(_linear(f"blk.{i}.ffn_gate_inp.weight", f"{p}.mlp.gate", mlp.gate,
                           torch.float32))
        for proj, g in _EXPERTS.items():
            out.append(_experts(f"blk.{i}.{g}.weight", f"{p}.mlp.experts", mlp.experts, proj,
                                dtype))
        used |= {f"{p}.input_layernorm", f"{p}.post_attention_layernorm", f"{p}.self_attn",
                 f"{p}.mlp.gate", f"{p}.mlp.experts"}
    out.append(_norm("output_norm.weight", base.norm.weight))
    out.append(_linear("output.weight", "lm_head", m.lm_head, dtype))
    left = [k for k in m.state_dict() if not any(k.startswith(u + ".") for u in used)]
    if left:
        raise CheckpointError(f"tensors {left[:4]} of the model have no place in llama.cpp's "
                              f"llada-moe; a GGUF file without them would compute something "
                              f"else")
    return out


# ---- metadata -----------------------------------------------------------------------------

def mask_token_id(m: nn.Module, tok, vocab_size: int) -> int:
    v = getattr(m.config, "mask_token_id", None)
    if v is None and tok is not None:
        v = getattr(tok, "mask_token_id", None)
    if v is None and vocab_size > RELEASED_MASK_ID:
        v = RELEASED_MASK_ID
    if v is None or not 0 <= int(v) < vocab_size:
        raise CheckpointError(f"the model names no mask token inside its vocabulary of "
                              f"{vocab_size} (config.mask_token_id, the tokenizer's mask token: "
                              f"{v}); llama-diffusion-cli needs tokenizer.ggml.mask_token_id")
    return int(v)


def llada_moe_metadata(m: nn.Module, tok, tensors: list[Tensor], name: str) -> dict[str, Value]:
    c = m.config
    a = ARCHS["LLaDAMoEModelLM"]
    vocab, hidden = m.model.embed_tokens.weight.shape
    heads = int(c.num_attention_heads)
    head_dim = hidden // heads
    first = m.model.layers[0].mlp
    n_expert, ff_exp = len(first.experts), first.experts[0].gate_proj.out_features
    top_k = int(c.num_experts_per_tok)
    if not any(t.ggml_type in NAMES for t in tensors):
        raise CheckpointError("the model has no quantized linears; nothing to export as GGUF")
    md = {"general.architecture": Value(STRING, a), "general.name": Value(STRING, name),
          "general.file_type": Value(U32, file_type(tensors)),
          "general.quantization_version": Value(U32, 2),
          f"{a}.context_length": Value(U32, int(c.max_position_embeddings)),
          f"{a}.embedding_length": Value(U32, int(hidden)),
          f"{a}.block_count": Value(U32, len(m.model.layers)),
          # no dense FFN runs; llama.cpp's fallback n_ff_exp = n_ff / n_expert_used holds
          f"{a}.feed_forward_length": Value(U32, ff_exp * top_k),
          f"{a}.expert_feed_forward_length": Value(U32, ff_exp),
          f"{a}.expert_count": Value(U32, n_expert),
          f"{a}.expert_used_count": Value(U32, top_k),
          f"{a}.attention.head_count": Value(U32, heads),
          f"{a}.attention.head_count_kv": Value(U32, int(c.num_key_value_heads or heads)),
          f"{a}.rope.freq_base": Value(F32, float(_rope_theta(c))),
          f"{a}.rope.dimension_count": Value(U32, head_dim),
          f"{a}.attention.layer_norm_rms_epsilon": Value(F32, float(c.rms_norm_eps)),
          f"{a}.vocab_size": Value(U32, int(vocab)),
          f"{a}.attention.causal": Value(BOOL, False),
          "diffusion.shift_logits": Value(BOOL, False)}
    md.update(tokenizer_metadata(tok, int(vocab), "llada"))
    md["tokenizer.ggml.mask_token_id"] = Value(U32, mask_token_id(m, tok, int(vocab)))
    return md


def _write(out: Path, md: dict[str, Value], tensors: list[Tensor]) -> Path:
    """OUT written whole through a temporary sibling, never replacing what appeared meanwhile."""
    return write_file(out, md, tensors)

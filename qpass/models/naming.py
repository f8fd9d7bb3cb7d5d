"""Checkpoint namings (LLaDA, Dream/Qwen2, LLaMA): config keys and tensor-name maps.

Each naming maps a checkpoint's tensor names to the generic module names of `Denoiser`."""
from __future__ import annotations

from ..errors import CheckpointError
from .config import ModelConfig
from .hf_config import config_from_hf, detect_family  # noqa: F401  (the reading side)

LLADA_BLOCK = {"attn_norm": "attn_norm", "q_proj": "q_proj", "k_proj": "k_proj",
               "v_proj": "v_proj", "attn_out": "o_proj", "ff_norm": "mlp_norm",
               "ff_proj": "gate_proj", "up_proj": "up_proj", "ff_out": "down_proj"}
QWEN_BLOCK = {"input_layernorm": "attn_norm", "self_attn.q_proj": "q_proj",
              "self_attn.k_proj": "k_proj", "self_attn.v_proj": "v_proj",
              "self_attn.o_proj": "o_proj", "post_attention_layernorm": "mlp_norm",
              "mlp.gate_proj": "gate_proj", "mlp.up_proj": "up_proj", "mlp.down_proj": "down_proj"}


def config_to_hf(c: ModelConfig) -> dict:
    if c.family == "llada":
        if c.rope_scaling or c.explicit_head_dim or c.o_bias or c.mlp_bias or c.causal:
            raise CheckpointError("LLaDA's config has no field for rope scaling, an explicit "
                                  "head_dim, o/MLP biases or causal attention; this model has one")
        return {"model_type": "llada", "architectures": ["LLaDAModelLM"], "d_model": c.d_model,
                "n_heads": c.n_heads, "n_kv_heads": c.n_kv_heads, "n_layers": c.n_layers,
                "mlp_hidden_size": c.mlp_hidden, "vocab_size": c.vocab_size,
                "embedding_size": c.vocab_size, "rope_theta": c.rope_theta,
                "rms_norm_eps": c.norm_eps, "mask_token_id": c.mask_token_id,
                "eos_token_id": c.eos_token_id, "pad_token_id": c.pad_token_id,
                "include_bias": False, "include_qkv_bias": c.qkv_bias,
                "weight_tying": c.tie_embeddings, "max_sequence_length": c.max_seq_len,
                "block_type": "llama", "activation_type": "silu", "layer_norm_type": "rms",
                "name_or_path": c.name}
    d = {"model_type": _hf_model_type(c),
         "hidden_size": c.d_model, "num_hidden_layers": c.n_layers,
         "num_attention_heads": c.n_heads, "num_key_value_heads": c.n_kv_heads,
         "head_dim": c.head_dim,
         "intermediate_size": c.mlp_hidden, "vocab_size": c.vocab_size,
         "rope_theta": c.rope_theta, "rms_norm_eps": c.norm_eps, "hidden_act": "silu",
         "tie_word_embeddings": c.tie_embeddings, "max_position_embeddings": c.max_seq_len,
         "eos_token_id": c.eos_token_id, "pad_token_id": c.pad_token_id,
         "_name_or_path": c.name}
    if c.rope_scaling:
        d["rope_scaling"] = dict(c.rope_scaling)
    if c.family == "dream":
        d["mask_token_id"] = c.mask_token_id
    elif d["model_type"] == "llama":
        d["attention_bias"], d["mlp_bias"] = c.qkv_bias, c.mlp_bias
    return d


def _hf_model_type(c: ModelConfig) -> str:
    """The HF layout whose bias pattern is the config's: LLaMA (one attention_bias flag for
    q/k/v/o, mlp_bias) or Qwen2 (q/k/v biased, o and MLP not)."""
    if c.family == "dream":
        if c.o_bias or c.mlp_bias or not c.qkv_bias:
            raise CheckpointError("Dream naming has q/k/v biases only; this config has "
                                  f"qkv_bias={c.qkv_bias} o_bias={c.o_bias} mlp_bias={c.mlp_bias}")
        return "Dream"
    if c.qkv_bias == c.o_bias:
        return "llama"
    if c.qkv_bias and not c.mlp_bias:
        return "qwen2"
    raise CheckpointError(f"no HF layout has qkv_bias={c.qkv_bias} with o_bias={c.o_bias} and "
                          f"mlp_bias={c.mlp_bias}")


def key_map(c: ModelConfig) -> dict[str, str]:
    """checkpoint tensor name -> Denoiser parameter name, for every expected tensor."""
    m: dict[str, str] = {}
    if c.family == "llada":
        pre = "model.transformer."
        m[pre + "wte.weight"] = "embed.weight"
        m[pre + "ln_f.weight"] = "norm.weight"
        if not c.tie_embeddings:
            m[pre + "ff_out.weight"] = "head.weight"
        block, bpre = LLADA_BLOCK, pre + "blocks."
    else:
        m["model.embed_tokens.weight"] = "embed.weight"
        m["model.norm.weight"] = "norm.weight"
        if not c.tie_embeddings:
            m["lm_head.weight"] = "head.weight"
        block, bpre = QWEN_BLOCK, "model.layers."
    for i in range(c.n_layers):
        for src, dst in block.items():
            m[f"{bpre}{i}.{src}.weight"] = f"blocks.{i}.{dst}.weight"
            if _has_bias(c, dst):
                m[f"{bpre}{i}.{src}.bias"] = f"blocks.{i}.{dst}.bias"
    return m


def _has_bias(c: ModelConfig, module: str) -> bool:
    if module in ("q_proj", "k_proj", "v_proj"):
        return c.qkv_bias
    if module == "o_proj":
        return c.o_bias
    return c.mlp_bias and module in ("gate_proj", "up_proj", "down_proj")


def key_mismatch(c: ModelConfig, expected, have) -> list[str]:
    """Message parts naming the missing and unexpected tensor names (empty when they match).
    Derived buffers (RoPE inverse frequencies, attention biases) and a tied head's own copy
    of the embedding are not unexpected."""
    tied_heads = ("lm_head.weight", "model.transformer.ff_out.weight") if c.tie_embeddings else ()
    missing = sorted(set(expected) - set(have))
    unexpected = sorted(k for k in set(have) - set(expected)
                        if not k.endswith(("rotary_emb.inv_freq", "attn_bias"))
                        and k not in tied_heads)
    parts = []
    if missing:
        parts.append(f"missing keys ({len(missing)}): {', '.join(missing[:8])}")
    if unexpected:
        parts.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected[:8])}")
    return parts

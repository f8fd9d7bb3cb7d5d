"""Checkpoint namings (LLaDA, Dream/Qwen2, LLaMA): config keys and tensor-name maps.

Each naming maps a checkpoint's tensor names to the generic module names of `Denoiser`."""
from __future__ import annotations

from .config import ModelConfig

LLADA_BLOCK = {"attn_norm": "attn_norm", "q_proj": "q_proj", "k_proj": "k_proj",
               "v_proj": "v_proj", "attn_out": "o_proj", "ff_norm": "mlp_norm",
               "ff_proj": "gate_proj", "up_proj": "up_proj", "ff_out": "down_proj"}
QWEN_BLOCK = {"input_layernorm": "attn_norm", "self_attn.q_proj": "q_proj",
              "self_attn.k_proj": "k_proj", "self_attn.v_proj": "v_proj",
              "self_attn.o_proj": "o_proj", "post_attention_layernorm": "mlp_norm",
              "mlp.gate_proj": "gate_proj", "mlp.up_proj": "up_proj", "mlp.down_proj": "down_proj"}


def detect_family(cfg: dict) -> str:
    mt = str(cfg.get("model_type", "")).lower()
    arch = " ".join(cfg.get("architectures", []) or []).lower()
    if "llada" in mt or "llada" in arch or "d_model" in cfg:
        return "llada"
    if "dream" in mt or "dream" in arch:
        return "dream"
    if "qwen2" in mt:
        return "qwen2"
    return "llama"


def config_from_hf(cfg: dict) -> ModelConfig:
    fam = detect_family(cfg)
    if fam == "llada":
        n_heads = cfg["n_heads"]
        return ModelConfig(
            d_model=cfg["d_model"], n_layers=cfg["n_layers"], n_heads=n_heads,
            n_kv_heads=cfg.get("n_kv_heads") or n_heads,
            mlp_hidden=cfg.get("mlp_hidden_size") or cfg["mlp_ratio"] * cfg["d_model"],
            vocab_size=cfg.get("embedding_size") or cfg["vocab_size"],
            mask_token_id=cfg.get("mask_token_id"), eos_token_id=cfg.get("eos_token_id"),
            pad_token_id=cfg.get("pad_token_id"), rope_theta=float(cfg.get("rope_theta", 10000.0)),
            norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
            qkv_bias=bool(cfg.get("include_bias", False) or cfg.get("include_qkv_bias", False)),
            tie_embeddings=bool(cfg.get("weight_tying", False)),
            max_seq_len=int(cfg.get("max_sequence_length", 4096)),
            family="llada", name=cfg.get("name_or_path", "llada"))
    n_heads = cfg["num_attention_heads"]
    return ModelConfig(
        d_model=cfg["hidden_size"], n_layers=cfg["num_hidden_layers"], n_heads=n_heads,
        n_kv_heads=cfg.get("num_key_value_heads") or n_heads,
        mlp_hidden=cfg["intermediate_size"], vocab_size=cfg["vocab_size"],
        mask_token_id=cfg.get("mask_token_id"), eos_token_id=cfg.get("eos_token_id"),
        pad_token_id=cfg.get("pad_token_id"), rope_theta=float(cfg.get("rope_theta", 10000.0)),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        qkv_bias=fam in ("dream", "qwen2") or bool(cfg.get("attention_bias", False)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", fam == "llama" and False)),
        causal=fam not in ("dream",), logit_shift=fam == "dream",
        max_seq_len=int(cfg.get("max_position_embeddings", 4096)),
        family="dream" if fam == "dream" else "llama", name=cfg.get("_name_or_path", fam))


def config_to_hf(c: ModelConfig) -> dict:
    if c.family == "llada":
        return {"model_type": "llada", "architectures": ["LLaDAModelLM"], "d_model": c.d_model,
                "n_heads": c.n_heads, "n_kv_heads": c.n_kv_heads, "n_layers": c.n_layers,
                "mlp_hidden_size": c.mlp_hidden, "vocab_size": c.vocab_size,
                "embedding_size": c.vocab_size, "rope_theta": c.rope_theta,
                "rms_norm_eps": c.norm_eps, "mask_token_id": c.mask_token_id,
                "eos_token_id": c.eos_token_id, "pad_token_id": c.pad_token_id,
                "include_bias": False, "include_qkv_bias": c.qkv_bias,
                "weight_tying": c.tie_embeddings, "max_sequence_length": c.max_seq_len,
                "block_type": "llama", "activation_type": "silu", "name_or_path": c.name}
    d = {"model_type": "Dream" if c.family == "dream" else "llama",
         "hidden_size": c.d_model, "num_hidden_layers": c.n_layers,
         "num_attention_heads": c.n_heads, "num_key_value_heads": c.n_kv_heads,
         "intermediate_size": c.mlp_hidden, "vocab_size": c.vocab_size,
         "rope_theta": c.rope_theta, "rms_norm_eps": c.norm_eps,
         "tie_word_embeddings": c.tie_embeddings, "max_position_embeddings": c.max_seq_len,
         "eos_token_id": c.eos_token_id, "pad_token_id": c.pad_token_id,
         "_name_or_path": c.name}
    if c.family == "dream":
        d["mask_token_id"] = c.mask_token_id
    elif c.qkv_bias:
        d["attention_bias"] = True
    return d


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
            if c.qkv_bias and dst in ("q_proj", "k_proj", "v_proj"):
                m[f"{bpre}{i}.{src}.bias"] = f"blocks.{i}.{dst}.bias"
    return m

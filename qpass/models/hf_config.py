"""HF config.json -> ModelConfig, read field by field as each family's own modeling code reads it.

LLaMA and Qwen2 as transformers' LlamaForCausalLM / Qwen2ForCausalLM read them (rope
parameters of transformers 5 and the legacy rope_theta/rope_scaling, explicit head_dim, bias
flags, norm eps, tying, sliding windows); LLaDA as its published modeling_llada.py reads its
OLMo-style config; Dream as modeling_dream.py (a Qwen2 copy, bidirectional, shifted logits).
Every field that would change the computation and that the Denoiser family does not implement
is a CheckpointError naming the field; fields that the family's own code ignores are ignored."""
from __future__ import annotations

from ..errors import CheckpointError
from .config import ModelConfig
from .config_limits import LIMITS, as_number, as_size
from .rope import read_hf_rope

KNOWN_TYPES = {"llada": "llada", "dream": "dream", "qwen2": "qwen2", "llama": "llama"}
# ModelConfig field -> the config.json key it is read from, so that errors name both.
LLADA_NAMES = {"max_seq_len": "max_sequence_length", "mlp_hidden": "mlp_hidden_size",
               "norm_eps": "rms_norm_eps", "tie_embeddings": "weight_tying",
               "qkv_bias": "include_qkv_bias", "name": "name_or_path"}
HF_NAMES = {"d_model": "hidden_size", "n_layers": "num_hidden_layers",
            "n_heads": "num_attention_heads", "n_kv_heads": "num_key_value_heads",
            "mlp_hidden": "intermediate_size", "max_seq_len": "max_position_embeddings",
            "explicit_head_dim": "head_dim", "norm_eps": "rms_norm_eps",
            "tie_embeddings": "tie_word_embeddings", "name": "_name_or_path"}


def detect_family(cfg: dict) -> str:
    """llada | dream | qwen2 | llama from model_type / architectures; CheckpointError otherwise."""
    mt = str(cfg.get("model_type", "")).lower()
    arch = " ".join(cfg.get("architectures", []) or []).lower()
    # LLaDA itself only: LLaDA2 / LLaDA-MoE ("llada2_moe", "lladamoe") are other
    # architectures, captured as they are (qpass.models.as_is)
    # (LLaDA-MoE's config says model_type "llada" too: its architectures tell them apart)
    others = [a for a in arch.split() if a != "lladamodellm"]
    if (mt == "llada" and not others) or "lladamodellm" in arch.split() \
            or (not mt and "d_model" in cfg):
        return "llada"
    if mt == "llada":                       # LLaDAMoEModelLM: not the reference layout
        mt = ""
    if "dream" in mt or "dream" in arch:
        return "dream"
    if mt in KNOWN_TYPES:
        return KNOWN_TYPES[mt]
    if not mt and "hidden_size" in cfg and not others:
        return "llama"        # qpass's oldest files carry no model_type
    raise CheckpointError(
        f"config model_type '{cfg.get('model_type')}' (architectures "
        f"{cfg.get('architectures')}) is not a layout qpass loads (llama, qwen2, llada, dream); "
        f"convert the checkpoint to one of them")


def _refuse(where: str, field: str, value, why: str) -> None:
    raise CheckpointError(f"{where}: {field}={value!r} {why}; qpass does not implement it, "
                          f"so it refuses rather than compute a different model")


def _must(cfg: dict, where: str, field: str, allowed, default=None, why="changes the model"):
    value = cfg.get(field, default)
    if value not in allowed:
        _refuse(where, field, value, why)


def _llada(cfg: dict, where: str) -> ModelConfig:
    """LLaDA's OLMo-style config, as modeling_llada.py's LLaDALlamaBlock reads it."""
    _must(cfg, where, "block_type", ("llama",), "llama", "selects another block layout")
    _must(cfg, where, "activation_type", ("silu",), "silu", "selects another MLP activation")
    # qpass's own files written before this check carry no layer_norm_type: they are RMS.
    _must(cfg, where, "layer_norm_type", ("rms",), "rms", "selects another norm")
    for flag, ok in (("layer_norm_with_affine", (True, None)), ("bias_for_layer_norm", (False, None)),
                     ("include_bias", (False, None)), ("attention_layer_norm", (False, None)),
                     ("alibi", (False, None)), ("rope", (True, None)),
                     ("scale_logits", (False, None)), ("input_emb_norm", (False, None)),
                     ("clip_qkv", (None,))):
        _must(cfg, where, flag, ok)
    n_heads = cfg["n_heads"]
    n_kv = 1 if cfg.get("multi_query_attention") else (cfg.get("n_kv_heads") or n_heads)
    if cfg.get("rope_scaling"):
        _refuse(where, "rope_scaling", cfg["rope_scaling"],
                "is ignored by LLaDA's modeling code (plain RoPE of rope_theta)")
    mlp = cfg.get("mlp_hidden_size")
    if not mlp:              # OLMo: mlp_ratio · d_model, both checked before the product
        ratio = _size(cfg, "mlp_ratio", where, hi=LIMITS["mlp_hidden"])
        mlp = ratio * _size(cfg, "d_model", where)
    fields = dict(
        d_model=cfg["d_model"], n_layers=cfg["n_layers"], n_heads=n_heads, n_kv_heads=n_kv,
        mlp_hidden=mlp, vocab_size=cfg.get("embedding_size") or cfg["vocab_size"],
        mask_token_id=cfg.get("mask_token_id"), eos_token_id=cfg.get("eos_token_id"),
        pad_token_id=cfg.get("pad_token_id"),
        rope_theta=as_number(cfg.get("rope_theta", 10000.0), "rope_theta", where, above=1.0),
        norm_eps=as_number(cfg.get("rms_norm_eps", 1e-5), "rms_norm_eps", where, below=1.0),
        qkv_bias=bool(cfg.get("include_qkv_bias", False)),
        tie_embeddings=bool(cfg.get("weight_tying", False)),
        max_seq_len=cfg.get("max_sequence_length", 4096),
        family="llada", name=cfg.get("name_or_path", "llada"))
    names = dict(LLADA_NAMES, vocab_size="embedding_size" if cfg.get("embedding_size")
                 else "vocab_size")
    return ModelConfig.from_dict(fields, where, names)


def _size(cfg: dict, key: str, where: str, field: str | None = None, default=None,
          hi: int | None = None) -> int:
    """config.json's `key` as an in-range size, checked before any arithmetic or loop uses it
    (num_hidden_layers: 10**9 must not build a list of 10**9 layer types first)."""
    if default is None and key not in cfg:
        raise KeyError(key)
    label = f"{key} ({field})" if field and field != key else key
    return as_size(cfg.get(key, default), label, where, 1, hi or LIMITS[field or key])


def _norm_eps(cfg: dict, where: str) -> float:
    if "rms_norm_eps" in cfg:
        return as_number(cfg["rms_norm_eps"], "rms_norm_eps", where, below=1.0)
    for other in ("layer_norm_epsilon", "layer_norm_eps", "norm_epsilon", "norm_eps"):
        if other in cfg:
            _refuse(where, other, cfg[other], "is not read by LLaMA/Qwen2 modeling code "
                    "(it reads rms_norm_eps); rename it to rms_norm_eps if that is what it means")
    return 1e-6               # LlamaConfig, Qwen2Config and DreamConfig default


def _sliding(cfg: dict, where: str, fam: str, n_layers: int, max_pos: int) -> None:
    """Qwen2/Dream attend in a window on the layers transformers marks 'sliding_attention'."""
    if fam == "llama":
        return                 # LlamaForCausalLM has no sliding window
    types = cfg.get("layer_types")
    if types is None:
        use = bool(cfg.get("use_sliding_window", False))
        first = cfg.get("max_window_layers", 28)
        types = ["sliding_attention" if use and i >= first else "full_attention"
                 for i in range(n_layers)]
    bad = sorted(set(types) - {"full_attention", "sliding_attention"})
    if bad:
        _refuse(where, "layer_types", bad, "names attention kinds other than full attention")
    window = cfg.get("sliding_window")
    if "sliding_attention" in types and window is not None and window < max_pos:
        _refuse(where, "sliding_window", window, f"limits attention to a window on layers "
                f"{[i for i, t in enumerate(types) if t == 'sliding_attention'][:6]}")


def _hf(cfg: dict, where: str, fam: str) -> ModelConfig:
    """LLaMA / Qwen2 / Dream naming, as LlamaForCausalLM / Qwen2ForCausalLM / Dream read it."""
    _must(cfg, where, "hidden_act", ("silu",), "silu", "selects another MLP activation")
    n_heads = _size(cfg, "num_attention_heads", where, "n_heads")
    d = _size(cfg, "hidden_size", where, "d_model")
    n_layers = _size(cfg, "num_hidden_layers", where, "n_layers")
    max_pos = _size(cfg, "max_position_embeddings", where, "max_seq_len", default=4096)
    head_dim = cfg.get("head_dim")
    if head_dim is not None and fam == "dream" and head_dim != d // n_heads:
        _refuse(where, "head_dim", head_dim, "differs from hidden_size // num_attention_heads, "
                "which Dream's modeling code uses")
    explicit = None if head_dim in (None, d // n_heads) and d % n_heads == 0 else head_dim
    theta, scaling = read_hf_rope(cfg, max_pos, where)
    _sliding(cfg, where, fam, n_layers, max_pos)
    if fam == "llama":        # attention_bias: q, k, v and o; mlp_bias: gate, up, down
        qkv_bias = o_bias = bool(cfg.get("attention_bias", False))
        mlp_bias = bool(cfg.get("mlp_bias", False))
    else:                     # Qwen2 layout: q/k/v always biased, o and the MLP never
        qkv_bias, o_bias, mlp_bias = True, False, False
    return ModelConfig.from_dict(dict(
        d_model=d, n_layers=n_layers, n_heads=n_heads,
        n_kv_heads=cfg.get("num_key_value_heads") or n_heads,
        mlp_hidden=cfg["intermediate_size"], vocab_size=cfg["vocab_size"],
        mask_token_id=cfg.get("mask_token_id"), eos_token_id=_one_id(cfg.get("eos_token_id")),
        pad_token_id=cfg.get("pad_token_id"), rope_theta=theta, rope_scaling=scaling,
        norm_eps=_norm_eps(cfg, where), qkv_bias=qkv_bias, o_bias=o_bias, mlp_bias=mlp_bias,
        explicit_head_dim=explicit, tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        causal=fam != "dream", logit_shift=fam == "dream", max_seq_len=max_pos,
        family="dream" if fam == "dream" else "llama", name=cfg.get("_name_or_path", fam)),
        where, HF_NAMES)


def _one_id(v):
    """HF allows a list of eos ids; qpass keeps the first (generation stops on it)."""
    return v[0] if isinstance(v, list) and v else v


def config_from_hf(cfg: dict, where: str = "config.json") -> ModelConfig:
    fam = detect_family(cfg)
    return _llada(cfg, where) if fam == "llada" else _hf(cfg, where, fam)

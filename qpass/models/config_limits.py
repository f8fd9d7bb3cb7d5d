"""Sanity limits of a model config, checked before anything is allocated (DESIGN §6: a
stranger's config.json or manifest may lie about its sizes).

`check_config` is the one validation of a ModelConfig's fields: every value's type, every
size within the limits below, the fields' consistency, and an estimate of what the model
would allocate (parameters, the largest tensor, the RoPE tables). It runs on every
ModelConfig construction (so `config_from_hf`, `ModelConfig.from_dict` and code building one
all pass through it) and costs a few integer operations: a config that passes builds as
before, one that does not is one ConfigError naming the field, the value, the limit and what
to do — before a list of n_layers entries, a module or a table exists.

The limits admit every released model by a wide margin and refuse only what no model can be
(largest released values in brackets): d_model 2**17 (18,432, PaLM), n_layers 4,096 (126,
Llama-3.1-405B), heads 4,096 (128), head_dim 4,096 (256, Gemma), mlp_hidden and moe_hidden
2**20 (73,728, PaLM), vocab_size 2**22 (262,208, Gemma 3), max_seq_len 2**24 (10,485,760,
Llama-4-Scout; DiffusionGemma 131,072), experts 4,096 per layer (512, Qwen3-Next) and 2**15
over the model (23,040, Kimi-K2: 60 MoE layers of 384), 2**41 parameters (Kimi-K2 ~1.03e12;
the dLLMs: LLaDA-8B, Dream-7B, LLaDA-MoE-7B, LLaDA2-flash ~1e11), 2**34 elements in one
tensor (the largest: an embedding of ~4.8e9), 2**31 elements in one RoPE table (max_seq_len ×
head_dim: 1.3e9 for a 10M-context model; one fp32 table of 2**31 elements is 8 GiB). The
layer and expert counts also bound the time to build the module tree (~1 ms a block,
~0.3 ms an expert, also on the meta device). A real model beyond a limit: raise it here."""
from __future__ import annotations

from collections.abc import Mapping

from ..errors import ConfigError
from ..display.units import fmt_bytes
from .config_values import FIX_LIMIT, as_number, as_size, say

# field -> largest accepted value (sizes are integers >= 1, or >= 0 where LOWER says so)
LIMITS = {
    "d_model": 2 ** 17, "n_layers": 4096, "n_heads": 4096, "n_kv_heads": 4096,
    "explicit_head_dim": 4096, "mlp_hidden": 2 ** 20, "vocab_size": 2 ** 22,
    "max_seq_len": 2 ** 24, "n_experts": 4096, "n_experts_per_tok": 4096,
    "moe_hidden": 2 ** 20, "n_shared_experts": 4096, "first_dense_layers": 4096,
    "n_expert_groups": 4096, "topk_groups": 4096, "attn_block_size": 2 ** 24,
}
LOWER = {f: 0 for f in ("n_experts", "n_experts_per_tok", "moe_hidden", "n_shared_experts",
                        "first_dense_layers", "n_expert_groups", "topk_groups",
                        "attn_block_size")}
MAX_PARAMETERS = 2 ** 41
MAX_TENSOR_ELEMENTS = 2 ** 34
MAX_ROPE_TABLE_ELEMENTS = 2 ** 31
MAX_EXPERTS_TOTAL = 2 ** 15

TOKEN_IDS = ("mask_token_id", "eos_token_id", "pad_token_id")
FLAGS = ("qkv_bias", "o_bias", "mlp_bias", "tie_embeddings", "causal", "logit_shift",
         "norm_topk_prob", "qk_norm", "router_sigmoid", "router_bias", "router_fp32")
FAMILIES = ("llada", "dream", "llama")


def _label(field: str, names: Mapping | None) -> str:
    other = (names or {}).get(field)
    return f"{other} ({field})" if other and other != field else field


def check_config(fields: Mapping, where: str = "model config",
                 names: Mapping | None = None) -> dict:
    """Validate a ModelConfig's fields (a mapping of every field) and return them normalised
    (integral floats of size fields as ints). `where` names the source (a file) and `names`
    the source's own key of a field (config.json's hidden_size for d_model) for messages."""
    out = dict(fields)

    def lab(f):
        return _label(f, names)
    for f, hi in LIMITS.items():
        if f == "explicit_head_dim" and out[f] is None:
            continue
        out[f] = as_size(out[f], lab(f), where, LOWER.get(f, 1), hi)
    for f in TOKEN_IDS:
        if out[f] is not None:
            out[f] = as_size(out[f], lab(f), where, 0)
            if out[f] >= out["vocab_size"]:
                raise say(where, lab(f), out[f], f"must be a token id in [0, vocab_size "
                           f"{out['vocab_size']})", "fix the id or the vocabulary size")
    as_number(out["rope_theta"], lab("rope_theta"), where, above=1.0)   # a base > 1: yarn logs it
    as_number(out["norm_eps"], lab("norm_eps"), where, above=0.0, below=1.0)
    as_number(out["routed_scaling_factor"], lab("routed_scaling_factor"), where)
    for f in FLAGS:
        if not isinstance(out[f], bool):
            raise say(where, lab(f), out[f], "must be true or false")
    if out["family"] not in FAMILIES:
        raise say(where, "family", out["family"], f"must be one of {', '.join(FAMILIES)}")
    if not isinstance(out["name"], str):
        raise say(where, lab("name"), out["name"], "must be a string")
    if not isinstance(out["extra"], dict):
        raise say(where, "extra", out["extra"], "must be a JSON object")
    from .rope import check_scaling
    check_scaling(out["rope_scaling"], where)
    _check_structure(out, where, lab)
    _check_budget(out, where)
    return out


def head_dim(c: Mapping) -> int:
    return c["explicit_head_dim"] or c["d_model"] // c["n_heads"]


def _check_structure(c: dict, where: str, lab) -> None:
    """Cross-field consistency, on values already known to be in range."""
    if c["explicit_head_dim"] is None and c["d_model"] % c["n_heads"]:
        raise ConfigError(f"{where}: {lab('d_model')} {c['d_model']} is not divisible by "
                          f"{lab('n_heads')} {c['n_heads']} and no head_dim is given; fix the "
                          f"config")
    hd = head_dim(c)
    if hd % 2 or hd > LIMITS["explicit_head_dim"]:
        raise say(where, "head_dim", hd, f"must be an even integer <= "
                   f"{LIMITS['explicit_head_dim']} (rotate-half RoPE pairs the channels)")
    if (c["rope_scaling"] or {}).get("rope_type") == "dynamic" and hd < 4:
        raise say(where, "head_dim", hd, "must be >= 4 for dynamic RoPE scaling")
    if c["n_kv_heads"] > c["n_heads"] or c["n_heads"] % c["n_kv_heads"]:
        raise ConfigError(f"{where}: n_heads {c['n_heads']} is not a multiple of n_kv_heads "
                          f"{c['n_kv_heads']} (GQA needs it); fix {lab('n_kv_heads')}")
    if c["first_dense_layers"] > c["n_layers"]:
        raise say(where, lab("first_dense_layers"), c["first_dense_layers"],
                   f"exceeds n_layers {c['n_layers']}")
    if c["attn_block_size"] > c["max_seq_len"]:
        raise say(where, lab("attn_block_size"), c["attn_block_size"],
                   f"exceeds max_seq_len {c['max_seq_len']}")
    if c["attn_block_size"] and (c["causal"] or c["logit_shift"]):
        raise ConfigError(f"{where}: attn_block_size (block diffusion) is its own attention "
                          f"pattern: it cannot be combined with causal or logit_shift")
    _check_moe(c, where)


def _check_moe(c: dict, where: str) -> None:
    e, k = c["n_experts"], c["n_experts_per_tok"]
    if not e:
        return
    if not (1 <= k <= e and c["moe_hidden"] > 0):
        raise ConfigError(f"{where}: an MoE config needs 1 <= n_experts_per_tok <= n_experts "
                          f"({e}) and moe_hidden > 0, got n_experts_per_tok={k}, "
                          f"moe_hidden={c['moe_hidden']}")
    g, tg = c["n_expert_groups"], c["topk_groups"]
    if not g or e % g or not 1 <= tg <= g:
        raise ConfigError(f"{where}: group-limited routing needs n_expert_groups dividing "
                          f"n_experts ({e}) and 1 <= topk_groups <= n_expert_groups, got "
                          f"{g} / {tg}")
    if k > tg * (e // g):
        raise ConfigError(f"{where}: n_experts_per_tok {k} exceeds the {tg * (e // g)} experts "
                          f"of the {tg} eligible groups (n_experts {e} in {g} groups)")
    total = e * (c["n_layers"] - c["first_dense_layers"])
    if total > MAX_EXPERTS_TOTAL:
        raise ConfigError(f"{where}: n_experts {e} on {c['n_layers'] - c['first_dense_layers']} "
                          f"MoE layers make {total} experts, above the limit "
                          f"{MAX_EXPERTS_TOTAL}; {FIX_LIMIT}")


def estimate(c: Mapping) -> dict:
    """What a config's model allocates: {"parameters": count (a tied head once), "largest":
    (tensor, elements), "rope_table": elements of one of the two RoPE tables}. Exact for the
    Denoiser family (tested against built models)."""
    d, hd, nh, nkv = c["d_model"], head_dim(c), c["n_heads"], c["n_kv_heads"]
    e, moe, shared = c["n_experts"], c["moe_hidden"], c["n_shared_experts"] * c["moe_hidden"]
    attn = d * nh * hd * 2 + d * nkv * hd * 2 + 2 * d
    attn += (nh + 2 * nkv) * hd * c["qkv_bias"] + d * c["o_bias"] + 2 * hd * c["qk_norm"]
    dense = 3 * d * c["mlp_hidden"] + (2 * c["mlp_hidden"] + d) * c["mlp_bias"]
    routed = d * e + 3 * d * moe * e + 3 * d * shared
    n_moe = c["n_layers"] - c["first_dense_layers"] if e else 0
    params = c["n_layers"] * attn + (c["n_layers"] - n_moe) * dense + n_moe * routed
    params += c["vocab_size"] * d * (1 if c["tie_embeddings"] else 2) + d
    tensors = {"embedding (vocab_size x d_model)": c["vocab_size"] * d,
               "q_proj (n_heads x head_dim x d_model)": nh * hd * d,
               "MLP (mlp_hidden x d_model)": c["mlp_hidden"] * d}
    if e:
        tensors["router (n_experts x d_model)"] = e * d
        tensors["shared expert (n_shared_experts x moe_hidden x d_model)"] = shared * d
    largest = max(tensors.items(), key=lambda kv: kv[1])
    return {"parameters": params, "largest": largest, "rope_table": c["max_seq_len"] * hd}


def _check_budget(c: dict, where: str) -> None:
    est = estimate(c)
    p = est["parameters"]
    if p > MAX_PARAMETERS:
        raise ConfigError(f"{where}: the config describes {p:.3g} parameters ({fmt_bytes(2 * p)} "
                          f"in bf16, {fmt_bytes(4 * p)} in fp32), above the limit "
                          f"{MAX_PARAMETERS:.3g} (2**41); {FIX_LIMIT}")
    name, n = est["largest"]
    if n > MAX_TENSOR_ELEMENTS:
        raise ConfigError(f"{where}: its {name} tensor would have {n:.3g} elements "
                          f"({fmt_bytes(4 * n)} in fp32), above the limit "
                          f"{MAX_TENSOR_ELEMENTS:.3g} (2**34) for one tensor; {FIX_LIMIT}")
    r = est["rope_table"]
    if r > MAX_ROPE_TABLE_ELEMENTS:
        raise ConfigError(f"{where}: its RoPE tables (max_seq_len {c['max_seq_len']} x head_dim "
                          f"{head_dim(c)}) would have {r:.3g} elements each ({fmt_bytes(8 * r)} "
                          f"for cos and sin in fp32), above the limit {MAX_ROPE_TABLE_ELEMENTS:.3g} "
                          f"(2**31); lower max_seq_len, or {FIX_LIMIT}")

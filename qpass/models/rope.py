"""RoPE parameters read as transformers reads them, and the cos/sin tables they give.

transformers 5 writes `rope_parameters` ({"rope_type", "rope_theta", ...}); older configs keep
`rope_theta` at the top level and a `rope_scaling` dict ({"type"|"rope_type", "factor", ...}).
`read_hf_rope` normalises both into (theta, scaling) the way
`RotaryEmbeddingConfigMixin.convert_rope_params_to_dict` / `standardize_rope_params` do, and
`inverse_frequencies` computes what `ROPE_INIT_FUNCTIONS[rope_type]` computes (in float64).
A rope type that changes the computation and is not implemented here is a CheckpointError
naming it, never read as plain RoPE."""
from __future__ import annotations

import math

import torch

from ..errors import CheckpointError

SUPPORTED_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")
# The keys each type needs, as transformers' validators require them.
_REQUIRED = {"linear": ("factor",), "dynamic": ("factor",),
             "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                        "original_max_position_embeddings"),
             "yarn": ("original_max_position_embeddings",)}
_OPTIONAL = {"yarn": ("factor", "attention_factor", "mscale", "mscale_all_dim", "beta_fast",
                      "beta_slow", "truncate")}


def _rope_dict(cfg: dict, where: str) -> tuple[dict, str]:
    """The one flat rope dict of a config, and the key it came from (rope_scaling wins over
    rope_parameters, as in transformers); nested per-layer-type dicts only when one type is used."""
    for key in ("rope_scaling", "rope_parameters"):
        rp = cfg.get(key)
        if rp:
            break
    else:
        return {}, "rope_parameters"
    if not isinstance(rp, dict):
        raise CheckpointError(f"{where}: {key} must be a JSON object, got {rp!r}")
    layer_types = cfg.get("layer_types") or []
    nested = [k for k in rp if k in layer_types]
    if nested:
        used = sorted(set(layer_types))
        if len(used) != 1 or not isinstance(rp.get(used[0]), dict):
            raise CheckpointError(
                f"{where}: {key} differs per layer type ({', '.join(nested)}); qpass applies "
                f"one RoPE to every layer")
        return dict(rp[used[0]]), f"{key}.{used[0]}"
    return dict(rp), key


def read_hf_rope(cfg: dict, max_position_embeddings: int, where: str = "config.json",
                 default_theta: float = 10000.0) -> tuple[float, dict | None]:
    """(rope_theta, scaling dict or None for plain RoPE) of an HF config dict."""
    rp, key = _rope_dict(cfg, where)
    from .config_values import as_number
    theta = as_number(rp.get("rope_theta", cfg.get("rope_theta", default_theta)), "rope_theta",
                      where, above=1.0)
    rope_type = rp.get("rope_type", rp.get("type", "default"))
    if rope_type not in SUPPORTED_TYPES:
        raise CheckpointError(
            f"{where}: {key}.rope_type '{rope_type}' changes the RoPE computation and qpass does "
            f"not implement it (supported: {', '.join(SUPPORTED_TYPES)}); convert the model or "
            f"remove the field only if the checkpoint was trained without it")
    partial = rp.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 1.0))
    if rope_type != "default" and partial not in (None, 1, 1.0):
        # transformers' LLaMA/Qwen2 rotate the whole head: its scaled inverse frequencies for a
        # partial dim do not fit the head, so no reference computation exists to match.
        raise CheckpointError(
            f"{where}: partial_rotary_factor {partial} with rope type '{rope_type}' is not "
            f"supported (LLaMA/Qwen2 layouts rotate the whole head)")
    if rope_type == "default":
        return float(theta), None
    if rope_type in ("llama3", "yarn"):
        # transformers takes a top-level original_max_position_embeddings first (Phi3 style).
        if "original_max_position_embeddings" in cfg:
            rp["original_max_position_embeddings"] = cfg["original_max_position_embeddings"]
        rp.setdefault("original_max_position_embeddings", max_position_embeddings)
    scaling = {"rope_type": rope_type}
    for name in _REQUIRED[rope_type]:
        scaling[name] = as_number(rp.get(name), f"{key}.{name} (rope type '{rope_type}')",
                                  where, 0.0, 2.0 ** 24)
    for name in _OPTIONAL.get(rope_type, ()):
        if rp.get(name) is not None:
            v = rp[name]
            if name == "truncate":
                if not isinstance(v, bool):
                    raise CheckpointError(f"{where}: {key}.truncate must be true or false")
                scaling[name] = v
            else:
                scaling[name] = as_number(v, f"{key}.{name}", where, 0.0, 2.0 ** 24)
    return float(theta), scaling


def check_scaling(scaling: dict | None, where: str = "model config") -> None:
    """A ModelConfig's stored scaling dict must be one this module computes: a supported
    type, its required keys, no other keys, every parameter a finite positive number below
    2**24 (what read_hf_rope admits; a factor beyond it is no model's) and llama3's
    low_freq_factor below high_freq_factor (their difference divides)."""
    from ..errors import ConfigError
    from .config_values import as_number
    if scaling is None:
        return
    if not isinstance(scaling, dict) or scaling.get("rope_type") not in SUPPORTED_TYPES[1:]:
        raise ConfigError(f"{where}: rope_scaling must be null or a dict with rope_type in "
                          f"{SUPPORTED_TYPES[1:]}, got {scaling!r:.120}")
    kind = scaling["rope_type"]
    missing = [k for k in _REQUIRED[kind] if k not in scaling]
    if missing:
        raise ConfigError(f"{where}: rope_scaling lacks {', '.join(missing)}")
    known = set(_REQUIRED[kind]) | set(_OPTIONAL.get(kind, ())) | {"rope_type"}
    unknown = sorted(str(k) for k in scaling if k not in known)
    if unknown:
        raise ConfigError(f"{where}: rope_scaling of type '{kind}' has unknown key(s) "
                          f"{', '.join(unknown)}")
    for k, v in scaling.items():
        if k == "truncate":
            if not isinstance(v, bool):
                raise ConfigError(f"{where}: rope_scaling.truncate must be true or false, "
                                  f"got {v!r:.80}")
        elif k != "rope_type" and not (k in _OPTIONAL.get(kind, ()) and v is None):
            as_number(v, f"rope_scaling.{k}", where, 0.0, 2.0 ** 24)
    if kind == "llama3" and not scaling["low_freq_factor"] < scaling["high_freq_factor"]:
        raise ConfigError(f"{where}: rope_scaling.low_freq_factor "
                          f"{scaling['low_freq_factor']} must be below high_freq_factor "
                          f"{scaling['high_freq_factor']}")


def inverse_frequencies(dim: int, theta: float, scaling: dict | None,
                        max_position_embeddings: int) -> tuple[torch.Tensor, float]:
    """(inverse frequencies (dim/2,) float64, attention scaling of cos/sin) as transformers'
    rope init function of the type computes them at model construction."""
    exponents = torch.arange(0, dim, 2, dtype=torch.float64) / dim
    inv = 1.0 / theta ** exponents
    kind = scaling["rope_type"] if scaling else "default"
    if kind == "default":
        return inv, 1.0
    if kind == "linear":
        return inv / scaling["factor"], 1.0
    if kind == "dynamic":
        # Built at max_position_embeddings the NTK base change is the identity; it grows only for
        # longer inputs, which qpass never feeds (max_seq_len = max_position_embeddings).
        f = scaling["factor"]
        base = theta * (f * max_position_embeddings / max_position_embeddings - (f - 1)) \
            ** (dim / (dim - 2))
        return 1.0 / base ** exponents, 1.0
    if kind == "llama3":
        return _llama3(inv, scaling), 1.0
    return _yarn(dim, theta, scaling, max_position_embeddings)


def _llama3(inv: torch.Tensor, s: dict) -> torch.Tensor:
    factor, lo, hi = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    out = torch.where(wavelen > old / lo, inv / factor, inv)       # long waves: interpolate
    smooth = (old / wavelen - lo) / (hi - lo)
    blended = (1 - smooth) * out / factor + smooth * out
    medium = (wavelen >= old / hi) & (wavelen <= old / lo)
    return torch.where(medium, blended, out)


def _yarn(dim: int, theta: float, s: dict, max_pos: int) -> tuple[torch.Tensor, float]:
    orig = s["original_max_position_embeddings"]
    factor = s.get("factor") or max_pos / orig

    def mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    att = s.get("attention_factor")
    if att is None:
        m, m_all = s.get("mscale"), s.get("mscale_all_dim")
        att = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)
    beta_fast, beta_slow = s.get("beta_fast") or 32, s.get("beta_slow") or 1

    def correction_dim(rotations):
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001                      # transformers' guard against a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    pos_freqs = theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    extrapolate = 1 - ramp
    inv = (1.0 / (factor * pos_freqs)) * (1 - extrapolate) + (1.0 / pos_freqs) * extrapolate
    return inv, float(att)


def rope_tables(dim: int, max_len: int, theta: float, scaling: dict | None,
                dtype: torch.dtype = torch.float32, device=None):
    """cos, sin tables (max_len, dim) in the rotate-half layout, scaled like transformers'."""
    inv, att = inverse_frequencies(dim, theta, scaling, max_len)
    inv = inv.to(device)
    freqs = torch.outer(torch.arange(max_len, dtype=torch.float64, device=device), inv)
    emb = torch.cat((freqs, freqs), dim=-1)
    return (emb.cos() * att).to(dtype), (emb.sin() * att).to(dtype)

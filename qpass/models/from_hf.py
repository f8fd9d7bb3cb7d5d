"""In-memory transformers models -> the traceable Denoiser family (DESIGN §7, §14).

transformers' own modules cannot be traced by torch.fx as qpass needs (their forwards build
masks and caches with Python logic), so `from_hf` maps a LlamaForCausalLM,
Qwen2ForCausalLM, or a LLaDA / Dream remote-code model (recognised by config.model_type /
architectures) onto `Denoiser`: the config is read exactly as a config.json on disk is
(qpass.models.hf_config), the tensors by the checkpoint naming of the family.

Weights are **shared**, not copied: the Denoiser's parameters are views of the transformers
module's tensors (no extra memory for an 8B model). `Pipeline.run` never modifies the model it
is given (it works on a deep copy), so sharing is safe there; a caller who edits the returned
Denoiser in place edits the transformers module too."""
from __future__ import annotations

import torch
import torch.nn as nn

from ..errors import CheckpointError, QpassError
from .config import ModelConfig
from .denoiser import Denoiser
from .hf_config import config_from_hf
from .naming import key_map, key_mismatch

SUPPORTED = "LlamaForCausalLM, Qwen2ForCausalLM, LLaDAModelLM (remote code), DreamModel (remote code)"


def is_transformers_model(obj) -> bool:
    """A transformers PreTrainedModel (checked by its class's module, no transformers import)."""
    return isinstance(obj, nn.Module) and hasattr(obj, "config") and any(
        c.__module__.split(".")[0] == "transformers" for c in type(obj).__mro__) \
        and not isinstance(obj, Denoiser)


def from_hf(module: nn.Module, tokenizer=None) -> Denoiser:
    """The Denoiser computing what `module` computes, sharing its weights."""
    cls = type(module).__name__
    config = getattr(module, "config", None)
    if not isinstance(module, nn.Module) or config is None or not hasattr(config, "to_dict"):
        raise QpassError(f"from_hf takes an in-memory transformers model with a .config "
                         f"({SUPPORTED}); got {cls}. For a checkpoint directory use "
                         f"qpass.models.load(DIR)")
    try:
        cfg = config_from_hf(config.to_dict(), f"{cls}.config")
    except CheckpointError as e:
        raise QpassError(f"{cls} cannot be mapped onto qpass's reference family ({e}); qpass "
                         f"captures it as it is instead: Pipeline.run(model, calib) quantizes "
                         f"it through its own code, and qpass.ir.model_structure.discover("
                         f"model, example_kwargs) shows its stages, linears, experts and "
                         f"per-layer graphs. Mapped onto the reference family (the fast path): "
                         f"{SUPPORTED}") from None
    except (KeyError, TypeError, ValueError) as e:
        raise QpassError(f"{cls}.config lacks or mistypes a field qpass needs ({e}); supported: "
                         f"{SUPPORTED}") from None
    state = _tensors(module, cls, cfg)
    with torch.device("meta"):
        model = Denoiser(cfg)
    model.load_state_dict(state, strict=True, assign=True)     # assign: share, never copy
    if cfg.tie_embeddings:
        model.head.weight = model.embed.weight
    model._build_rope()             # RoPE tables on the weights' device, fp32 at least
    model.to(state["embed.weight"].dtype)
    model.tokenizer = tokenizer
    return model.eval()


def _tensors(module: nn.Module, cls: str, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """{Denoiser parameter name: the module's tensor} by the family's checkpoint naming."""
    have = module.state_dict(keep_vars=False)
    expected = key_map(cfg)
    parts = key_mismatch(cfg, expected, have)
    if parts:
        raise QpassError("; ".join(
            [f"{cls} does not have the {cfg.family} layout its config describes"] + parts +
            [f"pass the full causal-LM model ({SUPPORTED}), not a base model or an "
             f"adapter-wrapped one"]))
    dtypes = {t.dtype for t in have.values() if t.is_floating_point()}
    if len(dtypes) > 1:
        raise QpassError(f"{cls} mixes parameter dtypes {sorted(map(str, dtypes))}; cast it to one "
                         f"(module.to(torch.float32)) first")
    out = {param: have[key].detach() for key, param in expected.items()}
    if cfg.tie_embeddings:
        out["head.weight"] = out["embed.weight"]
    return out

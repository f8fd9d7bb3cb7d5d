"""What the compressed-tensors and GPTQ importers share: an HF checkpoint folder's
quantization_config, its tensors (sharded or not, each file a regular file inside the folder,
qpass.folders), and the bookkeeping that every tensor of the file is used exactly once."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from qpass import folders
from qpass.errors import CheckpointError, UnsafeFileError
from qpass.models.loading import checkpoint_tensors, read_config
from qpass.models.naming import key_map
from qpass.models.tokenizer import load_tokenizer

CONFIG = "config.json"
GPTQ_CONFIG = "quantize_config.json"      # AutoGPTQ's own file (older GPTQ folders: only it)
# tensors HF checkpoints may carry that the model recomputes (as qpass.models.naming ignores)
_DERIVED = ("rotary_emb.inv_freq", "attn_bias")


def quant_config(path: Path) -> dict | None:
    """The folder's quantization_config (config.json's, else quantize_config.json's), or None
    when it has neither; never raises (the format marker test)."""
    try:
        if not path.is_dir():
            return None
        if os.path.lexists(path / CONFIG):
            cfg = folders.read_json(path / CONFIG, path, folders.CAPS["config"], dict, "config")
            qc = cfg.get("quantization_config")
            if isinstance(qc, dict):
                return qc
        if os.path.lexists(path / GPTQ_CONFIG):
            qc = folders.read_json(path / GPTQ_CONFIG, path, folders.CAPS["config"], dict,
                                   "GPTQ config")
            return dict(qc, quant_method=qc.get("quant_method", "gptq"))
    except (OSError, UnsafeFileError, CheckpointError, ValueError):
        return None
    return None


class Tensors:
    """The folder's tensors by checkpoint key, read on demand; `take` marks a key used, and
    `unused()` lists what no importer step took (a partial or foreign file is one error)."""

    def __init__(self, path: Path):
        self.path = path
        self.files = checkpoint_tensors(path)
        self.taken: set[str] = set()
        self._open: dict[Path, object] = {}

    def __contains__(self, key: str) -> bool:
        return key in self.files

    def keys(self):
        return self.files.keys()

    def get(self, key: str) -> torch.Tensor:
        from safetensors import safe_open
        f = self.files[key]
        try:
            if f not in self._open:
                self._open[f] = safe_open(str(f), framework="pt")
            return self._open[f].get_tensor(key)
        except FileNotFoundError:
            raise CheckpointError(f"{f} is missing (listed by the checkpoint's index)") from None
        except Exception as e:     # safetensors raises its own error types
            raise CheckpointError(f"{f} is not a readable safetensors file ({e}); re-download "
                                  f"or re-save it") from None

    def take(self, key: str, what: str = "") -> torch.Tensor:
        if key not in self.files:
            raise CheckpointError(f"{self.path}: tensor {key!r} is missing{what and f' ({what})'}"
                                  f"; the checkpoint is incomplete")
        self.taken.add(key)
        return self.get(key)

    def unused(self, tied_head: bool) -> list[str]:
        tied = ("lm_head.weight", "model.transformer.ff_out.weight") if tied_head else ()
        return sorted(k for k in set(self.files) - self.taken
                      if not k.endswith(_DERIVED) and k not in tied)


def check_all_used(tensors: Tensors, cfg, fmt: str) -> None:
    left = tensors.unused(cfg.tie_embeddings)
    if left:
        raise CheckpointError(f"{tensors.path}: the {fmt} checkpoint holds tensors that are no "
                              f"part of the {cfg.family} layout of its config ({len(left)}: "
                              f"{', '.join(left[:6])}); qpass would compute a different model, "
                              f"so it imports nothing")


def float_tensor(tensors: Tensors, key: str) -> torch.Tensor:
    t = tensors.take(key)
    if not t.is_floating_point():
        raise CheckpointError(f"{tensors.path}: {key!r} has dtype {t.dtype}; a float tensor "
                              f"was expected there")
    return t.to(torch.float32)


def model_parts(path: Path):
    """(ModelConfig, tokenizer, Tensors, {HF linear module name: generic name}, {HF tensor
    key: generic name}) of an HF-layout quantized folder."""
    cfg = read_config(path)
    tensors = Tensors(path)
    hf_to_gen = key_map(cfg)
    modules = {k[: -len(".weight")]: g[: -len(".weight")] for k, g in hf_to_gen.items()
               if g.endswith("_proj.weight") or g == "head.weight"}
    return cfg, load_tokenizer(path), tensors, modules, hf_to_gen


def scales32(t: torch.Tensor, where: str) -> torch.Tensor:
    """A file's scales as qpass's float32 (exact from float16/bfloat16/float32)."""
    if t.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise CheckpointError(f"{where}: scales of dtype {t.dtype}; qpass reads float16, "
                              f"bfloat16 or float32 scales (exactly, as float32)")
    t = t.to(torch.float32)
    if not torch.isfinite(t).all():
        raise CheckpointError(f"{where}: scales hold NaN or Inf")
    return t


def check_group_order(tensors: Tensors, key: str, K: int, group: int, where: str,
                      fix: str) -> None:
    """Refuse an act-order group index (`g_idx` / `weight_g_idx`) that is not k // group: one
    scale group's columns scattered along K cannot be held by qpass's contiguous groups without
    a per-linear column gather at run time, which qpass's graph has no op for."""
    if key not in tensors:
        return
    g = tensors.take(key).to(torch.int64)
    if not torch.equal(g, torch.arange(K) // group):
        raise CheckpointError(
            f"{where}: {key.rpartition('.')[2]} is not k // {group} (act-order with permuted "
            f"groups): one scale group's columns are scattered along K, and qpass's groups are "
            f"contiguous runs, so holding it exactly would need a per-linear column gather at "
            f"run time that qpass's graph has no op for. {fix}")

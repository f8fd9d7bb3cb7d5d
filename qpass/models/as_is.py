"""Families captured as they are: a checkpoint directory whose architecture qpass does not
re-implement is loaded with the architecture's own transformers code (DESIGN §2, §7, §14).

Nothing here is per family. A class transformers ships (DiffusionGemmaForBlockDiffusion,
…) is taken from transformers by the config's `architectures`; a class the checkpoint ships
itself (`auto_map`: LLaDA2, LLaDA-MoE, SDAR) is remote code, run only when the caller says
`trust_remote_code=True` (`--trust-remote-code`). qpass.ir.model_structure then finds the
layers, linears, experts, routers and the head of the loaded module by structure."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
import torch.nn as nn

from .. import folders
from ..errors import CheckpointError

# structure-only configs of real families captured as they are (qpass inspect NAME): the
# config.json files in as_is_configs/ (their sources: docs/ARCHITECTURE.md)
CONFIG_DIR = Path(__file__).resolve().parent / "as_is_configs"
AS_IS_CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.json")) if CONFIG_DIR.is_dir() else []

# transformers' auto classes a checkpoint's auto_map may name, in the order qpass prefers
AUTO_CLASSES = ("AutoModelForCausalLM", "AutoModelForMaskedLM", "AutoModel")
_NONE = type(None)
CONFIG_SCHEMA = {"architectures": folders.Optional(([str], _NONE)),
                 # values: "module.Class", or [slow, fast] for AutoTokenizer
                 "auto_map": folders.Optional((folders.Mapping((str, list)), _NONE)),
                 "model_type": folders.Optional((str, _NONE))}


def describe(path: str | os.PathLike) -> dict:
    """{"architecture", "remote": bool} of a checkpoint directory's config.json (read as
    every config is: a capped regular file, schema-checked)."""
    path = Path(path)
    cfg = folders.read_json(path / "config.json", path, folders.CAPS["config"], CONFIG_SCHEMA)
    archs = cfg.get("architectures") or []
    auto_map = cfg.get("auto_map") or {}
    if not archs and not auto_map:
        raise CheckpointError(f"{path}/config.json names no architecture (no 'architectures', "
                              f"no 'auto_map'); qpass cannot tell which model code to run")
    import transformers
    native = [a for a in archs if isinstance(getattr(transformers, a, None), type)]
    if native and not auto_map:
        want = getattr(getattr(getattr(transformers, native[0]), "config_class", None),
                       "model_type", None)
        mt = cfg.get("model_type")
        if want and mt is not None and mt != want:
            raise CheckpointError(f"{path}/config.json says model_type '{mt}' but architecture "
                                  f"{native[0]}, whose model_type is '{want}': the config is "
                                  f"inconsistent; fix its model_type or architectures")
        return {"architecture": native[0], "remote": False}
    if auto_map:
        models = [v for k, v in auto_map.items() if k in AUTO_CLASSES and isinstance(v, str)]
        if not archs and not models:
            raise CheckpointError(f"{path}/config.json auto_map names no model class "
                                  f"({', '.join(AUTO_CLASSES)})")
        return {"architecture": (archs or [models[0].rsplit(".", 1)[-1]])[0], "remote": True,
                "auto_map": auto_map}
    raise CheckpointError(f"{path}/config.json names architecture(s) {archs}, which neither "
                          f"qpass nor transformers {transformers.__version__} implements; "
                          f"upgrade transformers, or use a checkpoint that ships its code")


@contextlib.contextmanager
def quiet_transformers():
    """transformers' own progress bars and warnings off while qpass drives it (qpass shows
    its own progress; a missing weight qpass fills in itself is not a warning)."""
    from transformers.utils import logging as hf_logging
    bars = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _remote_gate(path: Path, info: dict, trust_remote_code: bool) -> None:
    if info["remote"] and not trust_remote_code:
        raise CheckpointError(
            f"{path} ships its own model code ({info['architecture']}, config auto_map "
            f"{sorted(info['auto_map'])}); qpass runs a checkpoint's code only when you trust "
            f"it: pass --trust-remote-code (trust_remote_code=True in Python)")


def _checked_files(path: Path) -> None:
    """Every file transformers will read is a regular file inside the folder, within the
    size caps (qpass.folders) — a link out of the folder or a FIFO is refused first."""
    for p in sorted(path.iterdir()):
        name = p.name
        if name.endswith(".json"):
            folders.regular_file(p, path, "config" if not name.endswith("index.json") else "index")
        elif name.endswith((".safetensors", ".py")):
            folders.regular_file(p, path, "shard" if name.endswith(".safetensors") else "code")


def load_as_is(path: str | os.PathLike, device=None, dtype=None,
               trust_remote_code: bool = False) -> nn.Module:
    """The transformers model of checkpoint dir `path`, computing exactly what transformers
    computes (its own code); `device="meta"` builds the structure without weights."""
    from .tokenizer import load_tokenizer
    path = Path(path)
    info = describe(path)
    _remote_gate(path, info, trust_remote_code)
    _checked_files(path)
    dtype = dtype or torch.float32
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "meta":
        model = _on_meta(path, info, dtype)
    else:
        cls = _model_class(path, info)
        try:
            with quiet_transformers():
                model = cls.from_pretrained(str(path), dtype=dtype, local_files_only=True,
                                            trust_remote_code=info["remote"])
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            raise CheckpointError(f"transformers could not load {path} as "
                                  f"{info['architecture']}: {str(e).splitlines()[0]}") from None
        model.to(dev)
    model.eval()
    model.tokenizer = load_tokenizer(path)
    model.checkpoint_dir = path
    model.qpass_as_is = {"architecture": info["architecture"], "remote": info["remote"]}
    return model


def _model_class(path: Path, info: dict):
    import transformers
    if not info["remote"]:
        return getattr(transformers, info["architecture"])
    for auto in AUTO_CLASSES:
        if auto in info["auto_map"]:
            return getattr(transformers, auto)
    raise CheckpointError(f"{path}/config.json auto_map names none of {AUTO_CLASSES}; qpass "
                          f"does not know which model class to build")


def _on_meta(path: Path, info: dict, dtype) -> nn.Module:
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(str(path), local_files_only=True,
                                        trust_remote_code=info["remote"])
    return build_on_meta(config, info, dtype)


@contextlib.contextmanager
def params_on_meta():
    """Parameters created inside go to the meta device as they are registered; buffers
    (RoPE tables, embedding scales: computed at construction, not stored) stay real."""
    register = nn.Module.register_parameter

    def on_meta(self, name, param):
        if param is not None and not param.is_meta:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(self, name, param)
    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def build_on_meta(config, info: dict, dtype=torch.float32) -> nn.Module:
    """The model of `config` with no weights (structure, shapes, byte counts): parameters on
    meta, buffers real (so a streamed run can fill the parameters in)."""
    import transformers
    with params_on_meta():
        if info["remote"]:
            auto = next(a for a in AUTO_CLASSES if a in info["auto_map"])
            model = getattr(transformers, auto).from_config(config, trust_remote_code=True,
                                                            dtype=dtype)
        else:
            model = getattr(transformers, info["architecture"])._from_config(config, dtype=dtype)
    return model.eval()


def is_as_is_dir(path: str | os.PathLike) -> bool:
    """A checkpoint directory whose architecture qpass's reference family does not load."""
    from .hf_config import detect_family
    p = Path(path)
    if not os.path.lexists(p / "config.json"):
        return False
    cfg = folders.read_json(p / "config.json", p, folders.CAPS["config"], CONFIG_SCHEMA)
    try:
        detect_family(cfg)
        return False
    except CheckpointError:
        return True


def named_on_meta(name: str, trust_remote_code: bool = False) -> nn.Module:
    """The model of the named real config (as_is_configs/NAME.json) on the meta device."""
    import json
    from transformers import AutoConfig
    cfg = json.loads((CONFIG_DIR / f"{name}.json").read_text())
    info = {"architecture": (cfg.get("architectures") or ["?"])[0], "remote": False}
    if cfg.get("auto_map"):
        raise CheckpointError(f"{name} ships remote code; inspect it from its checkpoint "
                              f"directory with --trust-remote-code")
    config = AutoConfig.for_model(**cfg)
    model = build_on_meta(config, info)
    model.tokenizer = None
    model.checkpoint_dir = None
    model.qpass_as_is = {**info, "name": name}
    return model

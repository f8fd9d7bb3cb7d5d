"""Load denoisers from zoo names, named configs or HF-format checkpoint directories."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .. import folders
from ..folders.owned import current_umask
from ..errors import CheckpointError
from .config import NAMED_CONFIGS, ModelConfig
from .denoiser import Denoiser, init_weights
from .generation import GENERATION_FILE, generation_of, read_generation_config
from .naming import config_from_hf, config_to_hf, key_map, key_mismatch
from .tokenizer import load_tokenizer
from .as_is import AS_IS_CONFIGS, is_as_is_dir, load_as_is, named_on_meta

ZOO_DIR = Path(__file__).resolve().parent.parent / "zoo"


def zoo_names() -> list[str]:
    return sorted(p.name for p in ZOO_DIR.iterdir() if (p / "config.json").exists()) \
        if ZOO_DIR.exists() else []


def build(cfg: ModelConfig, device=None, dtype=None, seed: int | None = 0) -> Denoiser:
    """A model of `cfg`; on the meta device it has structure and no weights."""
    dev = torch.device(device) if device is not None else torch.device("cpu")
    with torch.device(dev):
        model = Denoiser(cfg)
    if dev.type != "meta" and seed is not None:
        init_weights(model, seed)
    if dtype is not None:
        model.to(dtype)
    return model.eval()


def on_meta(model) -> bool:
    """True when `model` (any nn.Module, or anything else: False) is structure only: its
    parameters live on the meta device."""
    params = getattr(model, "parameters", None)
    p = next(iter(params()), None) if callable(params) else None
    return p is not None and p.device.type == "meta"


def load(name_or_dir: str | os.PathLike, device=None, dtype=None, seed: int = 0,
         trust_remote_code: bool = False):
    """Zoo name (`tiny-llada`), named config (`llada-8b`, random weights — use device='meta'
    for structure only) or an HF checkpoint directory: in LLaDA, Dream/Qwen2 or LLaMA naming
    a Denoiser of qpass's reference family; any other architecture as it is, the transformers
    model of its own code (qpass.models.as_is; a checkpoint shipping its code only with
    trust_remote_code=True). A structure-only named config of such a family
    (`diffusiongemma-26b-a4b`) builds on the meta device."""
    key = str(name_or_dir)
    if key in AS_IS_CONFIGS and not Path(key).is_dir():
        return named_on_meta(key, trust_remote_code)
    if Path(key).is_dir() and is_as_is_dir(key):
        return load_as_is(key, device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    if key in zoo_names():
        return load_checkpoint(ZOO_DIR / key, device=device, dtype=dtype)
    if key in NAMED_CONFIGS:
        return build(NAMED_CONFIGS[key](), device=device, dtype=dtype, seed=seed)
    path = Path(key)
    if path.is_dir():
        return load_checkpoint(path, device=device, dtype=dtype)
    known = ", ".join(zoo_names() + sorted(NAMED_CONFIGS) + sorted(AS_IS_CONFIGS))
    raise CheckpointError(f"'{key}' is neither a known model ({known}) nor a checkpoint directory")


def read_json(path: Path, folder=None, cap_kind: str = "config", schema=dict) -> dict:
    """A JSON object from `path`, a regular size-capped file inside `folder` (default: its
    directory); one CheckpointError naming the file, line and field when it is not
    (qpass.folders)."""
    path = Path(path)
    return folders.read_json(path, folder if folder is not None else path.parent,
                             folders.CAPS[cap_kind], schema)


def _tensor_files(path: Path) -> dict[str, Path]:
    """checkpoint tensor name -> safetensors file holding it (single file or sharded index),
    each checked to be a regular file inside `path` (its real path is returned, so nothing
    later follows a link)."""
    index = path / "model.safetensors.index.json"
    if os.path.lexists(index):
        weight_map = read_json(index, path, "index", {"weight_map": folders.Mapping(str)})["weight_map"]
        shards = {f: _shard(path, folders.check_name(f, "shard")) for f in set(weight_map.values())}
        return {k: shards[f] for k, f in weight_map.items()}
    files = sorted(p for p in path.iterdir() if p.name.endswith(".safetensors"))
    if not files:
        raise CheckpointError(f"{path} has no *.safetensors file and no model.safetensors.index.json")
    from safetensors import safe_open
    out = {}
    for f in files:
        real = _shard(path, f.name)
        out.update({k: real for k in _open_safetensors(real, safe_open, lambda fh: list(fh.keys()))})
    return out


def checkpoint_tensors(path) -> dict[str, Path]:
    """{tensor key: its safetensors file} of a checkpoint directory (each file a regular
    file inside it, qpass.folders)."""
    return _tensor_files(Path(path))


def _shard(folder: Path, name: str) -> Path:
    """The real path of shard `name`: a regular file inside `folder` (qpass.folders); a missing
    one is named when it is read."""
    if not os.path.lexists(folder / name):
        return folder / name
    return folders.regular_file(folder / name, folder, "shard")


def _open_safetensors(f: Path, safe_open, read):
    """read(handle) on an open safetensors file; CheckpointError naming a corrupt one."""
    try:
        with safe_open(str(f), framework="pt") as fh:
            return read(fh)
    except FileNotFoundError:
        raise CheckpointError(f"{f} is missing (listed by the checkpoint's index)") from None
    except Exception as e:   # safetensors raises its own SafetensorError / OSError types
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{f} is not a readable safetensors file ({e}); re-download or "
                              f"re-save it") from None


def load_checkpoint(path: str | os.PathLike, device=None, dtype=None) -> Denoiser:
    path = Path(path)
    cfg = read_config(path)
    model = build(cfg, device="meta")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type != "meta":
        _fill(model, path, cfg, dev, dtype)
    model.tokenizer = load_tokenizer(path)
    model.checkpoint_dir = path       # where its weights are: a meta model streams from here
    return model.eval()


def read_config(path: str | os.PathLike) -> ModelConfig:
    """The ModelConfig of an HF checkpoint directory (CheckpointError when it has none), with
    its generation_config.json defaults in `extra["generation"]` (qpass.models.generation)."""
    cfg_file = Path(path) / "config.json"
    if not os.path.lexists(cfg_file):
        raise CheckpointError(f"{path} has no config.json: is it an HF-format checkpoint directory?")
    try:
        cfg = config_from_hf(read_json(cfg_file), str(cfg_file))
    except KeyError as e:
        raise CheckpointError(f"{cfg_file} lacks the config key {e}") from None
    except (TypeError, ValueError, ZeroDivisionError) as e:
        raise CheckpointError(f"{cfg_file} has a config value of the wrong type or range: "
                              f"{e}") from None
    gen = read_generation_config(path, cfg.max_seq_len)   # generation_config.json, if any
    if gen:
        cfg.extra = {**cfg.extra, "generation": gen}
    return cfg


def tensor_sources(path: str | os.PathLike, cfg: ModelConfig) -> dict[str, tuple[Path, str]]:
    """{Denoiser parameter name: (safetensors file, checkpoint key)} for every parameter of
    `cfg`'s model (a tied head reads the embedding), after checking that the checkpoint holds
    exactly the expected keys. Lets a caller read one block's weights at a time."""
    path = Path(path)
    files = _tensor_files(path)
    expected = key_map(cfg)
    _check_keys(path, cfg, files, expected)
    out = {param: (files[key], key) for key, param in expected.items()}
    if cfg.tie_embeddings:
        out["head.weight"] = out["embed.weight"]
    return out


def read_tensor(handle, key: str, want_shape, device, dtype) -> torch.Tensor:
    """One checkpoint tensor from an open safetensors handle, shape- and dtype-checked."""
    t = handle.get_tensor(key)
    if tuple(t.shape) != tuple(want_shape):
        raise CheckpointError(f"shape mismatch for '{key}': checkpoint has {tuple(t.shape)}, the "
                              f"config expects {tuple(want_shape)}")
    if not t.is_floating_point():
        raise CheckpointError(f"'{key}' has dtype {t.dtype}; expected floating point")
    if not torch.isfinite(t).all():     # named here, before any pass sees it
        raise CheckpointError(f"'{key}' holds NaN or Inf values; the checkpoint is damaged "
                              f"(re-download it)")
    return t.to(device=device, dtype=dtype or torch.float32)


def _check_keys(path: Path, cfg: ModelConfig, files: dict, expected: dict) -> None:
    parts = key_mismatch(cfg, expected, files)
    if parts:
        raise CheckpointError("; ".join([f"checkpoint {path} does not match its config "
                                         f"({cfg.family} naming)"] + parts) + _quantized(path))


def _quantized(path: Path) -> str:
    """A hint when the folder is a quantized checkpoint (config.json quantization_config),
    which qpass.load_compiled imports (qpass.interop) rather than this float loader."""
    try:
        qc = read_json(path / "config.json").get("quantization_config")
    except CheckpointError:
        return ""
    if not isinstance(qc, dict):
        return ""
    return (f". It is a quantized checkpoint (quant_method {qc.get('quant_method')!r}): load "
            f"it with qpass.load_compiled(DIR) (what qpass eval/generate/inspect do), which "
            f"imports compressed-tensors and GPTQ folders with their codes and scales")


def _fill(model: Denoiser, path: Path, cfg: ModelConfig, dev: torch.device, dtype) -> None:
    from safetensors import safe_open
    files = _tensor_files(path)
    expected = key_map(cfg)
    _check_keys(path, cfg, files, expected)
    params = dict(model.named_parameters(remove_duplicate=False))
    state = {}
    by_file: dict[Path, list[str]] = {}
    for k in expected:
        by_file.setdefault(files[k], []).append(k)
    def read(keys):
        def run(fh):
            for k in keys:
                state[expected[k]] = read_tensor(fh, k, params[expected[k]].shape, dev, dtype)
        return run
    for f, keys in by_file.items():
        _open_safetensors(f, safe_open, read(keys))
    if cfg.tie_embeddings:
        state["head.weight"] = state["embed.weight"]
    model.load_state_dict(state, strict=False, assign=True)
    if cfg.tie_embeddings:
        model.head.weight = model.embed.weight
    model._build_rope()
    if dtype is not None:
        model.to(dtype)  # rebuilds RoPE tables in the right precision (Denoiser._apply)


def save_checkpoint(model: Denoiser, path: str | os.PathLike, dtype=None) -> Path:
    """Write `model` as an HF-format directory in its family's naming (config.json + safetensors)."""
    from safetensors.torch import save_file
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    params = dict(model.named_parameters(remove_duplicate=False))
    tensors = {}
    for ck, mk in key_map(cfg).items():
        t = params[mk].detach().to("cpu")
        tensors[ck] = (t.to(dtype) if dtype is not None else t).contiguous()
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    # safetensors writes 0600; a checkpoint is for others to read too (as save_pretrained's)
    os.chmod(path / "model.safetensors", 0o666 & ~current_umask())
    (path / "config.json").write_text(json.dumps(config_to_hf(cfg), indent=1))
    if generation_of(cfg):
        (path / GENERATION_FILE).write_text(json.dumps(generation_of(cfg), indent=1))
    if model.tokenizer is not None and hasattr(model.tokenizer, "save"):
        model.tokenizer.save(path)
    return path

"""The arguments of `Pipeline.run`, checked at the boundary: one QpassError line before any
compute or progress bar, never an AttributeError from deep inside a pass. The calibration
argument is turned into data by qpass/calibration/coerce.py."""
from __future__ import annotations

import os
from pathlib import Path

import torch

from qpass.errors import CheckpointError, OutputPathError, PipelineError

MODELS = ("a model (qpass.models.load(...), a transformers model or a qpass.QGraph) or the path "
          "of a checkpoint directory")


def check_model(model_or_dir):
    """The model argument as the stores take it: a module or QGraph as given; a zoo name
    (`tiny-llada`) as its embedded checkpoint directory (streamed, like any directory); a path
    that is a directory as given. A named structure (`llada-8b`, no weights), a path that is
    no directory, a compiled model and any other type are one error."""
    from qpass.ir import QGraph
    if isinstance(model_or_dir, (str, os.PathLike)):
        from qpass.models import NAMED_CONFIGS, zoo_names
        from qpass.models.loading import ZOO_DIR
        key = os.fspath(model_or_dir)
        if key in zoo_names() and not Path(key).is_dir():
            return ZOO_DIR / key
        if key in NAMED_CONFIGS and not Path(key).is_dir():
            raise PipelineError(f"'{key}' names a model structure without weights; pass the "
                                f"checkpoint directory of real weights (or, for random weights, "
                                f"the model qpass.models.load('{key}') builds)")
        if not Path(key).is_dir():
            known = ", ".join(zoo_names())
            raise CheckpointError(f"'{key}' is neither a zoo model ({known}) nor a checkpoint "
                                  f"directory")
        return model_or_dir
    from qpass.runtime.compiled import CompiledDenoiser
    if isinstance(model_or_dir, CompiledDenoiser):
        raise PipelineError("this model is already compiled (a CompiledDenoiser); run the "
                            "pipeline on the float model (qpass.models.load(...))")
    if isinstance(model_or_dir, (torch.nn.Module, QGraph)):
        return model_or_dir
    raise PipelineError(f"Pipeline.run takes {MODELS}; got {type(model_or_dir).__name__}")


def check_out(out) -> None:
    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise OutputPathError(f"out must be a directory path (str or pathlib.Path), got "
                              f"{type(out).__name__}")
    if out is not None and not os.fspath(out):
        raise OutputPathError("out is an empty path; name the output directory")


def check_probe(probe, config) -> None:
    """probe: None, an integer (B, L) id tensor or a tuple starting with one."""
    if probe is None:
        return
    ids = probe[0] if isinstance(probe, tuple) and probe else probe
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.is_floating_point() or \
            ids.dtype == torch.bool:
        raise PipelineError(f"probe must be a (batch, length) tensor of token ids (or a tuple "
                            f"starting with one); got {_describe(probe)}")
    vocab = getattr(config, "vocab_size", None)
    limit = getattr(config, "max_seq_len", None)
    if ids.numel() and (int(ids.min()) < 0 or (vocab is not None and int(ids.max()) >= vocab)):
        raise PipelineError(f"probe ids span {int(ids.min())}..{int(ids.max())}, outside the "
                            f"model's vocabulary (size {vocab})")
    if limit is not None and ids.shape[1] > limit:
        raise PipelineError(f"probe length {ids.shape[1]} exceeds the model's {limit} positions")


def check_batch_size(batch_size) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise PipelineError(f"batch_size must be an int >= 1, got {batch_size!r}")


def model_parts(store, model_or_dir) -> tuple:
    """(tokenizer, config) of the model a store runs: what texts and ids are cut with. A
    transformers model's config is read as qpass reads it (its mask id, positions, causal)."""
    model = getattr(store, "model", None)
    model = getattr(store, "source", None) if model is None else model
    model = model_or_dir if model is None else model
    config = getattr(model, "config", None)
    from qpass.models.from_hf import is_transformers_model
    if is_transformers_model(model) and hasattr(config, "to_dict"):
        from qpass.errors import QpassError
        from qpass.models.hf_config import config_from_hf
        try:
            config = config_from_hf(config.to_dict(), f"{type(model).__name__}.config")
        except QpassError:
            pass                           # capture says what is wrong with it
    return getattr(model, "tokenizer", None), config


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__

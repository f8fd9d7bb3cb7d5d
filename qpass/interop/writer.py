"""One exported directory: model.safetensors, config.json, extra JSON files and the
tokenizer, written into a temporary sibling and renamed, so a failure leaves nothing behind.
An existing OUT is never replaced (qpass did not write it)."""
from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

from qpass.errors import CheckpointError


def write_dir(out, tensors: dict, hf_config: dict, tokenizer, extra: dict[str, str]) -> Path:
    from safetensors.torch import save_file
    out = Path(out).absolute()
    if out.exists():
        raise CheckpointError(f"{out} already exists; choose a new output directory "
                              f"(nothing was written)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=1))
        for name, text in extra.items():
            (tmp / name).write_text(text)
        if tokenizer is not None:
            if hasattr(tokenizer, "save_pretrained"):
                tokenizer.save_pretrained(str(tmp))
            elif hasattr(tokenizer, "save"):
                tokenizer.save(tmp)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out

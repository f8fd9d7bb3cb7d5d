"""One exported directory: model.safetensors, config.json, extra JSON files and the
tokenizer, written into a temporary sibling and moved into place atomically
(qpass.runtime.atomic_dir, as compiled checkpoints are), so a failure leaves nothing behind.
An existing OUT is never replaced (qpass did not write it)."""
from __future__ import annotations

import json
from pathlib import Path

from qpass.errors import CheckpointError
from qpass.models.tokenizer import save_tokenizer
from qpass.runtime.atomic_dir import commit, discard, new_temporary


def write_dir(out, tensors: dict, hf_config: dict, tokenizer, extra: dict[str, str]) -> Path:
    from safetensors.torch import save_file
    out = Path(out).absolute()
    if out.exists():
        raise CheckpointError(f"{out} already exists; choose a new output directory "
                              f"(nothing was written)")
    tmp = new_temporary(out)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp / "model.safetensors"),
                  metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=1))
        for name, text in extra.items():
            (tmp / name).write_text(text)
        save_tokenizer(tokenizer, tmp)
        commit(tmp, out, replace=False)
    finally:
        discard(tmp)
    return out

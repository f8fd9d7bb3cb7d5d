"""One exported directory: model.safetensors, config.json, extra JSON files and the
tokenizer, written into a temporary sibling and moved into place atomically
(qpass.runtime.atomic_dir, as compiled checkpoints are), so a failure leaves nothing behind.
An existing OUT is never replaced (qpass did not write it), nor a symlink at OUT, dangling
or not; a path under a file is one OutputPathError."""
from __future__ import annotations

import json
from pathlib import Path

from qpass.models.tokenizer import save_tokenizer
from qpass.runtime.atomic_dir import commit, discard, new_temporary
from qpass.runtime.output import check_new_output


def write_dir(out, tensors: dict, hf_config: dict, tokenizer, extra: dict[str, str]) -> Path:
    from safetensors.torch import save_file
    out = check_new_output(out, "--out")     # nothing there, not even a dangling link
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

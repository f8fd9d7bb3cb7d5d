"""A model's generation defaults: the sampler settings its checkpoint recommends.

As in transformers, where `generation_config.json` beside `config.json` gives `generate()` its
defaults, qpass reads that file from a checkpoint directory and keeps the keys its samplers
understand in `config.extra["generation"]`. The model config travels into every compiled
checkpoint's manifest, so a quantized model samples with the same defaults as its source.
`qpass.sampling.generate` (and `qpass generate`) apply them to every keyword the caller leaves
out; an explicit argument always wins.

Only the keys that shape the denoising schedule are read (GENERATION_KEYS); a real
checkpoint's other generation settings (temperature, top_p, max_new_tokens, token ids) are
left alone, so greedy evaluation stays greedy. Why the zoo models record what they record:
docs/ZOO.md "Generation defaults" (evidence from scripts/generation_sweep.py)."""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import CheckpointError

GENERATION_FILE = "generation_config.json"

# key -> what it must be: "size" (a positive int) or the tuple of allowed strings
GENERATION_KEYS = {
    "block_length": "size",                                    # LLaDA / Dream semi-AR blocks
    "remasking": ("low_confidence", "random"),                 # LLaDA
    "alg": ("origin", "maskgit_plus", "topk_margin", "entropy"),   # Dream
}


def check_generation(d: dict, where: str, max_len: int | None = None) -> dict:
    """The recognised keys of `d`, checked; one CheckpointError naming `where` and the key."""
    out = {}
    for key, kind in GENERATION_KEYS.items():
        if key not in d or d[key] is None:
            continue
        v = d[key]
        if kind == "size":
            if isinstance(v, bool) or not isinstance(v, int) or v < 1 or \
                    (max_len is not None and v > max_len):
                limit = f" and at most {max_len}" if max_len is not None else ""
                raise CheckpointError(f"{where}: '{key}' must be a positive integer{limit}, "
                                      f"got {v!r}")
        elif v not in kind:
            raise CheckpointError(f"{where}: '{key}' must be one of {', '.join(kind)}, got {v!r}")
        out[key] = v
    return out


def read_generation_config(folder, max_len: int | None = None) -> dict:
    """The checked generation defaults of an HF checkpoint directory ({} when it has no
    generation_config.json)."""
    f = Path(folder) / GENERATION_FILE
    if not os.path.lexists(f):
        return {}
    from .. import folders          # a regular, size-capped file inside the folder
    return check_generation(folders.read_json(f, Path(folder), folders.CAPS["config"], dict),
                            str(f), max_len)


def generation_of(config) -> dict:
    """The generation defaults a ModelConfig carries ({} for none)."""
    extra = getattr(config, "extra", None)
    gen = extra.get("generation") if isinstance(extra, dict) else None
    return dict(gen) if isinstance(gen, dict) else {}

"""Apply a model's generation defaults (qpass.models.generation) to a sampler call.

`generate` fills every keyword the caller left out from `model.config.extra["generation"]`
(a checkpoint's generation_config.json, carried into compiled checkpoints by the manifest), as
transformers' `generate()` reads `generation_config`. Explicit keywords always win. A default
block length that does not fit the call (it must divide gen_length, and the blocks must share
the steps evenly) becomes the nearest one that does, so a default never turns a valid call
into an error."""
from __future__ import annotations

import inspect

from ..models.generation import generation_of


def generation_defaults(model) -> dict:
    """The generation defaults `model` carries ({} for none): e.g. {"block_length": 8}."""
    return generation_of(getattr(model, "config", None))


def fitting_block_length(want: int, gen_length: int, steps: int | None) -> int:
    """The block length nearest `want` (the largest not above it, else the smallest above)
    that divides gen_length into blocks sharing `steps` evenly (steps None: any count)."""
    fits = [d for d in range(1, gen_length + 1) if gen_length % d == 0 and
            (steps is None or steps % (gen_length // d) == 0)]
    below = [d for d in fits if d <= want]
    return below[-1] if below else fits[0]


def with_generation_defaults(model, sampler_fn, kw: dict) -> dict:
    """`kw` plus the model's defaults for the keywords `sampler_fn` takes and `kw` lacks (a
    keyword given as None counts as left out)."""
    defaults = generation_defaults(model)
    if not defaults:
        return kw
    params = inspect.signature(sampler_fn).parameters
    add = {k: v for k, v in defaults.items() if k in params and kw.get(k) is None}
    if "block_length" in add:
        gen_length = kw.get("gen_length", params["gen_length"].default)
        steps = kw["steps"] if "steps" in kw else params["steps"].default
        steps = gen_length if steps is None else steps        # None: one token per step
        if kw.get("threshold") is not None or not isinstance(steps, int) or steps < 1:
            steps = None                                       # unused, or the sampler's error
        if isinstance(gen_length, int) and gen_length > 0:
            add["block_length"] = fitting_block_length(add["block_length"], gen_length, steps)
    return {**kw, **add}

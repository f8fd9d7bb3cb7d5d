"""Diffusion samplers that work on any denoiser: eager, captured GraphModule or compiled.

    ids = qpass.sampling.generate(model, prompt_ids, gen_length=64, steps=64, block_length=32)
    texts = qpass.sampling.decode_generated(ids, prompt_ids, tokenizer)
    ids = qpass.sampling.generate(model, "ROMEO:", gen_length=64)   # text: model.tokenizer

`generate` picks the block-diffusion sampler for block-causal models (config.attn_block_size),
Dream's for logit-shift models and LLaDA's otherwise."""
from __future__ import annotations

from ..errors import QpassError
from .block import block_size_of, generate_block_diffusion
from .cache import CACHES, StepStats
from .common import batch_prompts, decode_text, encode_prompts, encode_text, is_text, special_ids
from .defaults import generation_defaults, with_generation_defaults
from .dream import ALGS, generate_dream
from .llada import REMASKING, generate_llada, transfer_schedule

SAMPLERS = ("auto", "llada", "dream", "block")


def resolve_sampler(model, sampler: str = "auto") -> str:
    if sampler not in SAMPLERS:
        raise QpassError(f"sampler must be one of {SAMPLERS}, got '{sampler}'")
    if sampler != "auto":
        return sampler
    cfg = getattr(model, "config", None)
    if block_size_of(model):
        return "block"
    return "dream" if getattr(cfg, "logit_shift", False) else "llada"


def generate(model, prompt_ids, sampler: str = "auto", **kw):
    """Run one of the three samplers, `generate_llada`, `generate_dream` or
    `generate_block_diffusion` (keyword arguments pass through).

    "auto" (resolve_sampler) chooses the block-diffusion sampler for block-causal models, Dream
    when `model.config.logit_shift` is true, LLaDA otherwise (and when there is no config).
    LLaDA and Dream take cache="none"|"prefix"|"dual", threshold=, refresh_every=
    (qpass.sampling.cache); Dream takes block_length= too (default: one block, as Dream v0). "block"
    (generate_block_diffusion) takes steps= and threshold=, and no cache.
    Keywords left out (or None) come from the model's generation defaults when it has them
    (its checkpoint's generation_config.json: e.g. tiny-llada's block_length; see
    qpass.sampling.defaults), else from the sampler's own defaults.

    prompt_ids: token ids (a tensor, a list of ints, a list of 1-D prompts) or text (a str or a
    list of str), encoded with `model.tokenizer` as `qpass generate --prompt` does; text for a
    model without a tokenizer is one QpassError. Pass the same prompt to decode_generated."""
    if isinstance(model, (str, bytes)) or not callable(model):
        raise QpassError(f"generate takes a loaded denoiser (qpass.models.load(...) or "
                         f"qpass.load_compiled(...)), got a {type(model).__name__}")
    which = resolve_sampler(model, sampler)
    fn = {"block": generate_block_diffusion, "dream": generate_dream}.get(which, generate_llada)
    return fn(model, prompt_ids, **with_generation_defaults(model, fn, kw))


def prompt_width(prompt_ids, tokenizer=None) -> int:
    """Where generation starts in the output: the (padded) prompt length. A text prompt needs
    the tokenizer it was encoded with."""
    ids, _ = batch_prompts(encode_prompts(tokenizer, prompt_ids), pad_id=0)
    return ids.shape[1]


def generated_ids(out, prompt_ids, eos_id: int | None = None, tokenizer=None) -> list[list[int]]:
    """The generated part of each row, cut at the first EOS when eos_id is given (a text
    prompt needs its tokenizer)."""
    rows = out[:, prompt_width(prompt_ids, tokenizer):].tolist()
    if eos_id is not None:
        rows = [r[:r.index(eos_id)] if eos_id in r else r for r in rows]
    return rows


def decode_generated(out, prompt_ids, tokenizer, stop_at_eos: bool = True) -> list[str]:
    """Decoded generated text of each row (special tokens dropped); `prompt_ids` as given to
    generate (ids or text)."""
    eos = getattr(tokenizer, "eos_token_id", None) if stop_at_eos else None
    return [decode_text(tokenizer, r) for r in generated_ids(out, prompt_ids, eos, tokenizer)]


__all__ = ["generate", "generate_llada", "generate_dream", "generate_block_diffusion", "resolve_sampler", "transfer_schedule",
           "generation_defaults",
           "special_ids", "batch_prompts", "encode_text", "encode_prompts", "is_text",
           "decode_text", "prompt_width",
           "generated_ids", "decode_generated", "ALGS", "REMASKING", "SAMPLERS", "CACHES", "StepStats"]

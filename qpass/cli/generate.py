"""`qpass generate MODEL_OR_DIR --prompt TEXT`: diffusion sampling from the command line.

After the text, one line on stderr says what ran: the lowered kernels per op and backend (or
that none did: an FP or simulated model), forward passes (NFE) and tokens/s."""
from __future__ import annotations

import argparse
import sys
import time

from qpass.errors import QpassError

from .args import length, nonneg_float, seed
from .common import add_device_arg, add_progress_args, add_trust_arg, device_of, say_device

EXAMPLE = """examples:
  qpass generate tiny-llada --prompt $'12+5=17\\n37+48=' --gen-length 8 --steps 8 --block-length 8
  qpass generate ./w4 --prompt 'ROMEO:' --gen-length 64 --temperature 0.7 --seed 3
  qpass generate ./w4a4 --device cpu --prompt 'ROMEO:' --gen-length 256 --cache prefix --threshold 0.9"""


def add_generate_command(sub) -> None:
    p = sub.add_parser("generate", help="generate text with a diffusion sampler",
                       description="Generate from a prompt with LLaDA's, Dream's or the "
                                   "block-diffusion sampler.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL_OR_DIR")
    p.add_argument("--prompt", required=True, action="append",
                   help="prompt text (repeat for a batch)")
    p.add_argument("--gen-length", type=length, default=64)
    p.add_argument("--steps", type=length, default=None,
                   help="denoising steps (default: --gen-length, one token per step)")
    p.add_argument("--block-length", type=length, default=None,
                   help="default: the model's generation_config.json (tiny-llada: 2), else "
                        "LLaDA 32 (one block where 32 does not divide --gen-length) and Dream "
                        "one block over the whole generation")
    p.add_argument("--temperature", type=nonneg_float, default=0.0)
    p.add_argument("--remasking", default="low_confidence", choices=("low_confidence", "random"))
    p.add_argument("--cfg-scale", type=nonneg_float, default=0.0)
    p.add_argument("--sampler", default="auto", choices=("auto", "llada", "dream", "block"),
                   help="auto: block diffusion for block-causal models, Dream for shifted "
                        "logits, else LLaDA")
    p.add_argument("--cache", default="none", choices=("none", "prefix", "dual"),
                   help="Fast-dLLM K/V cache: prefix reuses the committed prefix within a block, "
                        "dual also the suffix (default none)")
    p.add_argument("--threshold", type=float, default=None,
                   help="parallel decoding: commit every position at least this confident")
    p.add_argument("--refresh-every", type=int, default=None,
                   help="full forward every N steps within a block (default: block starts only)")
    add_device_arg(p, "; a lowered checkpoint binds that device's kernels")
    p.add_argument("--seed", type=seed, default=0)
    add_progress_args(p)
    add_trust_arg(p)
    p.set_defaults(func=cmd_generate)


def kernel_report(calls: dict) -> str:
    """'linear_w4a4 ×84 on reference (cpu), ...' from qpass.backends.op_schemas.kernel_calls()."""
    if not calls:
        return "ran no lowered kernels (FP or simulated model)"
    parts = [f"{op} ×{n} on {backend} ({dev})" for (op, backend, dev), n in sorted(calls.items())]
    return "ran lowered kernels: " + ", ".join(parts)


def max_positions(model) -> int:
    """Positions the model takes: qpass's max_seq_len, or a transformers config's
    max_position_embeddings (its text config's for a multimodal one)."""
    cfg = model.config
    for c in (cfg, getattr(cfg, "text_config", None)):
        for k in ("max_seq_len", "max_position_embeddings"):
            v = getattr(c, k, None) if c is not None else None
            if isinstance(v, int):
                return v
    return 1 << 30


def cmd_generate(args) -> int:
    import torch

    from qpass.backends import op_schemas as ops
    from qpass.sampling import StepStats, generate, resolve_sampler

    from .common import load_model
    for p in args.prompt:
        try:
            p.encode("utf-8")
        except UnicodeEncodeError:
            raise QpassError("--prompt is not valid UTF-8 text; pass text in the terminal's "
                             "UTF-8 encoding") from None
    args.steps_given = args.steps is not None
    if args.steps is None:
        args.steps = args.gen_length
    if args.steps > args.gen_length:
        raise QpassError(f"--steps {args.steps} exceeds --gen-length {args.gen_length}: each step "
                         f"commits at least one token; use --steps <= --gen-length")
    model = load_model(args.model, device=device_of(args),
                       trust_remote_code=args.trust_remote_code)
    room = max_positions(model) - args.gen_length
    if room < 1:
        raise QpassError(f"--gen-length {args.gen_length} leaves no room for the prompt in the "
                         f"model's {max_positions(model)} positions")
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise QpassError(f"{args.model} carries no tokenizer; generate from token ids in Python")
    prompts = [torch.tensor(tok.encode(p)) for p in args.prompt]
    from qpass.calibration.model_states import kind_of
    if getattr(model, "qpass_as_is", None) and kind_of(model) == "block_diffusion":
        from .as_is import generate_own            # DiffusionGemma: its own sampler
        t0 = time.perf_counter()
        out = generate_own(model, prompts, args)
        secs = time.perf_counter() - t0
        print(args.prompt[0] + tok.decode(out[0, prompts[0].shape[0]:].tolist()))
        print("-" * 40)
        print(f"the model's own sampler ({type(model.model if hasattr(model, 'model') else model).__name__}.generate); "
              f"{args.gen_length / secs:.1f} tokens/s", file=sys.stderr)
        return 0
    stats = StepStats()
    kw = dict(gen_length=args.gen_length, steps=args.steps, temperature=args.temperature,
              seed=args.seed, cache=args.cache, threshold=args.threshold,
              refresh_every=args.refresh_every, stats=stats, progress=None)
    which = resolve_sampler(model, args.sampler)
    if which == "block":
        if args.block_length is not None:
            raise QpassError("the block-diffusion sampler uses the model's attention blocks; "
                             "drop --block-length")
        kw.update(remasking=args.remasking)
    elif which == "llada":
        kw.update(remasking=args.remasking, cfg_scale=args.cfg_scale,
                  block_length=args.block_length)
    else:
        kw.update(block_length=args.block_length)   # None: the model's default (generate)
    say_device(args)
    ops.reset_kernel_calls()
    t0 = time.perf_counter()
    out = generate(model, prompts if len(prompts) > 1 else prompts[0][None], sampler=args.sampler, **kw)
    secs = time.perf_counter() - t0
    width = out.shape[1] - args.gen_length
    for p, row in zip(args.prompt, out):
        print(p + tok.decode(row[width:].tolist()))
        print("-" * 40)
    print(f"{kernel_report(ops.kernel_calls())}; {stats.nfe} forward passes, "
          f"{out.shape[0] * args.gen_length / secs:.1f} tokens/s", file=sys.stderr)
    return 0

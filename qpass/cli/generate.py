"""`qpass generate MODEL_OR_DIR --prompt TEXT`: diffusion sampling from the command line."""
from __future__ import annotations

import argparse

from qpass.errors import QpassError

EXAMPLE = """examples:
  qpass generate tiny-llada --prompt $'12+5=17\\n37+48=' --gen-length 8 --steps 8 --block-length 8
  qpass generate ./w4 --prompt 'ROMEO:' --gen-length 64 --temperature 0.7 --seed 3"""


def add_generate_command(sub) -> None:
    p = sub.add_parser("generate", help="generate text with a diffusion sampler",
                       description="Generate from a prompt with LLaDA's (or Dream's) sampler.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL_OR_DIR")
    p.add_argument("--prompt", required=True, action="append",
                   help="prompt text (repeat for a batch)")
    p.add_argument("--gen-length", type=int, default=64)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--block-length", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--remasking", default="low_confidence", choices=("low_confidence", "random"))
    p.add_argument("--cfg-scale", type=float, default=0.0)
    p.add_argument("--sampler", default="auto", choices=("auto", "llada", "dream"))
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_generate)


def cmd_generate(args) -> int:
    import torch

    from .common import load_model
    from qpass.sampling import generate
    model = load_model(args.model)
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise QpassError(f"{args.model} carries no tokenizer; generate from token ids in Python")
    prompts = [torch.tensor(tok.encode(p)) for p in args.prompt]
    kw = dict(gen_length=args.gen_length, steps=args.steps, temperature=args.temperature, seed=args.seed)
    from qpass.sampling import resolve_sampler
    if resolve_sampler(model, args.sampler) == "llada":
        kw.update(block_length=args.block_length, remasking=args.remasking, cfg_scale=args.cfg_scale)
    out = generate(model, prompts if len(prompts) > 1 else prompts[0][None], sampler=args.sampler, **kw)
    width = out.shape[1] - args.gen_length
    for p, row in zip(args.prompt, out):
        print(p + tok.decode(row[width:].tolist()))
        print("-" * 40)
    return 0

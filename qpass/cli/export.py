"""`qpass export DIR --format gptq --out OUT`: a compiled checkpoint written in a format other
engines load (docs/INTEROP.md), from its stored codes (nothing re-rounded)."""
from __future__ import annotations

import argparse

EXAMPLE = """examples:
  qpass quantize tiny-llada --pipeline w4a16-gptq --out ./w4
  qpass export ./w4 --format gptq --out ./w4-gptq
  qpass export ./w4 --format gptq --scale-dtype float32 --out ./w4-gptq-fp32   # exact scales"""


def add_export_command(sub) -> None:
    p = sub.add_parser("export", help="write a compiled checkpoint in another engine's format",
                       description="Export the compiled checkpoint DIR to OUT in FORMAT, from "
                                   "its integer codes (no re-rounding); a scheme the format "
                                   "cannot represent is refused with the reason.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--format", required=True, choices=("gptq",))
    p.add_argument("--out", required=True, metavar="OUT", help="a new directory")
    p.add_argument("--scale-dtype", default="float16", choices=("float16", "float32"),
                   help="dtype of scales and float tensors; float16 is what GPTQ kernels read "
                        "(scales rounded to fp16), float32 keeps qpass's scales exactly")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from qpass.interop import FORMATS, read_source
    from qpass.runtime import load_compiled
    src = read_source(load_compiled(args.directory))
    out = FORMATS[args.format](src, args.out, scale_dtype=args.scale_dtype)
    print(f"wrote {args.format} export to {out}")
    return 0

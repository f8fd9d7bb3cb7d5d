"""The `qpass` command line. Every command has --help with an example; user mistakes end in
one clear error line (exit 2), never a traceback."""
from __future__ import annotations

import argparse
import sys

from qpass.errors import QpassError

INSPECT_EXAMPLE = """examples:
  qpass inspect llada-8b --format json          # structure only (meta device), < 5 s
  qpass inspect tiny-llada --format dot > g.dot
  qpass inspect tiny-llada --pipeline w4a16-rtn --after RTN --diff
  qpass inspect tiny-llada --outliers --pipeline w4a4-quarot --png outliers.png"""


def add_inspect_command(sub) -> None:
    p = sub.add_parser("inspect", help="show a model's captured graph, blocks and groups",
                       description="Capture MODEL (zoo name, named config or checkpoint dir) "
                                   "and show roles, blocks and discovered groups.",
                       epilog=INSPECT_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--format", choices=("text", "json", "dot"), default="text")
    p.add_argument("--device", default=None,
                   help="default: meta for the large named configs, cpu otherwise")
    p.add_argument("--seq-len", type=int, default=16, help="example input length for shapes")
    p.add_argument("--max-nodes", type=int, default=200, help="rows of the node table (text)")
    from qpass.cli.quantize import add_inspect_pipeline_args
    add_inspect_pipeline_args(p)
    p.add_argument("--outliers", action="store_true",
                   help="linear-input absmax and max/median ratio before/after the transforms")
    p.add_argument("--png", metavar="FILE", help="with --outliers: also save a bar plot")
    p.set_defaults(func=cmd_inspect)


def capture_named(model_name: str, device: str | None, seq_len: int = 16):
    """Capture MODEL for inspection (structure-only configs on the meta device)."""
    import torch

    from qpass.ir import capture

    from .common import load_model
    model = load_model(model_name, device=device, structure_ok=True)
    dev = next(iter(model.parameters())).device
    ids = torch.zeros(1, seq_len, dtype=torch.long, device=dev)
    return capture(model, (ids,))


def cmd_inspect(args) -> int:
    if getattr(args, "outliers", False):
        from qpass.cli.outliers import cmd_outliers
        return cmd_outliers(args)
    if getattr(args, "pipeline", None) or getattr(args, "after", None):
        from qpass.cli.quantize import cmd_inspect_pipeline
        return cmd_inspect_pipeline(args)
    from qpass.inspect import render_dot, render_json, render_text, summarize
    g = capture_named(args.model, args.device, args.seq_len)
    if args.format == "dot":
        print(render_dot(g))
    elif args.format == "json":
        print(render_json(summarize(g, args.model)))
    else:
        render_text(summarize(g, args.model), max_nodes=args.max_nodes)
    return 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="qpass", description="Post-training quantization for "
                                 "diffusion language models (LLaDA, Dream).")
    sub = ap.add_subparsers(dest="command", required=True)
    add_inspect_command(sub)
    from qpass.cli.quantize import add_quantize_command
    add_quantize_command(sub)
    from qpass.cli.eval import add_eval_command
    add_eval_command(sub)
    from qpass.cli.study import add_study_command
    add_study_command(sub)
    from qpass.cli.generate import add_generate_command
    add_generate_command(sub)
    from qpass.cli.demo import add_demo_command
    add_demo_command(sub)
    from qpass.cli.export import add_export_command
    add_export_command(sub)
    p = sub.add_parser("backends", help="list kernel backends, whether they run here and why not",
                       epilog="example:\n  qpass backends --format json",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--format", choices=("text", "json"), default="text")
    from qpass.cli.backends import cmd_backends
    p.set_defaults(func=cmd_backends)
    return ap


def main(argv=None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except QpassError as e:
        print(f"qpass {args.command}: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, NotADirectoryError, PermissionError) as e:
        print(f"qpass {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"qpass {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

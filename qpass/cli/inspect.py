"""`qpass inspect MODEL`: the captured graph (roles, blocks, groups); with --pipeline P the
coverage P plans, with --after PASS what P does up to that pass, with --outliers the linear
inputs before / after P's transforms (qpass.inspect). Structure-only configs (llada-8b, …)
load on the meta device: enough for the graph and the planned coverage."""
from __future__ import annotations

import argparse
import json

from qpass.calibration import build_calibration
from qpass.errors import PipelineError

from .args import length, positive_int
from .common import (add_device_arg, add_trust_arg, device_of, load_model, resolve_pipeline,
                     say_device)

EXAMPLE = """examples:
  qpass inspect llada-8b --format json          # structure only (meta device), < 5 s
  qpass inspect tiny-llada --format dot > g.dot
  qpass inspect llada-8b --pipeline w4a16-rtn   # the coverage the pipeline plans
  qpass inspect tiny-llada --pipeline w4a16-rtn --after RTN --diff
  qpass inspect tiny-llada --outliers --pipeline w4a4-quarot --png outliers.png"""

PROBE_LEN = 128      # calibration window of --after and --outliers


def add_inspect_command(sub) -> None:
    p = sub.add_parser("inspect", help="show a model's captured graph, blocks and groups",
                       description="Capture MODEL (zoo name, named config or checkpoint dir) "
                                   "and show roles, blocks and discovered groups.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--format", choices=("text", "json", "dot"), default="text")
    add_device_arg(p, "; the large named configs (llada-8b, …) load on meta")
    p.add_argument("--seq-len", type=length, default=16,
                   help="example input length for shapes (at most the model's max_seq_len)")
    p.add_argument("--max-nodes", type=int, default=200, help="rows of the node table (text)")
    p.add_argument("--pipeline", metavar="P",
                   help="a preset or recipe.py: its planned coverage; with --after, run it up to "
                        "a pass")
    p.add_argument("--after", metavar="PASS", help="show the graph after this pass of --pipeline")
    p.add_argument("--diff", action="store_true", help="show only what PASS changed, node by node")
    p.add_argument("--calib", metavar="PATH", default=None,
                   help="calibration data for --after/--outliers when the pipeline calibrates "
                        "(.txt, .jsonl, a folder of them or a saved HF dataset; zoo models: "
                        "the embedded corpora)")
    p.add_argument("--calib-n", type=positive_int, default=16,
                   help="calibration windows, if needed")
    p.add_argument("--outliers", action="store_true",
                   help="linear-input absmax and max/median ratio before/after the transforms")
    p.add_argument("--png", metavar="FILE", help="with --outliers: also save a bar plot")
    add_trust_arg(p)
    p.set_defaults(func=cmd_inspect)


def cmd_inspect(args) -> int:
    if args.png and not args.outliers:              # never a file silently not written
        raise PipelineError("--png plots --outliers; add --outliers --pipeline P, or drop --png")
    device_of(args)
    from .as_is import is_as_is
    if is_as_is(args.model):
        return _as_is(args)
    if args.outliers:
        return _outliers(args)
    if args.pipeline or args.after:
        return _pipeline(args)
    from qpass.inspect import render_dot, render_json, render_text, summarize
    g = _capture(args)
    if args.format == "dot":
        print(render_dot(g))
    elif args.format == "json":
        print(render_json(summarize(g, args.model)))
    else:
        render_text(summarize(g, args.model), max_nodes=args.max_nodes)
    return 0


def _as_is(args) -> int:
    """A model captured as it is: its structure on the meta device (no weights read)."""
    from rich.console import Console

    from qpass.inspect.as_is import render_as_is, summarize_as_is
    if args.pipeline or args.after or args.outliers or args.format == "dot":
        raise PipelineError(f"{args.model} is captured as it is (its own transformers code): "
                            f"inspect shows its structure and bytes per scheme (text or "
                            f"--format json); --pipeline/--after/--outliers/dot are for qpass's "
                            f"reference family")
    from qpass.models import load
    from qpass.runtime.as_is_model import is_as_is_checkpoint
    if is_as_is_checkpoint(args.model):
        raise PipelineError(f"{args.model} is already quantized; inspect the model it came from")
    model = load(args.model, device="meta", trust_remote_code=args.trust_remote_code)
    summary = summarize_as_is(model, str(args.model))
    if args.format == "json":
        print(json.dumps(summary, indent=1))
    else:
        render_as_is(summary, Console(), args.max_nodes)
    return 0


def _capture(args):
    """MODEL captured on example token ids (structure-only configs on the meta device)."""
    import torch

    from qpass.ir import capture
    model = load_model(args.model, device=args.device, structure_ok=True)
    limit = model.config.max_seq_len
    if args.seq_len > limit:
        raise PipelineError(f"--seq-len {args.seq_len} exceeds {args.model}'s {limit} positions "
                            f"(max_seq_len); use --seq-len {limit} or less")
    dev = next(iter(model.parameters())).device
    return capture(model, (torch.zeros(1, args.seq_len, dtype=torch.long, device=dev),))


def _pipeline(args) -> int:
    """--pipeline P: the coverage P plans; with --after PASS, the graph after that pass."""
    from rich.console import Console

    from qpass.inspect.diff import changes_json, inspect_after, render_changes
    if not args.pipeline:
        raise PipelineError("--after needs --pipeline P, e.g. --pipeline w4a16-rtn --after RTN")
    pipe = resolve_pipeline(args.pipeline)
    if not args.after:
        from qpass.pipeline import coverage, coverage_table
        rows = coverage(_capture(args), pipe.scheme())
        if args.format == "json":
            print(json.dumps([r.to_dict() for r in rows], indent=1))
        else:
            Console().print(coverage_table(rows, title=f"Planned coverage of {pipe!r}"))
        return 0
    model = load_model(args.model, device=args.device, structure_ok=True)
    calib = _calibration(pipe, model, args)
    info = inspect_after(model, pipe, args.after, calib)
    say_device(args)                                 # after the checks inspect_after makes
    if args.format == "json":
        print(json.dumps(changes_json(info), indent=1, default=str))
    else:
        render_changes(info, Console(), diff=args.diff)
    return 0


def _outliers(args) -> int:
    """--outliers: linear inputs before / after the transform passes of --pipeline."""
    from qpass.inspect.outliers import outlier_prefix, outlier_table, render_outliers
    from qpass.runtime.output import check_output_file
    if args.png:
        check_output_file(args.png, "--png")            # before any compute (DESIGN §9)
    if not args.pipeline:
        raise PipelineError("--outliers needs --pipeline P, e.g. --pipeline w4a4-quarot")
    pipe = resolve_pipeline(args.pipeline)
    prefix = outlier_prefix(pipe, args.after)
    model = load_model(args.model, device=args.device)
    calib = _calibration(pipe, model, args)
    fuse = [p for p in prefix if p.name == "FuseNorms"]
    rows = outlier_table(model, prefix, calib, baseline=fuse or None)
    say_device(args)
    render_outliers(rows, png=args.png,
                    title=f"Linear inputs before / after {' → '.join(p.name for p in prefix)}")
    return 0


def _calibration(pipe, model, args):
    """--calib (a real checkpoint needs it when the pipeline calibrates), else the embedded
    corpora of the zoo models; PROBE_LEN tokens or the model's maximum when shorter."""
    return build_calibration(pipe, model, args.calib_n, min(PROBE_LEN, model.config.max_seq_len),
                             path=args.calib, model_name=args.model)

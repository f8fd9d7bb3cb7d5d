"""`qpass eval MODEL_OR_DIR`: the evaluation subcommand (wired into qpass/cli.py)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from qpass.errors import QpassError
from qpass.folders.owned import write_output

from .args import positive_int, seed
from .common import add_device_arg, add_progress_args, device_of, load_model, say_device
from .trajectory import add_trajectory_args, run_trajectory_command

EXAMPLE = """example:
  qpass eval tiny-llada --tasks general,math,code --limit 20 --json out.json
  qpass eval ./w4a4 --tasks math --n-mc 8
  qpass eval tiny-llada --trajectory w4a4-rtn,w4a4-quarot --attribution quantize-one \
      --json traj.json --png traj.png"""


def add_eval_command(subparsers) -> argparse.ArgumentParser:
    """Add the `eval` subparser; its handler is stored as `func` (call `args.func(args)`)."""
    p = subparsers.add_parser(
        "eval", help="evaluate a model on the general / math / code tasks",
        description="Evaluate a denoiser (zoo name, checkpoint dir or compiled dir): "
                    "ELBO bits per byte, cloze accuracy, arithmetic exact match.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL_OR_DIR", help="zoo name (tiny-llada) or directory")
    p.add_argument("--tasks", default="general,math,code",
                   help="comma-separated task names (default: general,math,code)")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="cap on items per task (questions, problems, text chunks)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--json", dest="json_out", metavar="PATH", default=None,
                   help="also write the results as JSON")
    p.add_argument("--data-dir", default=None,
                   help="held-out data folder (default: MODEL_DIR/eval, then the zoo's)")
    add_device_arg(p)
    p.add_argument("--dtype", default=None, choices=("float32", "float16", "bfloat16"))
    p.add_argument("--n-mc", type=positive_int, default=None, help="ELBO masking draws per chunk")
    p.add_argument("--text-bytes", type=positive_int, default=None, help="held-out bytes for bits/byte")
    add_progress_args(p)
    p.add_argument("--progress", action="store_const", const=True, default=None,
                   help="kept for old scripts: progress is on by default (--quiet: off)")
    p.add_argument("--unsafe-code-exec", action="store_true",
                   help="where no sandbox exists (no bubblewrap / namespaces), run generated "
                        "code anyway with rlimits only; never on untrusted models")
    add_trajectory_args(p)
    p.set_defaults(func=run_eval_command)
    return p


def _data_dir(args) -> Path | None:
    if args.data_dir:
        if not Path(args.data_dir).is_dir():      # never fall back to other data silently
            raise QpassError(f"--data-dir {args.data_dir}: no such directory")
        return Path(args.data_dir)
    candidate = Path(args.model) / "eval"
    return candidate if candidate.is_dir() else None


def run_eval_command(args) -> int:
    """Handler of `qpass eval`; raises QpassError for user mistakes (the CLI prints one line)."""
    from rich.console import Console

    from qpass.eval.runner import evaluate, print_results
    from qpass.runtime.output import check_output_file
    if args.limit is not None and args.limit < 1:
        raise QpassError("--limit must be >= 1")
    data_dir = _data_dir(args)
    device_of(args)
    if args.trajectory is not None:
        return run_trajectory_command(args, data_dir)
    if args.json_out:
        check_output_file(args.json_out, "--json")      # before any compute (DESIGN §9)
    settings = {k: v for k, v in (("n_mc", args.n_mc), ("text_bytes", args.text_bytes))
                if v is not None}
    if args.unsafe_code_exec:
        settings["unsafe_code_exec"] = True
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    say_device(args)
    results = evaluate(model, tasks=[t.strip() for t in args.tasks.split(",") if t.strip()],
                       limit=args.limit, seed=args.seed, data_dir=data_dir,
                       progress=args.progress, **settings)
    results["model"] = str(args.model)
    print_results(results, Console())
    if args.json_out:
        write_output(args.json_out, json.dumps(results, indent=1) + "\n", "--json")
        print(f"wrote {args.json_out}", file=sys.stderr)
    return 0

"""`qpass eval MODEL --trajectory Q[,Q2…]`: per-denoising-step error against the FP model.

Each Q is a compiled checkpoint dir or a pipeline (preset name or recipe .py), quantized here
from MODEL with the one calibration builder. Writes --json (qpass.eval.trajectory's report)
and --png, and prints a summary table."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from qpass.calibration import build_calibration
from qpass.errors import QpassError
from qpass.folders.owned import write_output
from qpass.runtime.loading import is_compiled_dir

from .args import length, positive_int
from .common import load_model, resolve_pipeline, say_device

MODES = ("none", "quantize-one", "restore-one")


def add_trajectory_args(p) -> None:
    g = p.add_argument_group("trajectory error (--trajectory)")
    g.add_argument("--trajectory", metavar="Q[,Q2,...]", default=None,
                   help="compare MODEL (FP) step by step with these quantized models: compiled "
                        "dirs or pipelines (e.g. w4a4-rtn,w4a4-quarot); skips --tasks")
    g.add_argument("--prompts", metavar="PATH", default=None,
                   help="prompts: .txt (one per line) or .jsonl (\"prompt\" field); default: "
                        "held-out Shakespeare, Python and addition prompts")
    g.add_argument("--n-prompts", type=positive_int, default=6,
                   help="number of default prompts (default 6)")
    g.add_argument("--gen-length", type=length, default=32)
    g.add_argument("--steps", type=length, default=32)
    g.add_argument("--block-length", type=length, default=16)
    g.add_argument("--attribution", choices=MODES, default="none",
                   help="per-block attribution: quantize-one (only block b quantized) or "
                        "restore-one (all but block b); one pipeline run per block")
    g.add_argument("--png", metavar="PATH", default=None, help="write the trajectory plot")
    g.add_argument("--calib", metavar="PATH", default=None,
                   help="calibration data for pipelines that calibrate (zoo models: built in)")
    g.add_argument("--calib-n", type=positive_int, default=32)
    g.add_argument("--seq-len", type=length, default=256)


def _quantized(item: str, fp, args):
    """(model, fresh-pipeline factory, calibration) for one --trajectory entry."""
    from qpass.pipeline import Pipeline
    from qpass.runtime import load_compiled
    if is_compiled_dir(item):
        make = lambda: Pipeline.from_manifest(item)  # noqa: E731
        model = load_compiled(item, device=args.device)
        calib = build_calibration(make(), fp, args.calib_n, args.seq_len, args.seed,
                                  path=args.calib, model_name=args.model) \
            if args.attribution != "none" else None
        return model, make, calib
    if not item.endswith(".py") and Path(item).is_dir():
        raise QpassError(f"--trajectory {item}: a directory that is not a compiled qpass "
                         f"checkpoint; give a compiled dir or a pipeline name")
    make = lambda: resolve_pipeline(item)  # noqa: E731
    pipe = make()
    calib = build_calibration(pipe, fp, args.calib_n, args.seq_len, args.seed, path=args.calib,
                              model_name=args.model)
    return pipe.run(fp, calib, verify=False, progress=args.progress, seed=args.seed), make, calib


def run_trajectory_command(args, data_dir=None) -> int:
    """The --trajectory branch of `qpass eval` (data_dir: held-out data for default prompts)."""
    from rich.console import Console

    from qpass.eval.trajectory_blocks import block_variants
    from qpass.eval.trajectory_error import trajectory
    from qpass.eval.trajectory_plot import plot_trajectory
    from qpass.eval.trajectory_prompts import default_prompts, read_prompts
    from qpass.runtime.output import check_output_file
    if args.json_out:
        check_output_file(args.json_out, "--json")
    if args.png:
        check_output_file(args.png, "--png")
    if is_compiled_dir(args.model):
        raise QpassError("--trajectory compares against the FP model: give the FP model (zoo "
                         "name or checkpoint dir) as MODEL and the compiled dir in --trajectory")
    if args.gen_length % args.block_length:
        raise QpassError(f"--block-length {args.block_length} must divide --gen-length "
                         f"{args.gen_length}")
    if args.steps % (args.gen_length // args.block_length):
        raise QpassError(f"--steps {args.steps} must split evenly over the "
                         f"{args.gen_length // args.block_length} blocks of --gen-length "
                         f"{args.gen_length} / --block-length {args.block_length}")
    items = [s.strip() for s in args.trajectory.split(",") if s.strip()]
    if not items:
        raise QpassError("--trajectory needs at least one compiled dir or pipeline name")
    prompts = read_prompts(args.prompts) if args.prompts else \
        default_prompts(args.n_prompts, data_dir=data_dir, seed=args.seed)
    fp = load_model(args.model, device=args.device, dtype=args.dtype)
    if args.gen_length >= fp.config.max_seq_len:
        raise QpassError(f"--gen-length {args.gen_length} leaves no room for a prompt in "
                         f"{args.model}'s {fp.config.max_seq_len} positions (max_seq_len)")
    models, attribution = {}, {}
    for item in items:
        model, make, calib = _quantized(item, fp, args)
        models[item] = model
        if args.attribution != "none":
            attribution[item] = block_variants(fp, make, calib, args.attribution, args.seed)
    is_dream = getattr(fp.config, "logit_shift", False)
    say_device(args)                          # after the items' own checks: one error line
    report = trajectory(fp, models, prompts, gen_length=args.gen_length, steps=args.steps,
                        block_length=None if is_dream else args.block_length, seed=args.seed,
                        attribution=attribution or None,
                        attribution_mode=args.attribution)
    data = report.to_dict()
    data["model"] = str(args.model)
    data["prompt_texts"] = prompts
    _print(data, Console())
    if args.json_out:
        write_output(args.json_out, json.dumps(data, indent=1) + "\n", "--json")
        print(f"wrote {args.json_out}", file=sys.stderr)
    if args.png:
        plot_trajectory(data, args.png, title=f"{args.model}: trajectory error vs FP")
        print(f"wrote {args.png}", file=sys.stderr)
    return 0


def _print(data: dict, con) -> None:
    from rich.table import Table
    t = Table(title=f"trajectory error vs FP ({data['settings']['sampler']} sampler, "
                    f"{data['settings']['prompts']} prompts, {data['settings']['steps']} steps)")
    for col in ("model", "mean KL (nats)", "top-1 agree", "commit Jaccard",
                "first divergence (per prompt)", "top block"):
        t.add_column(col)
    for name, e in data["models"].items():
        s, fr = e["summary"], e.get("free_running", {})
        attr = e.get("attribution")
        t.add_row(name, f"{s['kl_mean']:.4f}", f"{s['top1_agreement_mean']:.3f}",
                  f"{s['commit_jaccard_mean']:.3f}",
                  ", ".join("-" if f is None else str(f) for f in fr.get("first_divergence", [])),
                  "-" if attr is None else str(attr["top_block"]))
    con.print(t)

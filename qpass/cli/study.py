"""`qpass study CONFIG`: the paper's grid (models × pipelines × tasks × seeds) from one file,
cached by content hash so that a rerun computes only what is new (qpass.study)."""
from __future__ import annotations

import argparse

from .common import add_progress_args

EXAMPLE = """example:
  qpass study studies/paper.toml                 # tiny zoo, CPU
  qpass study studies/paper.toml --out runs/paper --no-plots
  qpass study studies/paper.toml --report report.html   # one self-contained HTML file
  qpass study studies/paper-8b.toml --model llada-8b=/ckpt/LLaDA-8B-Base --model dream-7b=/ckpt/Dream-7B"""


def add_study_command(sub) -> None:
    p = sub.add_parser("study", help="run a models × pipelines × tasks × seeds grid (cached)",
                       description="Quantize every model with every pipeline, evaluate every task "
                                   "with every seed; results and checkpoints are cached by "
                                   "content hash, so a rerun or an interrupted study resumes.",
                       epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", metavar="CONFIG", help="study file (.toml, or .yaml with PyYAML)")
    p.add_argument("--out", default=None, help="output folder (default: the config's study.out)")
    p.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                   help="set the path of the config's model NAME (e.g. a local checkpoint)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--report", default=None, metavar="HTML",
                   help="also write one self-contained HTML report (tables, plots, the "
                        "finding-by-finding comparison with the papers)")
    add_progress_args(p)
    p.set_defaults(func=cmd_study)


def _override_paths(cfg, pairs) -> None:
    from qpass.errors import QpassError
    names = {m["name"]: m for m in cfg.models}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or name not in names:
            raise QpassError(f"--model {pair!r}: give NAME=PATH with NAME one of {sorted(names)}")
        names[name]["path"] = path


def cmd_study(args) -> int:
    from rich.console import Console

    from qpass import presets
    from qpass.study import (acceleration, check_out_dir, read_config, rich_table, run_study,
                             summarize, trajectory_cells, write_outputs)
    cfg = read_config(args.config, out=args.out)
    _override_paths(cfg, args.model)
    acceleration.read_settings(cfg)             # config mistakes before any compute
    trajectory_cells.read_settings(cfg)
    from qpass.runtime.output import check_output_folder
    check_output_folder(cfg.out, "--out" if args.out else "study.out")   # before any compute
    if args.report:
        from qpass.runtime.output import check_output_file
        check_output_file(args.report, "--report")
    check_out_dir(cfg.out)
    console = Console(stderr=True)
    log = lambda msg: console.print(msg, style="dim", soft_wrap=True)  # noqa: E731
    rows = run_study(cfg, presets.get, log=log)
    accel = acceleration.run_acceleration(cfg, presets.get, log=log)
    traj = trajectory_cells.run_trajectories(cfg, presets.get, log=log)
    files = write_outputs(rows, cfg.out, f"qpass study: {cfg.name}", with_plots=not args.no_plots,
                          accel_rows=accel, traj_rows=traj)
    if args.report:
        from qpass.folders.owned import write_output
        from qpass.study import html_report, study_data
        write_output(args.report, html_report.render(study_data(
            rows, f"qpass study: {cfg.name}", accel, traj)), "study report")
        files["report"] = args.report
    Console().print(rich_table(summarize(rows), f"qpass study: {cfg.name}"))
    n_cached = sum(r["cached"] for r in rows)
    if accel or traj:
        extra = accel + traj
        console.print(f"acceleration and trajectory: {len(extra)} results "
                      f"({sum(r['cached'] for r in extra)} from the cache)", soft_wrap=True)
    console.print(f"{len(rows)} results ({n_cached} from the cache); wrote "
                  + ", ".join(str(p) for p in files.values()), soft_wrap=True)
    return 0

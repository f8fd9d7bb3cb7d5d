"""`qpass quantize MODEL --pipeline P --out DIR` and `qpass inspect MODEL --pipeline P --after
PASS [--diff]`. Errors are QpassError subclasses, printed by qpass.cli as one line."""
from __future__ import annotations

import argparse
import json

from .errors import CalibrationError, PipelineError

QUANTIZE_EXAMPLE = """examples:
  qpass quantize tiny-llada --pipeline w4a16-rtn --out tiny-w4/
  qpass quantize ./my-llada-checkpoint --pipeline w4a4-rtn --out w4a4/ --calib-n 128 --seq-len 512
pipelines: see `qpass.presets.names()` (w4a16-rtn, w3a16-rtn, w8a8-rtn, w4a4-rtn, ...)"""


def _positive(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        v = 0
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return v


def add_quantize_command(sub) -> None:
    p = sub.add_parser("quantize", help="run a named pipeline and save the compiled model",
                       description="Load MODEL (zoo name or HF checkpoint dir), run pipeline P "
                                   "and write a compiled checkpoint (safetensors + JSON) to DIR.",
                       epilog=QUANTIZE_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--pipeline", required=True, metavar="P", help="a preset name")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--calib-n", type=_positive, default=128, help="calibration windows (default 128)")
    p.add_argument("--seq-len", type=_positive, default=512, help="calibration window length")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--allow-uncovered", action="store_true",
                   help="accept linears that no rule quantizes or keeps")
    p.add_argument("--quiet", action="store_true", help="no progress and no report tables")
    p.set_defaults(func=cmd_quantize)


def add_inspect_pipeline_args(p) -> None:
    p.add_argument("--pipeline", metavar="P", help="a preset; with --after, run it up to a pass")
    p.add_argument("--after", metavar="PASS", help="show the graph after this pass of --pipeline")
    p.add_argument("--diff", action="store_true", help="show only what PASS changed, node by node")
    p.add_argument("--calib-n", type=_positive, default=16, help="calibration windows, if needed")


def _load(model_name: str, allow_meta: bool = False):
    """The model on CPU; the large named configs (llada-8b, dream-7b) have no weights and load
    on the meta device, which only structural inspection can use."""
    from .models import NAMED_CONFIGS, load
    if model_name in NAMED_CONFIGS and not model_name.startswith("tiny"):
        if not allow_meta:
            raise PipelineError(f"{model_name!r} is a structure-only config (no weights); pass an "
                                f"HF checkpoint directory of the model to quantize it")
        return load(model_name, device="meta")
    return load(model_name, device="cpu")


def _calibration(pipeline, model, n: int, seq_len: int, seed: int):
    if not any(p.needs_calibration for p in pipeline.passes):
        return None
    from .calibration import CalibrationSet
    from .data.sources import calibration_texts
    if model.tokenizer is None:
        raise CalibrationError("this pipeline needs calibration text but the model has no "
                               "tokenizer; use a checkpoint that ships one")
    return CalibrationSet.from_texts(calibration_texts(seed=seed), model.tokenizer, n=n,
                                     seq_len=min(seq_len, model.config.max_seq_len), seed=seed,
                                     vocab_size=model.config.vocab_size,
                                     mask_id=model.config.mask_token_id)


def cmd_quantize(args) -> int:
    from rich.console import Console

    from . import presets
    from .checkpoint import check_target
    check_target(args.out)
    pipe = presets.get(args.pipeline)
    pipe.allow_uncovered = args.allow_uncovered
    model = _load(args.model)
    calib = _calibration(pipe, model, args.calib_n, args.seq_len, args.seed)
    out = pipe.run(model, calib, progress=not args.quiet, seed=args.seed)
    path = out.save(args.out)
    console = Console(stderr=True)
    if not args.quiet:
        out.report.print(console)
    nb = out.weight_nbytes()
    console.print(f"saved {path} ({len(out.quantized_linears())} quantized linears; linear "
                  f"weights {nb['linear'] / 2**20:.2f} MiB, total {nb['total'] / 2**20:.2f} MiB)",
                  soft_wrap=True)
    return 0


def cmd_inspect_pipeline(args) -> int:
    from rich.console import Console

    from . import presets
    from .inspect.diff import changes_json, inspect_after, render_changes
    if not args.pipeline:
        raise PipelineError("--after needs --pipeline P, e.g. --pipeline w4a16-rtn --after RTN")
    pipe = presets.get(args.pipeline)
    model = _load(args.model, allow_meta=True)
    if not args.after:
        return _planned_coverage(model, pipe, getattr(args, "format", "text"))
    calib = _calibration(pipe, model, args.calib_n, 128, 0)
    info = inspect_after(model, pipe, args.after, calib)
    if getattr(args, "format", "text") == "json":
        print(json.dumps(changes_json(info), indent=1, default=str))
    else:
        render_changes(info, Console(), diff=args.diff)
    return 0


def _planned_coverage(model, pipe, fmt: str) -> int:
    """Without --after: the coverage table the pipeline's scheme plans (works on meta models)."""
    from rich.console import Console

    from .ir import capture
    from .pipeline import coverage, coverage_table
    rows = coverage(capture(model), pipe.scheme())
    if fmt == "json":
        print(json.dumps([r.to_dict() for r in rows], indent=1))
    else:
        Console().print(coverage_table(rows, title=f"Planned coverage of {pipe!r}"))
    return 0

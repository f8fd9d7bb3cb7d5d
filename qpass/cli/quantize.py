"""`qpass quantize MODEL --pipeline P [--scheme S] --out DIR`: resolve the pipeline (its scheme
changed by the scheme flags, scheme_args.py), load the model (an HF
checkpoint directory only on the meta device: it streams stage by stage, DESIGN §12), build
the calibration, `Pipeline.run(..., out=DIR)`, print what was written. Errors are QpassError
subclasses, printed by qpass.cli as one line."""
from __future__ import annotations

import argparse
from contextlib import nullcontext
from pathlib import Path

from qpass.calibration import build_calibration
from qpass.errors import PipelineError
from qpass.runtime.loading import is_compiled_dir
from qpass.runtime.report_summary import float_size

from . import scheme_args
from .args import positive_int as _positive, seed as _seed
from .common import (add_device_args, add_progress_args, add_trust_arg, device_of, load_model,
                     resolve_pipeline,
                     say_device, torch_dtype)

QUANTIZE_EXAMPLE = """examples:
  qpass quantize tiny-llada --pipeline w4a16-rtn --out tiny-w4/
  qpass quantize ./my-llada-checkpoint --pipeline w4a16-gptq --out w4/ --calib data.jsonl
  qpass quantize tiny-llada --pipeline my_recipe.py --out mine/ --device cpu
  qpass quantize tiny-llada --pipeline w4a4-quarot --out w4a4/ --backend none   # stay simulated
pipelines: a preset (`qpass presets` lists them: w4a16-rtn, w4a16-gptq, w4a4-quarot, ...) or a
Python recipe file that defines `pipeline`; the output is lowered to kernel ops unless
--backend none. An existing qpass checkpoint at --out is replaced only with --overwrite.

""" + scheme_args.HELP


def add_quantize_command(sub) -> None:
    p = sub.add_parser("quantize", help="run a named pipeline and save the compiled model",
                       description="Load MODEL (zoo name or HF checkpoint dir), run pipeline P "
                                   "and write a compiled checkpoint (safetensors + JSON) to DIR.",
                       epilog=QUANTIZE_EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--pipeline", metavar="P",
                   help="a preset name (`qpass presets`), or a recipe.py that defines `pipeline`")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the qpass checkpoint already at DIR (refused otherwise)")
    scheme_args.add_scheme_args(p)
    add_calibration_args(p, n=128)
    add_device_args(p)
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--strict-groups", action="store_true",
                   help="refuse a layer whose K the scheme's group size does not divide, instead "
                        "of fitting the group (128/64/32) or per-channel")
    p.add_argument("--group-fit", choices=("model", "layer"), default="model",
                   help="when the group size does not divide some layer's K: one fitted group "
                        "size for the whole model (default) or each layer fitted alone")
    p.add_argument("--allow-uncovered", action="store_true",
                   help="accept linears that no rule quantizes or keeps")
    p.add_argument("--backend", default="auto", choices=BACKEND_CHOICES,
                   help="lower to kernel ops (default auto: the best backend per device at run "
                        "time; reference/triton: pin one; none: keep the simulated model)")
    p.add_argument("--report", choices=("summary", "full", "none"), default="summary",
                   help="the run report on stderr: summary (default: a few lines of pass times, "
                        "coverage, SQNR per role, size), full (every table: per pass, per "
                        "linear, coverage), none")
    p.add_argument("--quiet", action="store_true", help="no progress and no report (--report none)")
    add_trust_arg(p)
    add_progress_args(p, quiet=False)
    p.set_defaults(func=cmd_quantize, parser=p)


def add_calibration_args(p, n: int) -> None:
    p.add_argument("--calib", metavar="PATH", default=None,
                   help="calibration data: .txt, .jsonl (\"text\" field), a folder of them, or a "
                        "saved HF dataset (default for zoo models: the embedded corpora)")
    p.add_argument("--calib-n", type=_positive, default=n, help=f"calibration windows (default {n})")
    p.add_argument("--seq-len", type=_positive, default=None,
                   help="calibration window length (default 512, or the model's maximum when "
                        "shorter; a longer value is an error)")
    p.add_argument("--masking", choices=("diffusion", "none"), default="diffusion",
                   help="mask calibration windows as the denoiser sees them (default) or not")


BACKEND_CHOICES = ("auto", "reference", "triton", "none")


def with_lowering(pipe, backend: str):
    """The pipeline, ending in Lower(backend) unless backend is "none" or it lowers already."""
    from qpass import passes
    if backend == "none" or any(p.is_lowering for p in pipe.passes):
        return pipe
    return pipe.with_pass(passes.Lower(backend=backend))


def streams(model_name) -> bool:
    """An HF checkpoint directory (not a zoo model, not a compiled checkpoint) is quantized
    stage by stage, its weights read one block at a time (DESIGN §12)."""
    from qpass.models import zoo_names
    return (Path(model_name).is_dir() and not is_compiled_dir(model_name)
            and str(model_name) not in zoo_names())


def cmd_quantize(args) -> int:
    from qpass.calibration.distributed import init_from_env, rank_and_world
    from qpass.pipeline.work_dir import hold
    from qpass.presets import identify
    from qpass.runtime.checkpoint import describe
    from qpass.runtime.output import check_output_dir
    scheme_args.check_conflicts(args, args.parser)
    if is_compiled_dir(args.model):                     # not after loading it (DESIGN §9)
        raise PipelineError(f"{args.model} is already a qpass compiled checkpoint "
                            f"({describe(args.model, identify)}); quantize the original model, "
                            f"or export this one with qpass export")
    check_output_dir(args.out, "--out", overwrite=args.overwrite,   # before anything slow
                     preset_of=identify)
    pipe = scheme_args.pipeline(args, resolve_pipeline).replace(
        allow_uncovered=args.allow_uncovered)
    if args.strict_groups:
        pipe = pipe.strict_groups()
    if args.group_fit != "model":
        pipe = pipe.group_fit(args.group_fit)
    device = device_of(args)
    from .as_is import is_as_is, quantize_as_is
    if is_as_is(args.model):                # its own code runs QuantLinear modules: no Lower
        from qpass.pipeline.work_dir import hold
        with hold(args.out):
            return quantize_as_is(args, pipe, streamed=streams(args.model))
    pipe = with_lowering(pipe, args.backend)   # lowered by default (DESIGN §6), streamed too
    parallel = init_from_env(device)                     # under torchrun: one rank of several
    # under torchrun every rank holds the whole model (calibration/distributed.py): a
    # checkpoint directory is loaded, not streamed (streaming runs in one process for now)
    # a pass that trains on the whole model (LearnedRotate) needs it loaded, not streamed
    streamed = streams(args.model) and not parallel and \
        not any(getattr(p, "needs_whole_model", False) for p in pipe.passes)
    rank = rank_and_world()[0]                           # every rank agrees; rank 0 writes
    # --out's work folder, checked and locked before the model is read: a second run
    # writing the same --out is one error now, naming this one's PID (work_dir.py)
    with hold(args.out) if rank == 0 else nullcontext():
        return _quantize(args, pipe, device, streamed, rank)


def _quantize(args, pipe, device, streamed: bool, rank: int) -> int:
    from rich.console import Console

    from qpass.calibration.distributed import shard
    from qpass.runtime.output import check_free_space
    if streamed:                                         # config and tokenizer, no weights
        from qpass.models import load
        model = load(args.model, device="meta")
    else:
        model = load_model(args.model, device=device, dtype=args.dtype)
        # the compiled checkpoint is at most the float model's size (+ manifest, tokenizer)
        fp_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        check_free_space(args.out, int(fp_bytes * 1.1) + (8 << 20), "--out")
    scheme_args.check_ignore(args.ignore, model, args.model)
    calib = build_calibration(pipe, model, args.calib_n, args.seq_len, args.seed, path=args.calib,
                              masking=args.masking, model_name=args.model)
    size_before = float_size(model)    # the report's size before (a meta model: by shape)
    say_device(args)
    out = pipe.run(model, shard(calib), out=args.out if rank == 0 else None, device=device,
                   dtype=torch_dtype(args.dtype), progress=not args.quiet and rank == 0,
                   seed=args.seed, overwrite=args.overwrite)
    if rank != 0:
        return 0
    _print(out, args, streamed, Console(stderr=True), size_before)
    return 0


def _print(out, args, streamed: bool, console, size_before=None) -> None:
    """The report, what was written and, in memory, the kernels the model binds here."""
    from qpass.display.units import fmt_bytes
    out.report.print(console, level="none" if args.quiet else args.report, before=size_before,
                     after=out.weight_nbytes())
    nb = out.weight_nbytes()
    how = f"; streamed stage by stage from {args.model}" if streamed else ""
    console.print(f"saved {out.path} ({len(out.quantized_linears())} quantized linears; linear "
                  f"weights {fmt_bytes(nb['linear'])}, total {fmt_bytes(nb['total'])}"
                  f"{how})", soft_wrap=True)
    if streamed:                                         # nothing bound: the tensors are on disk
        return
    from qpass.runtime import binding
    rows = out.bind_kernels()
    console.print("kernels here: " + (binding.summary(rows) if rows else
                                      "none (simulated model, --backend none)"), soft_wrap=True)

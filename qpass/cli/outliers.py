"""`qpass inspect MODEL --outliers --pipeline P [--after PASS] [--png FILE]`: per-linear input
absmax and max/median channel ratio after norm fusion vs after the pipeline's transform passes
(Rotate, DuQuant, SmoothQuant, …), as a table and optionally a PNG bar plot."""
from __future__ import annotations

from qpass.calibration import build_calibration
from qpass.errors import PipelineError

from .common import load_model


def transform_prefix(passes, after: str | None) -> list:
    """Passes up to `after` (inclusive), or up to the last weight-changing pass."""
    if after:
        names = [p.name for p in passes]
        if after not in names:
            raise PipelineError(f"--after {after}: the pipeline has no such pass ({', '.join(names)})")
        return list(passes[:names.index(after) + 1])
    last = max((i for i, p in enumerate(passes) if p.changes_weights or p.name == "FuseNorms"),
               default=-1)
    return list(passes[:last + 1])


def cmd_outliers(args) -> int:
    from qpass import presets
    from qpass.pipeline.pass_base import Fact
    from qpass.inspect.outliers import outlier_table, render_outliers
    if getattr(args, "png", None):
        from qpass.runtime.output import check_output_file
        check_output_file(args.png, "--png")            # before any compute (DESIGN §9)
    if not args.pipeline:
        raise PipelineError("--outliers needs --pipeline P, e.g. --pipeline w4a4-quarot")
    pipe = presets.get(args.pipeline)
    prefix = transform_prefix(pipe.passes, args.after)
    if any(Fact.WEIGHTS_QUANTIZED in p.provides for p in prefix):
        raise PipelineError("--outliers compares activations before quantization; pick an --after "
                            "pass before the weight-rounding pass")
    model = load_model(args.model)
    calib = build_calibration(pipe, model, args.calib_n, 128, 0)
    if calib is None:
        import torch
        calib = torch.randint(0, 256, (4, 128), generator=torch.Generator().manual_seed(0))
    fuse = [p for p in prefix if p.name == "FuseNorms"]
    rows = outlier_table(model, prefix, calib, baseline=fuse or None)
    render_outliers(rows, png=getattr(args, "png", None),
                    title=f"Linear inputs before / after {' → '.join(p.name for p in prefix)}")
    return 0

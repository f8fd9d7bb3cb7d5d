"""`qpass inspect --outliers`: per-linear input absmax and max/median channel ratio, before and
after a pipeline prefix (e.g. FuseNorms + Rotate), as a rich table and an optional PNG plot.

The ratio max/median of the per-channel absmax says how much one channel sticks out of the
rest; per-token activation quantization loses the quiet channels when it is large, which is
what rotation (QuaRot) and smoothing/rotation (DuQuant) are meant to bring down."""
from __future__ import annotations

import copy
from typing import Sequence

from rich.console import Console
from rich.table import Table

from qpass.errors import PipelineError
from qpass.folders.owned import replacing
from qpass.ir import capture
from qpass.pipeline.pass_base import Fact
from qpass.runtime.report import name_column, wrapping_column
from qpass.calibration.stats import channel_ratio, collect_input_stats, iter_batches

from .diff import find_pass


def outlier_prefix(pipeline, after: str | None = None) -> list:
    """The passes whose effect on the linear inputs `qpass inspect --outliers` shows: up to
    `after` (inclusive, case-insensitive) or up to the last weight-changing pass. A prefix that
    rounds weights is refused: outliers are compared before quantization."""
    passes = list(pipeline.passes)
    if after:
        last = find_pass(pipeline, after)
    else:
        last = max((i for i, p in enumerate(passes) if p.changes_weights or p.name == "FuseNorms"),
                   default=-1)
    prefix = passes[:last + 1]
    if any(Fact.WEIGHTS_QUANTIZED in p.provides for p in prefix):
        raise PipelineError("--outliers compares activations before quantization; pick an --after "
                            "pass before the weight-rounding pass")
    return prefix


def _passes(prefix) -> list:
    if prefix is None:
        return []
    return list(getattr(prefix, "passes", prefix))


def _stats(model, passes: Sequence, calib) -> dict[str, dict]:
    probe = next(iter(iter_batches(calib, 1)))
    g = capture(copy.deepcopy(model), probe)
    if passes:
        from qpass.pipeline import Pipeline
        pipe = Pipeline(passes, verify=False)            # checks the order first
        pipe.apply(g, calib=calib, probe=probe)
    nodes = g.linears()
    stats = collect_input_stats(g, calib, nodes)
    return {n.target: {"block": n.meta.get("qpass", {}).get("block"),
                       "absmax": stats[n.target].channel_absmax} for n in nodes}


def outlier_table(model, pipeline_prefix, calib, baseline=None) -> list[dict]:
    """One row per linear (graph order): input absmax and max/median ratio before and after
    running `pipeline_prefix` (a Pipeline, a list of passes, or a preset name) on a copy of
    `model`; "before" is the model as given, or after the `baseline` prefix when one is given
    (e.g. [FuseNorms()] to isolate the effect of Rotate). `calib`: a CalibrationSet, a (B, L)
    tensor of token ids, or None (4 windows of 128 random token ids, seed 0: enough to see
    channel outliers when the pipeline does not calibrate)."""
    if calib is None:
        import torch
        calib = torch.randint(0, model.config.vocab_size, (4, 128),
                              generator=torch.Generator().manual_seed(0))
    before = _stats(model, _passes(baseline), calib)
    after = _stats(model, _passes(pipeline_prefix), calib)
    rows = []
    for name, b in before.items():
        a = after.get(name)
        rows.append({
            "linear": name, "block": b["block"], "in_features": int(b["absmax"].numel()),
            "absmax_before": float(b["absmax"].max()), "ratio_before": channel_ratio(b["absmax"]),
            "absmax_after": None if a is None else float(a["absmax"].max()),
            "ratio_after": None if a is None else channel_ratio(a["absmax"]),
        })
    return rows


def per_block(rows: list[dict]) -> list[dict]:
    """Worst (largest) max/median ratio per block, before and after."""
    out: dict = {}
    for r in rows:
        key = "head/other" if r["block"] is None else r["block"]
        o = out.setdefault(key, {"block": key, "ratio_before": 0.0, "ratio_after": 0.0})
        o["ratio_before"] = max(o["ratio_before"], r["ratio_before"])
        o["ratio_after"] = max(o["ratio_after"], r["ratio_after"] or 0.0)
    return list(out.values())


def _f(x) -> str:
    return "—" if x is None else f"{x:.3g}"


def render_outliers(rows: list[dict], png=None, console: Console | None = None,
                    title: str = "Linear inputs: absmax and max/median channel ratio") -> Table:
    """Print the table (and return it); with `png`, also save a bar plot of the ratios when
    matplotlib is installed (a note is printed otherwise)."""
    t = Table(title=title)
    wrapping_column(t, "block", justify="right")
    name_column(t, "linear", [r["linear"] for r in rows])          # whole, never cut
    for c in ("in", "absmax before", "max/median before", "absmax after", "max/median after"):
        wrapping_column(t, c, justify="right")
    for r in rows:
        better = r["ratio_after"] is not None and r["ratio_after"] < r["ratio_before"]
        t.add_row("" if r["block"] is None else str(r["block"]), r["linear"], str(r["in_features"]),
                  _f(r["absmax_before"]), _f(r["ratio_before"]), _f(r["absmax_after"]),
                  f"[green]{_f(r['ratio_after'])}[/]" if better else _f(r["ratio_after"]))
    con = console or Console()
    con.print(t)
    if png is not None:
        _plot(rows, png, con)
    return t


def _plot(rows: list[dict], png, con: Console) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        con.print("[yellow]matplotlib is not installed: no plot (pip install 'qpass[plot]')[/]")
        return
    xs = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(rows)), 4))
    ax.bar([x - 0.2 for x in xs], [r["ratio_before"] for r in rows], 0.4, label="before")
    ax.bar([x + 0.2 for x in xs], [r["ratio_after"] or 0 for r in rows], 0.4, label="after")
    ax.set_yscale("log")
    ax.set_ylabel("input max / median channel absmax")
    ax.set_xticks(list(xs), [r["linear"] for r in rows], rotation=90, fontsize=6)
    ax.legend()
    fig.tight_layout()
    with replacing(png, "--png") as tmp:      # never written through a link (DESIGN §6)
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    con.print(f"plot written to {png}")

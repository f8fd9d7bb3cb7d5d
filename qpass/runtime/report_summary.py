"""The run report at the level a person reads after `qpass quantize` (issue 26): a few lines
that fit 80 columns whatever the model's size, where the full tables (Report.rich_tables:
one row per linear, 200+ lines for a 43-linear model) are `--report full`.

    passes    RTN 3.54 s, Lower 0.04 s (total 3.58 s)
    coverage  42 quantized, 1 kept (head), 0 uncovered of 43 linears
    output SQNR dB  q     k     v     o     gate  up    down
      median        23.9  25.6  11.8  12.5  13.9  12.2  9.4
      worst         16.3  18.1  7.9   8.5   7.9   7.7   4.8
    worst     blocks.5.down_proj: 4.8 dB output SQNR
    size      20.53 MiB float32 → 3.62 MiB (5.67× smaller)
              linear weights 19.76 MiB → 2.85 MiB
    notes     13 from the passes (--report full lists them)

Roles are the last label of a linear's name without `_proj` (q, k, v, o, gate, up, down, head,
router, …): qpass's own module names are generic labels (`blocks.N.q_proj`, ARCHITECTURE
"Decisions"), so this groups every LLaDA/Dream/LLaMA/MoE model alike, and a recipe's own
model groups by its own labels. Names are printed whole, never cut; sizes go through
qpass.display.units.fmt_bytes."""
from __future__ import annotations

import math
import statistics
import textwrap

from qpass.display.units import fmt_bytes

LEVELS = ("summary", "full", "none")
WIDTH = 80
LABEL = 10                      # "coverage  ": the width of the first column


def role_label(name: str) -> str:
    """"blocks.3.gate_proj" -> "gate", "head" -> "head", "blocks.0.experts.7.up_proj" -> "up"."""
    last = name.rsplit(".", 1)[-1]
    return last[:-len("_proj")] if last.endswith("_proj") and len(last) > 5 else last


def module_nbytes(module) -> dict[str, int]:
    """{"linear": bytes of nn.Linear weights, "total": bytes of every parameter and buffer
    (tied tensors once)} of a float model: what CompiledDenoiser.weight_nbytes() says of a
    compiled one, so the two compare. Meta tensors count by shape and dtype."""
    import torch.nn as nn
    linear = sum(m.weight.numel() * m.weight.element_size() for m in module.modules()
                 if isinstance(m, nn.Linear))
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return {"linear": linear, "total": total}


def float_dtype(module) -> str | None:
    """The one floating dtype of `module`'s parameters ("float32"), None when mixed."""
    dtypes = {str(p.dtype).replace("torch.", "") for p in module.parameters()
              if p.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else None


def float_size(module) -> dict:
    """The summary's size before: module_nbytes and the dtype ("dtype"), taken before a run."""
    return dict(module_nbytes(module), dtype=float_dtype(module))


def _wrap(label: str, text: str, width: int) -> list[str]:
    """`label` padded to LABEL columns, `text` wrapped under it at spaces only (a name is
    never broken: one longer than the line stays whole on its own line)."""
    return textwrap.wrap(text, width, initial_indent=label.ljust(LABEL),
                         subsequent_indent=" " * LABEL, break_long_words=False,
                         break_on_hyphens=False) or [label]


def _seconds(s: float) -> str:
    return f"{s:.2f} s" if s < 100 else f"{s:.0f} s"


def _db(x: float) -> str:
    return "inf" if math.isinf(x) else f"{x:.1f}"


def _passes(report, width: int) -> list[str]:
    if not report.passes:
        return []
    items = [f"{p.name} {_seconds(p.seconds)}," for p in report.passes]
    items[-1] = items[-1][:-1]
    total = sum(p.seconds for p in report.passes)
    text = " ".join(items) + (f" (total {_seconds(total)})" if len(items) > 1 else "")
    checked = [p.verified_rel_change for p in report.passes if p.verified_rel_change is not None]
    if checked:
        text += f"; exact passes checked (logits moved ≤ {max(checked):.1e})"
    return _wrap("passes", text, width)


def _counted(names: list[str]) -> str:
    by: dict[str, int] = {}
    for n in names:
        by[role_label(n)] = by.get(role_label(n), 0) + 1
    return ", ".join(k if c == 1 else f"{k} ×{c}" for k, c in by.items())


def _coverage(report, width: int) -> list[str]:
    rows = report.coverage
    if rows is None:
        return []
    q = sum(r.status == "quantized" for r in rows)
    kept = [r.name for r in rows if r.status == "kept"]
    unc = [r.name for r in rows if r.status == "uncovered"]
    text = f"{q} quantized, {len(kept)} kept" + (f" ({_counted(kept)})" if kept else "")
    text += f", {len(unc)} uncovered of {len(rows)} linears"
    if unc:
        text += ": " + ", ".join(unc[:3]) + (f" and {len(unc) - 3} more" if len(unc) > 3 else "")
    return _wrap("coverage", text, width)


def _sqnr_by_role(report, width: int) -> list[str]:
    """Median and worst SQNR of each role as a small grid (roles in graph order, split into
    as many grids as the width needs). Output SQNR when the run measured it, else weights."""
    which = "output" if any(r.output_sqnr_db is not None for r in report.linears) else "weight"
    values: dict[str, list[float]] = {}
    for r in report.linears:
        v = r.output_sqnr_db if which == "output" else r.weight_sqnr_db
        if v is not None:
            values.setdefault(role_label(r.name), []).append(v)
    if not values:
        return []
    head = f"{which} SQNR dB"
    first = max(len(head), len("  median")) + 2
    cols = [(k, _db(statistics.median(v)), _db(min(v))) for k, v in values.items()]
    lines, chunk, used = [], [], first
    for col in cols + [None]:
        w = None if col is None else max(len(c) for c in col) + 2
        if col is None or (chunk and used + w > width):
            for label, i in ((head, 0), ("  median", 1), ("  worst", 2)):
                lines.append((label.ljust(first) + "".join(
                    c[i].ljust(cw) for c, cw in chunk)).rstrip())
            chunk, used = [], first
        if col is not None:
            chunk.append((col, w))
            used += w
    worst = min((r for r in report.linears
                 if (r.output_sqnr_db if which == "output" else r.weight_sqnr_db) is not None),
                key=lambda r: r.output_sqnr_db if which == "output" else r.weight_sqnr_db)
    v = worst.output_sqnr_db if which == "output" else worst.weight_sqnr_db
    return lines + _wrap("worst", f"{worst.name}: {_db(v)} dB {which} SQNR", width)


def _size(before: dict | None, after: dict | None, width: int) -> list[str]:
    if after is None:
        return []
    if before is None:
        return _wrap("size", f"{fmt_bytes(after['total'])} (linear weights "
                             f"{fmt_bytes(after['linear'])})", width)
    ratio = before["total"] / after["total"] if after["total"] else math.inf
    dtype = f" {before['dtype']}" if before.get("dtype") else ""
    return (_wrap("size", f"{fmt_bytes(before['total'])}{dtype} → {fmt_bytes(after['total'])} "
                          f"({ratio:.2f}× smaller)", width)
            + _wrap("", f"linear weights {fmt_bytes(before['linear'])} → "
                        f"{fmt_bytes(after['linear'])}", width))


def summary_lines(report, before: dict | None = None, after: dict | None = None,
                  width: int = WIDTH) -> list[str]:
    """The summary of `report` as plain lines of at most `width` columns (a longer name stays
    whole). `before`/`after`: {"linear", "total"} byte counts of the float model (float_size,
    taken before the run: also its "dtype") and of the compiled one
    (CompiledDenoiser.weight_nbytes); no size line without `after`."""
    lines = _passes(report, width) + _coverage(report, width) + _sqnr_by_role(report, width)
    lines += _size(before, after, width)
    notes = sum(len(p.notes) for p in report.passes)
    if notes:
        lines += _wrap("notes", f"{notes} from the passes (--report full lists them)", width)
    return lines


def print_report(report, level: str = "summary", console=None, before: dict | None = None,
                 after: dict | None = None) -> None:
    """Print `report` at `level`: "summary" (summary_lines, at most 80 columns), "full" (every
    table, then the summary), "none" (nothing)."""
    if level not in LEVELS:
        raise ValueError(f"report level {level!r}: one of {', '.join(LEVELS)}")
    if level == "none":
        return
    from rich.console import Console
    console = console or Console()
    if level == "full":
        for t in report.rich_tables():
            console.print(t)
    for line in summary_lines(report, before, after, min(WIDTH, console.width)):
        console.print(line, markup=False, highlight=False, soft_wrap=True)

"""The run report: per pass time and nodes changed; per linear its specs and SQNR (weights, and
its output on the probe batch against the FP graph); the coverage table. Rich tables for
people, JSON for the manifest."""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field



@dataclass
class CoverageRow:
    name: str                   # module path (node target)
    role: str                   # linear / head
    status: str                 # "quantized" | "kept" | "uncovered"
    weight_spec: str | None
    act_spec: str | None
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


def name_column(table, header: str, names) -> None:
    """Add `table`'s column of names (linears, nodes): never wrapped, never cut, as wide as
    the longest name; the table's other columns wrap instead (add them with wrapping_column).
    A name is what a user greps for or copies into a recipe (issue 26: `blocks_0_…`)."""
    names = [str(n) for n in names]
    table.add_column(header, no_wrap=True, overflow="ignore",
                     min_width=max([len(header), *map(len, names)]))


def wrapping_column(table, header: str, **kw) -> None:
    """A column that gives way to the name column: folded onto more lines, never cut."""
    table.add_column(header, overflow="fold", **kw)


def coverage_table(rows: list[CoverageRow], title: str = "Coverage"):
    from rich.table import Table
    t = Table(title=f"{title}: {sum(r.status == 'quantized' for r in rows)} quantized, "
                    f"{sum(r.status == 'kept' for r in rows)} kept, "
                    f"{sum(r.status == 'uncovered' for r in rows)} uncovered of {len(rows)} linears")
    name_column(t, "linear", [r.name for r in rows])
    for col in ("role", "status", "weight", "act", "rule / reason"):
        wrapping_column(t, col)
    style = {"quantized": "green", "kept": "cyan", "uncovered": "bold red"}
    for r in rows:
        t.add_row(r.name, r.role or "", f"[{style[r.status]}]{r.status}[/]", r.weight_spec or "-",
                  r.act_spec or "-", r.reason)
    return t


@dataclass
class PassRecord:
    name: str
    repr: str
    seconds: float
    nodes_changed: list[str]
    metrics: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    verified_rel_change: float | None = None    # max relative logit change, exact passes only


@dataclass
class LinearRecord:
    name: str
    weight_spec: str | None
    act_spec: str | None
    weight_sqnr_db: float | None
    output_sqnr_db: float | None


def _finite(x):
    """JSON has no inf/nan: an exact weight (SQNR = inf) is written as null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def _db(x) -> str:
    if x is None:
        return "-"
    return "inf" if math.isinf(x) else f"{x:.1f}"


@dataclass
class Report:
    passes: list[PassRecord] = field(default_factory=list)
    linears: list[LinearRecord] = field(default_factory=list)
    coverage: list[CoverageRow] | None = None     # None: no quantizing pass, no requirement

    def to_dict(self, specs: bool = True) -> dict:
        """specs=False leaves out every linear's weight/act spec: a checkpoint stores those
        once, in its modules, and the loader puts them back (attach_specs)."""
        def rows(items):
            out = [asdict(r) for r in items]
            if not specs:
                for r in out:
                    r.pop("weight_spec"), r.pop("act_spec")
            return out
        return _finite({"passes": [asdict(p) for p in self.passes], "linears": rows(self.linears),
                        "coverage": None if self.coverage is None else rows(self.coverage)})

    def attach_specs(self, specs: dict[str, dict]) -> None:
        """Fill every row's specs from {linear name: {"weight", "act"}} (the modules' own)."""
        for r in list(self.linears) + list(self.coverage or []):
            if r.name in specs:
                r.weight_spec, r.act_spec = specs[r.name]["weight"], specs[r.name]["act"]

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=str)

    @classmethod
    def from_dict(cls, d: dict) -> "Report":
        """The report a manifest recorded (CheckpointError when it has the wrong shape: a
        checkpoint's report is read from a file a stranger may have written)."""
        from qpass.errors import CheckpointError
        from qpass.folders import Optional, check_shape
        no_specs = {"weight_spec": None, "act_spec": None}     # filled by attach_specs
        num = (float, type(None))
        check_shape(d, {"passes": Optional([{"name": str, "repr": str, "seconds": num,
                                             "nodes_changed": [str], "notes": Optional([str]),
                                             "metrics": Optional(dict),
                                             "verified_rel_change": Optional(num)}]),
                        "linears": Optional([{"name": str, "weight_sqnr_db": num,
                                              "output_sqnr_db": num}]),
                        "coverage": Optional(([{"name": str, "role": (str, type(None)),
                                                "status": str, "reason": str}], type(None)))},
                    "the manifest's report")
        try:
            cov = d.get("coverage")
            return cls([PassRecord(**p) for p in d.get("passes", [])],
                       [LinearRecord(**{**no_specs, **r}) for r in d.get("linears", [])],
                       None if cov is None else [CoverageRow(**{**no_specs, **r}) for r in cov])
        except (TypeError, AttributeError, ValueError) as e:
            raise CheckpointError(f"the manifest's report is malformed ({type(e).__name__}: "
                                  f"{str(e)[:120]!r}); the checkpoint was modified") from None

    def rich_tables(self) -> list:
        from rich.table import Table
        tables = []
        t = Table(title="Passes")
        for col in ("pass", "time (s)", "nodes changed", "verified Δ", "notes"):
            wrapping_column(t, col)
        for p in self.passes:
            notes = "; ".join(p.notes[:3]) + (f" (+{len(p.notes) - 3} more)" if len(p.notes) > 3 else "")
            t.add_row(p.repr, f"{p.seconds:.3f}", str(len(p.nodes_changed)),
                      "-" if p.verified_rel_change is None else f"{p.verified_rel_change:.1e}", notes)
        tables.append(t)
        if self.linears:
            t = Table(title="Linears (SQNR in dB: weights vs. before rounding, output vs. FP graph "
                            "on the probe batch)")
            name_column(t, "linear", [r.name for r in self.linears])
            for col in ("weight", "act", "weight SQNR", "output SQNR"):
                wrapping_column(t, col)
            for r in self.linears:
                t.add_row(r.name, r.weight_spec or "-", r.act_spec or "-", _db(r.weight_sqnr_db),
                          _db(r.output_sqnr_db))
            tables.append(t)
        if self.coverage is not None:
            tables.append(coverage_table(self.coverage))
        return tables

    def summary(self, before: dict | None = None, after: dict | None = None,
                width: int = 80) -> list[str]:
        """A few lines of at most `width` columns: pass times, coverage counts, SQNR by role,
        size before → after (qpass/runtime/report_summary.py)."""
        from .report_summary import summary_lines
        return summary_lines(self, before, after, width)

    def print(self, console=None, level: str = "full", before: dict | None = None,
              after: dict | None = None) -> None:
        """Print at `level`: "summary", "full" (every table, then the summary) or "none"."""
        from .report_summary import print_report
        print_report(self, level, console, before, after)

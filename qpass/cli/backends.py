"""`qpass backends`: which kernel backends exist here, whether they can run, and why not
(qpass.backends.available())."""
from __future__ import annotations

import argparse
import json


def add_backends_command(sub) -> None:
    p = sub.add_parser("backends", help="list kernel backends, whether they run here and why not",
                       epilog="example:\n  qpass backends --format json",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=cmd_backends)


def cmd_backends(args) -> int:
    """Print a rich table (or JSON with `--format json`); returns the exit code."""
    from qpass.backends import available
    rows = available()
    if args.format == "json":
        print(json.dumps(rows, indent=1))
        return 0
    from rich.console import Console
    from rich.table import Table
    table = Table(title="qpass kernel backends (highest priority first)")
    for col in ("backend", "priority", "available", "reason", "ops"):
        table.add_column(col)
    for r in rows:
        ok = "[green]yes[/green]" if r["available"] else "[red]no[/red]"
        table.add_row(r["name"], "" if r["priority"] is None else str(r["priority"]), ok,
                      r["reason"], ", ".join(r["ops"]))
    Console().print(table)
    return 0

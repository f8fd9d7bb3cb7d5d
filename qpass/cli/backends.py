"""`qpass backends`: which kernel backends exist here, whether they can run, and why not.

The lead wires `cmd_backends` into qpass/cli.py (the backends package never imports the CLI)."""
from __future__ import annotations

import json


def backend_rows() -> list[dict]:
    from qpass.backends import registry
    return registry.available()


def cmd_backends(args=None) -> int:
    """Print a rich table (or JSON with `args.format == "json"`); returns the exit code."""
    rows = backend_rows()
    if getattr(args, "format", None) == "json":
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

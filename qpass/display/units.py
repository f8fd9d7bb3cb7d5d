"""Sizes as qpass prints them: one convention, binary units (B, KiB, MiB, GiB, TiB: powers of
1024, as `ls -h`, `du -h` and nvidia-smi count), through one function. Every size a command,
error or report prints goes through fmt_bytes, so one byte count reads the same everywhere
(issue 26: "2.85 MiB" in one output and "2.99 MB" in another were the same file)."""
from __future__ import annotations

UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def fmt_bytes(n: float) -> str:
    """`n` bytes in the largest binary unit that keeps the number at least 1: "512 B",
    "2.85 MiB", "14.96 GiB" (two decimals above bytes)."""
    value, unit = float(n), UNITS[0]
    for unit in UNITS:
        if abs(value) < 1024 or unit == UNITS[-1]:
            break
        value /= 1024
    return f"{int(round(value))} B" if unit == "B" else f"{value:.2f} {unit}"

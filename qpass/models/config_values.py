"""A config value read as what it must be, safely for any JSON value: a size (an int, or an
integral float; never a bool or a string) or a finite number. Nothing is computed from a value
before its type and range are known, and an int too large for a float is an error, not an
OverflowError. The one ConfigError line names where, the field, the value and what to do."""
from __future__ import annotations

import math

from ..errors import ConfigError

MAX_FLOAT = 1e300                  # finite floats also stay finite after a few products
FIX_LIMIT = "fix the config (no released model comes near it); if a real model needs more, " \
            "raise the limit in qpass/models/config_limits.py"


def say(where: str, label: str, value, rule: str, todo: str = "fix the config") -> ConfigError:
    """One error line: where, the field, its value (shortened), the rule broken, what to do."""
    try:
        shown = repr(value)
    except ValueError:            # an int beyond Python's 4300-digit str limit
        shown = f"<an integer of {value.bit_length()} bits>"
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return ConfigError(f"{where}: {label} = {shown} {rule}; {todo}")


def as_size(value, label: str, where: str = "model config", lo: int = 1,
            hi: int | None = None) -> int:
    """`value` as an int in [lo, hi]: an int (not a bool) or an integral float; ConfigError
    naming `label` otherwise. Safe on any JSON value (no arithmetic before the range check)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    kind = {0: "a non-negative integer", 1: "a positive integer"}.get(lo, f"an integer >= {lo}")
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise say(where, label, value, f"must be {kind}")
    if hi is not None and value > hi:
        raise say(where, label, value, f"is above the limit {hi}", FIX_LIMIT)
    return int(value)


def as_number(value, label: str, where: str = "model config", above: float = 0.0,
              below: float = MAX_FLOAT) -> float:
    """`value` as a finite float in (above, below): an int or float, not a bool or a string;
    ConfigError naming `label` otherwise (also for ints too large for a float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise say(where, label, value, f"must be a number in ({above:g}, {below:g})")
    try:
        v = float(value)
    except OverflowError:
        v = math.inf
    if not math.isfinite(v) or not above < v < below:
        raise say(where, label, value, f"must be a finite number in ({above:g}, {below:g})")
    return v

"""Argument types the commands share: a bad value is argparse's one-line usage error (exit 2)
before anything loads."""
from __future__ import annotations

import argparse
import math

MAX_SEED = 2 ** 63 - 1      # torch.manual_seed's range


def _max_length() -> int:
    from qpass.models.config_limits import LIMITS
    return LIMITS["max_seq_len"]     # no model has more positions (config_limits says why)


def positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        v = 0
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}")
    return v


def length(s: str) -> int:
    """A sequence length (--seq-len, --gen-length, --steps, --block-length): a positive
    integer no model could exceed; the model's own max_seq_len is checked once it is loaded."""
    v = positive_int(s)
    if v > _max_length():
        raise argparse.ArgumentTypeError(f"{s} is beyond any model's positions (at most "
                                         f"{_max_length()})")
    return v


def seed(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {s!r}") from None
    if not 0 <= v <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"seed must be in [0, 2**63 - 1], got {s}")
    return v


def nonneg_float(s: str) -> float:
    try:
        v = float(s)
    except ValueError:
        v = math.nan
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {s!r}")
    return v


def weight_bits(s: str) -> int:
    v = _int(s)
    if v is None or not 1 <= v <= 8:
        raise argparse.ArgumentTypeError(f"expected weight bits from 1 to 8, got {s!r}")
    return v


def group_size(s: str) -> int:
    """A weight group size, or -1: one scale per output channel (GPTQModel's group_size=-1)."""
    v = _int(s)
    if v is None or v == 0 or v < -1:
        raise argparse.ArgumentTypeError(f"expected a positive group size, or -1 for one scale "
                                         f"per output channel, got {s!r}")
    return v


def _int(s: str) -> int | None:
    try:
        return int(s)
    except ValueError:
        return None

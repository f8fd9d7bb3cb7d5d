"""AUP, accuracy under parallelism (d3LLM, Qian et al., ICML 2026): one number for a decoder's
accuracy-parallelism curve, as its leaderboard's aup_utils.py computes it.

Points (ρ_i, y_i): tokens per forward and accuracy in percent, sorted by ρ. Points more than
`floor` (5) points below y_1 (the accuracy at the least parallel setting) are dropped. Each
accuracy is weighted by W(y) = min(exp(−α(1 − y / y_max)), 1) (α = 3; y_max: the best
accuracy of all methods compared, so a method far below the best gains little from speed):

    AUP = ρ_1 · y_1 + Σ_{i ≥ 2} (ρ_i − ρ_{i−1}) · (y_i W(y_i) + y_{i−1} W(y_{i−1})) / 2

i.e. the rectangle up to the first point and the trapezoidal area of the weighted curve after
it. A decoder that never goes beyond one token per forward scores ρ_1 · y_1 = y_1."""
from __future__ import annotations

import math

from ..errors import QpassError

ALPHA = 3.0
FLOOR = 5.0


def weight(y: float, y_max: float, alpha: float = ALPHA) -> float:
    return min(math.exp(-alpha * (1.0 - y / y_max)), 1.0)


def aup(rho, y, y_max: float, alpha: float = ALPHA, floor: float = FLOOR) -> float:
    """AUP of the (ρ, y) pairs, y in percent (0-100)."""
    pts = sorted(zip((float(r) for r in rho), (float(a) for a in y)))
    if not pts or any(r <= 0 for r, _ in pts):
        raise QpassError("AUP needs at least one (tokens per forward > 0, accuracy) pair")
    if y_max <= 0:
        return 0.0
    y1 = pts[0][1]
    pts = [(r, a) for r, a in pts if a >= y1 - floor]
    total = pts[0][0] * pts[0][1]
    for (r0, a0), (r1, a1) in zip(pts, pts[1:]):
        total += (r1 - r0) * (a1 * weight(a1, y_max, alpha) + a0 * weight(a0, y_max, alpha)) / 2
    return total

"""Paired tests between two study rows scored on the same items.

Two models evaluated on the same chunks / problems / cloze items differ item by item far less
than their separate intervals suggest, so a gap of a fraction of a percent can be real (or a
larger one noise). Each row's per-item record (qpass.eval tasks with items=True) holds
`values` (and, for ratio metrics such as bits per byte, `weights`: the metric is
Σ values / Σ weights; else the mean of values) under `ids` that must match between rows.

- `bootstrap_diff`: percentile interval of stat(A) − stat(B) over item resamples drawn with
  replacement, the same indices for both rows (the pairing);
- `sign_test`: exact two-sided sign test on the items where the rows differ; on 0/1
  correctness it is McNemar's exact test (only discordant items count);
- `compare`: both, and a verdict ("better", "worse", "tie") from McNemar for correctness and
  the bootstrap interval otherwise: significance, never size."""
from __future__ import annotations

import math

import numpy as np

from ..errors import QpassError

LEVEL = 0.95
N_BOOT = 2000


def _arrays(a: dict, b: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if a.get("ids") != b.get("ids"):
        raise QpassError("paired test: the two rows were not scored on the same items (their "
                         "item ids differ); compare rows of one task with the same settings")
    va = np.asarray(a["values"], dtype=np.float64)
    vb = np.asarray(b["values"], dtype=np.float64)
    w = np.asarray(a.get("weights") or [1.0] * len(va), dtype=np.float64)
    if len(va) != len(vb) or len(w) != len(va) or not len(va):
        raise QpassError("paired test: both rows need the same non-zero number of items")
    return va, vb, w


def statistic(values, weights=None) -> float:
    """Σ values / Σ weights (weights None: the mean)."""
    v = np.asarray(values, dtype=np.float64)
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=np.float64)
    return float(v.sum() / w.sum())


def bootstrap_diff(a: dict, b: dict, n_boot: int = N_BOOT, level: float = LEVEL,
                   seed: int = 0) -> dict:
    """stat(A) − stat(B) with its paired percentile bootstrap interval."""
    va, vb, w = _arrays(a, b)
    n = len(va)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    ws = w[idx].sum(axis=1)
    diffs = (va[idx].sum(axis=1) - vb[idx].sum(axis=1)) / ws
    lo, hi = np.quantile(diffs, [(1 - level) / 2, (1 + level) / 2])
    return {"diff": float((va.sum() - vb.sum()) / w.sum()), "lo": float(lo), "hi": float(hi),
            "level": level, "n": n}


def binom_two_sided(k: int, n: int) -> float:
    """Exact two-sided p of k successes in n fair coin flips: 2·P(X ≤ min(k, n − k)), capped."""
    if n == 0:
        return 1.0
    m = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(m + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def sign_test(a: dict, b: dict) -> dict:
    """Exact sign test on the per-item differences (ties dropped): McNemar's exact test when
    the values are 0/1 correctness. For ratio metrics the per-item value is values/weights."""
    va, vb, w = _arrays(a, b)
    d = va / w - vb / w
    pos, neg = int((d > 0).sum()), int((d < 0).sum())
    return {"a_higher": pos, "b_higher": neg, "p": binom_two_sided(pos, pos + neg)}


def compare(a: dict, b: dict, higher_is_better: bool, alpha: float = 1 - LEVEL,
            seed: int = 0) -> dict:
    """A against B: the difference with its paired bootstrap interval and the exact sign test.
    What decides: McNemar's exact test for 0/1 correctness (no weights), the bootstrap interval
    (excluding 0) otherwise. verdict for A: "better" / "worse" when significant, else "tie"."""
    boot = bootstrap_diff(a, b, level=1 - alpha, seed=seed)
    sign = sign_test(a, b)
    binary = not a.get("weights") and set(a["values"]) | set(b["values"]) <= {0, 1}
    if binary:
        test, significant = "mcnemar-exact", sign["p"] < alpha
    else:
        test, significant = "paired-bootstrap", boot["lo"] > 0 or boot["hi"] < 0
    up = boot["diff"] > 0
    verdict = "tie" if not significant or boot["diff"] == 0 else \
        ("better" if up == higher_is_better else "worse")
    return {**boot, **sign, "test": test, "significant": bool(significant), "verdict": verdict}

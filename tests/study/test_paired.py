"""qpass.study.paired against brute force: the exact sign test / McNemar against enumerating
every sign assignment, the paired bootstrap against the exact bootstrap distribution (every
one of the n^n resamples of a small set), and the verdicts on clear and null cases."""
import itertools
import random

import numpy as np
import pytest

from qpass.errors import QpassError
from qpass.study import paired


def _brute_sign_p(diffs):
    """P(a statistic as far from m/2 as observed) over all 2^m sign assignments of the
    non-zero differences (the null: each sign equally likely)."""
    nz = [d for d in diffs if d != 0]
    m = len(nz)
    obs = abs(sum(d > 0 for d in nz) - m / 2)
    hits = sum(abs(sum(s) - m / 2) >= obs - 1e-12 for s in itertools.product((0, 1), repeat=m))
    return hits / 2 ** m if m else 1.0


@pytest.mark.parametrize("seed", range(6))
def test_sign_test_is_the_exact_enumeration(seed):
    rng = random.Random(seed)
    n = rng.randint(3, 12)
    a = [rng.choice([0.0, 1.0, 2.5, 3.0]) for _ in range(n)]
    b = [rng.choice([0.0, 1.0, 2.5]) for _ in range(n)]
    ids = list(range(n))
    got = paired.sign_test({"ids": ids, "values": a}, {"ids": ids, "values": b})
    assert got["p"] == pytest.approx(_brute_sign_p([x - y for x, y in zip(a, b)]), abs=1e-12)
    assert got["a_higher"] == sum(x > y for x, y in zip(a, b))


def test_mcnemar_counts_only_discordant_items():
    # 7 items A right / B wrong, 1 the other way, and any number of concordant ones
    a, b = [1] * 7 + [0], [0] * 7 + [1]
    p = paired.sign_test({"ids": None, "values": a}, {"ids": None, "values": b})["p"]
    assert p == pytest.approx(2 * (1 + 8) / 256)            # 2·P(X ≤ 1), X ~ Bin(8, 1/2)
    more = paired.sign_test({"ids": None, "values": a + [1] * 40 + [0] * 9},
                            {"ids": None, "values": b + [1] * 40 + [0] * 9})["p"]
    assert more == p


def _exact_bootstrap(va, vb, w):
    n = len(va)
    diffs = [(sum(va[i] for i in idx) - sum(vb[i] for i in idx)) / sum(w[i] for i in idx)
             for idx in itertools.product(range(n), repeat=n)]
    return np.array(diffs)


def test_bootstrap_interval_matches_the_exact_bootstrap_distribution():
    rng = np.random.default_rng(3)
    va, vb = rng.normal(3.0, 1.0, 5), rng.normal(2.6, 1.0, 5)
    w = rng.integers(50, 130, 5).astype(float)
    a = {"ids": list("abcde"), "values": va.tolist(), "weights": w.tolist()}
    b = {"ids": list("abcde"), "values": vb.tolist(), "weights": w.tolist()}
    got = paired.bootstrap_diff(a, b, n_boot=40000, seed=1)
    exact = _exact_bootstrap(va, vb, w)
    lo, hi = np.quantile(exact, [0.025, 0.975])
    spread = exact.max() - exact.min()
    assert got["lo"] == pytest.approx(lo, abs=0.02 * spread)
    assert got["hi"] == pytest.approx(hi, abs=0.02 * spread)
    assert got["diff"] == pytest.approx((va.sum() - vb.sum()) / w.sum(), rel=1e-12)
    assert paired.statistic(va, w) - paired.statistic(vb, w) == pytest.approx(got["diff"])


def test_verdicts_are_significance_not_size():
    ids = list(range(60))
    fp = {"ids": ids, "values": [1] * 60}
    worse = {"ids": ids, "values": [0] * 12 + [1] * 48}
    assert paired.compare(worse, fp, higher_is_better=True)["verdict"] == "worse"
    assert paired.compare(fp, worse, higher_is_better=True)["verdict"] == "better"
    # a 3-point gap from 2 of 60 discordant items: not significant
    close = {"ids": ids, "values": [0] * 2 + [1] * 58}
    c = paired.compare(close, fp, higher_is_better=True)
    assert c["verdict"] == "tie" and c["test"] == "mcnemar-exact" and c["p"] == 0.5
    # continuous (bits per byte, lower is better): the interval decides
    rng = np.random.default_rng(0)
    base = rng.normal(300, 40, 40)
    a = {"ids": ids[:40], "values": (base + 3).tolist(), "weights": [128] * 40}
    b = {"ids": ids[:40], "values": base.tolist(), "weights": [128] * 40}
    r = paired.compare(a, b, higher_is_better=False)
    assert r["test"] == "paired-bootstrap" and r["verdict"] == "worse" and r["lo"] > 0


def test_rows_on_different_items_are_refused():
    with pytest.raises(QpassError, match="same items"):
        paired.compare({"ids": [1, 2], "values": [1, 0]}, {"ids": [1, 3], "values": [1, 1]}, True)

"""The finding-by-finding checks on synthetic study rows: verdicts follow the paired tests
(agrees / disagrees / not resolved), missing pipelines say so, and Spearman's rank correlation
matches a hand computation."""
import pytest

from qpass.study import claims, study_data


def _row(pipe, values, task="math"):
    return {"model": "m", "pipeline": pipe, "method": pipe, "format": "int", "w_bits": 4,
            "a_bits": 4, "seed": 0, "task": task, "category": task, "cached": True,
            "exact_match": sum(values) / len(values), "n": len(values),
            "items": {"exact_match": {"ids": list(range(len(values))), "values": values}}}


def _verdicts(rows):
    return {f["claim"]: f for f in claims.findings(study_data(rows, "t"))}


def test_verdicts_follow_the_paired_tests():
    fp = [1] * 40
    rows = [_row("fp", fp), _row("w4a4-rtn", [0] * 15 + [1] * 25),
            _row("w4a4-smoothquant", [0] * 14 + [1] * 26), _row("w4a4-quarot", [0] * 1 + [1] * 39),
            _row("w4a16-gptq", [0] * 1 + [1] * 39)]
    v = _verdicts(rows)
    assert v["at W4A4 without rotation the loss is large"]["verdict"] == "agrees"
    assert v["rotation (QuaRot) beats SmoothQuant at W4A4"]["verdict"] == "agrees"
    # a size claim: one item of 40 lost (2.5%) has an interval reaching past 4%: unresolved
    assert v["4-bit weight-only GPTQ is safe (< 4% loss)"]["verdict"] == "not resolved"
    for values, verdict in (([1] * 40, "agrees"), ([0] * 20 + [1] * 20, "disagrees")):
        rows[4] = _row("w4a16-gptq", values)
        assert _verdicts(rows)["4-bit weight-only GPTQ is safe (< 4% loss)"]["verdict"] == verdict
    assert v["rotation (DuQuant) beats round-to-nearest at W4A4"]["verdict"] == "not testable here"
    assert "w4a4-duquant" in v["rotation (DuQuant) beats round-to-nearest at W4A4"]["measured"]
    # the other way round: QuaRot significantly worse than SmoothQuant
    rows[3] = _row("w4a4-quarot", [0] * 30 + [1] * 10)
    assert _verdicts(rows)["rotation (QuaRot) beats SmoothQuant at W4A4"]["verdict"] == "disagrees"
    # a gap of one item either way is a paired tie: not resolved
    rows[3] = _row("w4a4-quarot", [0] * 13 + [1] * 27)
    assert _verdicts(rows)["rotation (QuaRot) beats SmoothQuant at W4A4"]["verdict"] == \
        "not resolved"


def test_spearman_by_hand():
    # ranks x: 0,1,2,3; y: 1,0,3,2 -> d² = 1+1+1+1 = 4; ρ = 1 − 6·4/(4·15) = 0.6
    assert claims.spearman([1, 2, 3, 4], [20, 10, 40, 30]) == pytest.approx(0.6)
    assert claims.spearman([1, 2], [2, 1]) is None

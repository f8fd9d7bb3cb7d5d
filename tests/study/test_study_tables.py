"""scripts/study_tables.py: the Wilson interval against a brute-force inversion of the score
test, and the per-model table read from study rows (values and FP-relative changes)."""
import importlib.util
import math
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "study_tables", Path(__file__).resolve().parents[2] / "scripts" / "study_tables.py")
st = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(st)


@pytest.mark.parametrize("k,n", [(0, 40), (3, 40), (26, 40), (40, 40), (93, 100), (1, 7)])
def test_wilson_is_the_set_the_score_test_does_not_reject(k, n):
    p = k / n
    inside = [i / 100000 for i in range(100001)
              if abs(p - i / 100000) <= st.Z95 * math.sqrt(i / 100000 * (1 - i / 100000) / n)]
    lo, hi = st.wilson(p, n)
    assert lo == pytest.approx(inside[0], abs=2e-5) and hi == pytest.approx(inside[-1], abs=2e-5)


def _row(pipe, task, **m):
    return {"model": "m", "pipeline": pipe, "seed": 0, "task": task, "quantize_seconds": 1.5, **m}


def test_table_reads_every_number_from_the_rows():
    rows = []
    for pipe, bpb, acc, em in (("fp", 2.0, 0.5, 0.9), ("w4a4-rtn", 2.2, 0.25, 0.45)):
        rows += [_row(pipe, "general", bits_per_byte=bpb, cloze_acc=acc, cloze_n=80),
                 _row(pipe, "math", exact_match=em, n=100),
                 _row(pipe, "code", bits_per_byte=bpb / 2)]
    text = st.tables(rows)
    fp_line, q_line = [ln for ln in text.splitlines() if ln.startswith(("| fp", "| w4a4"))]
    lo, hi = st.wilson(0.45, 100)
    assert q_line.split(" | ")[1:3] == ["2.200", "+10.0%"]
    assert f"0.450 [{lo:.2f}, {hi:.2f}]" in q_line and q_line.endswith("| 1.5 |")
    assert fp_line.endswith("| – |") and "**m**" in text

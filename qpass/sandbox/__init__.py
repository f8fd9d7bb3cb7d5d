"""The OS-isolated runner for generated code (DESIGN §1, §8): a candidate program runs under
bubblewrap (new namespaces, a read-only filesystem of /usr, one size-limited tmpfs as its only
writable place — the disk quota —, no network), and its unit tests run in a second sandboxed
interpreter that holds no candidate code and decides the verdict: each call of the program's
functions is a round trip that brings back plain builtin data only (runner's module doc has
the threat model). One process-count and memory limit binds both process trees (cgroup, else
rlimits), and a timeout kills both PID namespaces.

    passed, reason = qpass.sandbox.run_candidate(program, tests, timeout=5.0, disk_mb=64)

runner.py starts the two sandboxes, harness.py is the code that runs inside them (and the
wire between them), tree_limits.py the cgroup/rlimit limits, cleanup.py removes a temp tree a
hostile program shaped (the unsafe fallback's; the sandbox's tmpfs vanishes by itself). It
sits beside runtime/ and calibration/ and imports nothing but qpass.errors; the code tasks of
qpass.eval (humaneval, the code category) call it."""
from .cleanup import remove_tree
from .harness import SENTINEL
from .runner import isolation_problem, run_candidate
from .tree_limits import TreeLimits

__all__ = ["run_candidate", "isolation_problem", "TreeLimits", "SENTINEL", "remove_tree"]

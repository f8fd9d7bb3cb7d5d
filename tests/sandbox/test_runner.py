"""The sandboxed candidate runner (qpass.sandbox): correct passes; wrong, looping and networking
candidates fail."""
import time

import pytest

from qpass.sandbox import run_candidate

PROGRAM = "def add(a, b):\n    return a + b\n"
TEST = "assert add(2, 3) == 5\nassert add(-1, 1) == 0\n"


def test_correct_candidate_passes():
    assert run_candidate(PROGRAM, TEST) == (True, "passed")


def test_wrong_candidate_fails_with_reason():
    ok, reason = run_candidate("def add(a, b):\n    return a - b\n", TEST)
    assert not ok and "AssertionError" in reason


def test_syntax_error_fails():
    ok, reason = run_candidate("def add(a, b)\n    return a + b\n", TEST)
    assert not ok and "SyntaxError" in reason


def test_infinite_loop_is_killed():
    start = time.monotonic()
    ok, reason = run_candidate("def add(a, b):\n    while True:\n        pass\n", TEST, timeout=1.0)
    assert not ok and "timeout" in reason
    assert time.monotonic() - start < 5


def test_socket_connection_is_blocked():
    program = PROGRAM + "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)\n"
    ok, reason = run_candidate(program, TEST)
    assert not ok and ("Connection refused" in reason or "unreachable" in reason)


def test_urllib_is_blocked():
    program = PROGRAM + "import urllib.request\nurllib.request.urlopen('http://127.0.0.1:9/', timeout=1)\n"
    ok, reason = run_candidate(program, TEST)
    assert not ok and "urlopen error" in reason


def test_unsafe_fallback_blocks_sockets(monkeypatch):
    import qpass.sandbox.runner as ce
    monkeypatch.setattr(ce, "isolation_problem", lambda: "no bwrap (simulated)")
    program = PROGRAM + "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)\n"
    ok, reason = run_candidate(program, TEST, unsafe=True)
    assert not ok and "network access is disabled" in reason


def test_memory_limit():
    ok, reason = run_candidate("x = bytearray(4 << 30)\n", "", memory_mb=256)
    assert not ok and "MemoryError" in reason

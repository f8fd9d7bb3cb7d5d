"""Run a generated program against its unit tests in a contained subprocess.

Containment, not a security boundary: the child is `python -I` (no user site, no PYTHON*
variables) in a fresh temporary directory with a minimal environment; before the candidate runs
it replaces the socket entry points with functions that raise, and sets resource limits on
address space, CPU time, file size and core dumps. The parent enforces a wall-clock timeout by
killing the child's whole process group (the child starts its own session), so a candidate that
forks or loops forever cannot outlive it. Any failure - exception, non-zero exit, signal,
timeout - scores False with a short reason."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

# Runs inside the child. argv: program path, test path, memory bytes, cpu seconds, file bytes.
_CHILD = r'''
import resource, sys
_prog, _test, _mem, _cpu, _fsize = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
for _lim, _val in ((resource.RLIMIT_AS, _mem), (resource.RLIMIT_CPU, _cpu),
                   (resource.RLIMIT_FSIZE, _fsize), (resource.RLIMIT_CORE, 0)):
    try:
        resource.setrlimit(_lim, (_val, _val))
    except (ValueError, OSError):
        pass

def _no_network(*args, **kwargs):
    raise OSError("network access is disabled while running candidates")

import socket, _socket
for _mod in (socket, _socket):
    # Classes, not functions, stand in for the socket types: modules such as ssl subclass
    # socket.socket at import time, which must keep working; creating one must not.
    _blocked = type("socket", (_mod.socket,), {"__init__": _no_network, "__new__": _no_network})
    _mod.socket = _blocked
    for _name in ("create_connection", "create_server", "getaddrinfo", "gethostbyname",
                  "gethostbyname_ex", "gethostbyaddr", "socketpair", "fromfd"):
        if hasattr(_mod, _name):
            setattr(_mod, _name, _no_network)
del _mod, _name, _lim, _val, _blocked

with open(_prog) as _f:
    _src = _f.read()
with open(_test) as _f:
    _src += "\n\n" + _f.read()
_ns = {"__name__": "__main__", "__builtins__": __builtins__}
exec(compile(_src, "<candidate>", "exec"), _ns)
'''


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def run_candidate(program: str, test: str, timeout: float = 5.0, memory_mb: int = 1024,
                  max_output_mb: int = 16) -> tuple[bool, str]:
    """(passed, reason): run `program` followed by `test` (asserts) in a subprocess.

    passed is True only for a clean exit within `timeout` seconds; reason is "passed",
    "timeout after Ns", "killed by signal SIG..." or the last line of the error
    (e.g. "AssertionError" or "OSError: network access is disabled ...")."""
    with tempfile.TemporaryDirectory(prefix="qpass-cand-") as tmp:
        prog, tst = Path(tmp, "program.py"), Path(tmp, "test.py")
        prog.write_text(program)
        tst.write_text(test)
        out_path, err_path = Path(tmp, "stdout"), Path(tmp, "stderr")
        cpu = int(timeout) + 2  # the wall clock normally fires first; this catches the rest
        argv = [sys.executable, "-I", "-c", _CHILD, str(prog), str(tst),
                str(memory_mb << 20), str(cpu), str(max_output_mb << 20)]
        env = {"PATH": os.defpath, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
               "PYTHONDONTWRITEBYTECODE": "1"}
        # Output goes to files (capped by RLIMIT_FSIZE) so a chatty candidate cannot fill memory.
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(argv, cwd=tmp, env=env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=err, start_new_session=True)
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                return False, f"timeout after {timeout:g}s"
            finally:
                _kill_group(proc)  # children left behind by a candidate that exited
        if code == 0:
            return True, "passed"
        if code < 0:
            return False, f"killed by signal {signal.Signals(-code).name}"
        with open(err_path, "rb") as fh:
            fh.seek(max(0, err_path.stat().st_size - 8192))
            reason = _last_line(fh.read().decode("utf-8", errors="replace"))
        return False, reason or f"exit code {code}"


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass

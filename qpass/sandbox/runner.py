"""Run a generated program against its unit tests in an OS-isolated sandbox (DESIGN §8).

The sandbox is bubblewrap (`bwrap`, Debian/Ubuntu package `bubblewrap`; `make` installs it):
new user, network, PID, mount, IPC and UTS namespaces; a filesystem that holds only /usr (read
only; /bin, /lib, /lib64 as its links), a fresh /proc of the new PID namespace, a minimal /dev
and the candidate's temp dir (the only writable place) — no /etc, /home, /tmp or the caller's
files; an empty environment but PATH, LANG, HOME; no capabilities. Run as root, the sandbox
drops to the `nobody` uid first where nobody can read the interpreter. The whole tree
shares one process-count limit (RLIMIT_NPROC) and, where a memory cgroup can be created, one
memory limit (otherwise each process is capped at `memory_mb` and the tree at max_procs times
that); CPU time, file size and core dumps are capped per process. At the timeout the bwrap
process is SIGKILLed: the PID namespace's init dies with it and the kernel kills everything
in the namespace, so a forked, setsid'ed grandchild cannot outlive it.

A pass needs a clean exit AND a sentinel: a random token the harness writes (last, before
`os._exit`) only after the program and its tests ran to their end, so sys.exit(0), os._exit(0)
or a SystemExit before the tests score as failures. The token reaches the harness on stdin and
lives only in its memory: a program that deliberately introspects the harness can forge it
(that program is still contained); an honest or merely wrong program cannot pass by exiting.

Where no isolation is possible (no bwrap, namespaces forbidden) run_candidate refuses with a
clear message unless the caller passes unsafe=True (`qpass eval --unsafe-code-exec`), which runs
the old in-process containment: rlimits and a blocked socket module, not a security boundary."""
from __future__ import annotations

import functools
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from qpass.errors import QpassError
from qpass.sandbox.tree_limits import TreeLimits

SENTINEL = "QPASS-TESTS-REACHED-END "
SANDBOX_DIR = "/sandbox"

# Runs inside the sandbox. argv: program path, test path. stdin: the sentinel token.
_HARNESS = r'''
import os, sys
def _harness(tok, write=os.write, exit_=os._exit, flush=sys.stdout.flush):
    with open(sys.argv[1]) as f:
        src = f.read()
    with open(sys.argv[2]) as f:
        src += "\n\n" + f.read()
    ns = {"__name__": "__main__", "__builtins__": __builtins__}
    exec(compile(src, "<candidate>", "exec"), ns)
    flush()
    write(1, ("\n''' + SENTINEL + r'''" + tok + "\n").encode())
    exit_(0)
_t = sys.stdin.readline().strip()
sys.stdin.close()
_harness(_t)
'''

# The unsafe fallback's child (explicit --unsafe-code-exec only): rlimits and blocked sockets.
_UNSAFE_PRELUDE = r'''
import resource, socket, _socket
_mem, _cpu, _fsize = map(int, sys.argv[3:6])
for _lim, _val in ((resource.RLIMIT_AS, _mem), (resource.RLIMIT_CPU, _cpu),
                   (resource.RLIMIT_FSIZE, _fsize), (resource.RLIMIT_CORE, 0)):
    try:
        resource.setrlimit(_lim, (_val, _val))
    except (ValueError, OSError):
        pass
def _no_network(*args, **kwargs):
    raise OSError("network access is disabled while running candidates")
for _mod in (socket, _socket):
    _mod.socket = type("socket", (_mod.socket,), {"__init__": _no_network, "__new__": _no_network})
    for _name in ("create_connection", "create_server", "getaddrinfo", "socketpair", "fromfd"):
        if hasattr(_mod, _name):
            setattr(_mod, _name, _no_network)
'''


def _python() -> str:
    """The real interpreter binary (a venv's python is a link to it)."""
    return os.path.realpath(getattr(sys, "_base_executable", None) or sys.executable)


def _bwrap_argv(tmp: str) -> list[str]:
    argv = [shutil.which("bwrap") or "bwrap", "--unshare-all", "--die-with-parent",
            "--new-session", "--cap-drop", "ALL", "--clearenv",
            "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "LANG", "C.UTF-8",
            "--setenv", "HOME", SANDBOX_DIR, "--setenv", "PYTHONDONTWRITEBYTECODE", "1",
            "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/lib", "/lib64", "/lib32", "/sbin"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    prefix = os.path.realpath(sys.base_prefix)
    if not prefix.startswith("/usr"):                      # a Python installed elsewhere
        argv += ["--ro-bind", prefix, prefix]
    return argv + ["--proc", "/proc", "--dev", "/dev", "--bind", tmp, SANDBOX_DIR,
                   "--chdir", SANDBOX_DIR]


def _others_can_read(path: str) -> bool:
    p = Path(path)
    for d in [p] + list(p.parents):
        try:
            if not os.stat(d).st_mode & 0o005 == 0o005:
                return False
        except OSError:
            return False
    return True


def _sandbox_uid() -> int | None:
    """Root drops to `nobody` (so that even the kernel's per-user limits apply and the
    sandbox's uid owns nothing on the host) when nobody can read the interpreter; otherwise
    the sandbox keeps uid 0 without capabilities, bound by the pids cgroup."""
    if os.geteuid() != 0 or not _others_can_read(os.path.realpath(sys.base_prefix)):
        return None
    try:
        return pwd.getpwnam("nobody").pw_uid
    except KeyError:
        return 65534


@functools.lru_cache(maxsize=1)
def _probe() -> str | None:
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    with tempfile.TemporaryDirectory(prefix="qpass-probe-") as tmp:
        uid = _sandbox_uid()
        if uid is not None:
            os.chown(tmp, uid, uid)
        try:
            r = subprocess.run(_bwrap_argv(tmp) + [_python(), "-I", "-c", "pass"],
                               capture_output=True, timeout=30, preexec_fn=_drop(uid))
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"bwrap could not start: {e}"
    if r.returncode != 0:
        last = r.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
        return f"bwrap cannot create namespaces here: {last[0]}"
    return None


def isolation_problem() -> str | None:
    """None when the sandbox can run here; otherwise why not, in one line."""
    return _probe()


def _drop(uid):
    def pre():
        if uid is not None:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
    return pre


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def run_candidate(program: str, test: str, timeout: float = 5.0, memory_mb: int = 1024,
                  max_output_mb: int = 16, max_procs: int = 64,
                  unsafe: bool = False) -> tuple[bool, str]:
    """(passed, reason): run `program` followed by `test` (asserts) in the sandbox.

    passed is True only for a clean exit within `timeout` seconds after the tests' end;
    reason is "passed", "timeout after Ns", "killed by signal SIG...", "exited before the
    tests finished (no sentinel)" or the last line of the error (e.g. "AssertionError").
    Raises QpassError where no sandbox can run, unless `unsafe` (see the module doc)."""
    problem = isolation_problem()
    if problem is not None and not unsafe:
        raise QpassError(f"refusing to run generated code without isolation: {problem}; install "
                         f"bubblewrap, or pass --unsafe-code-exec (unsafe=True) to run it "
                         f"unisolated at your own risk")
    with tempfile.TemporaryDirectory(prefix="qpass-cand-") as tmp:
        uid = None if problem is not None else _sandbox_uid()
        Path(tmp, "program.py").write_text(program)
        Path(tmp, "test.py").write_text(test)
        if uid is not None:
            for p in (tmp, Path(tmp, "program.py"), Path(tmp, "test.py")):
                os.chown(p, uid, uid)
        token = secrets.token_hex(16)
        if problem is None:
            argv = _bwrap_argv(tmp) + [_python(), "-I", "-S", "-c", _HARNESS,
                                       f"{SANDBOX_DIR}/program.py", f"{SANDBOX_DIR}/test.py"]
            cwd = None
        else:
            argv = [sys.executable, "-I", "-c", "import sys\n" + _UNSAFE_PRELUDE + _HARNESS,
                    str(Path(tmp, "program.py")), str(Path(tmp, "test.py")),
                    str(memory_mb << 20), str(int(timeout) + 2), str(max_output_mb << 20)]
            cwd = tmp
        limits = TreeLimits(memory_mb << 20, max_procs, cpu_s=int(timeout) + 2,
                            file_bytes=max_output_mb << 20, uid=uid)
        # outside the writable dir, so the candidate cannot rewrite its own verdict by path
        out_path, err_path = (Path(tmp).parent / f"{Path(tmp).name}.{s}" for s in ("out", "err"))
        try:
            with limits, open(out_path, "wb") as out, open(err_path, "wb") as err:
                code = _run(argv, cwd, token, out, err, timeout, limits, uid)
            return _verdict(code, token, out_path, err_path, timeout, limits)
        finally:
            for p in (out_path, err_path):
                p.unlink(missing_ok=True)


def _run(argv, cwd, token, out, err, timeout, limits, uid) -> int | None:
    env = {"PATH": os.defpath, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
           "PYTHONDONTWRITEBYTECODE": "1"}

    def pre():
        limits.enter_child()           # join the cgroup and set rlimits (still as root)
        _drop(uid)()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=out,
                            stderr=err, start_new_session=True, preexec_fn=pre)
    try:
        proc.stdin.write((token + "\n").encode())
        proc.stdin.close()
    except OSError:
        pass
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None
    finally:
        _kill(proc)
        limits.kill_all()


def _verdict(code, token, out_path, err_path, timeout, limits) -> tuple[bool, str]:
    if code is None:
        return False, f"timeout after {timeout:g}s"
    if code < 0:
        return False, f"killed by signal {signal.Signals(-code).name}"
    if code == 0:
        with open(out_path, "rb") as fh:
            fh.seek(max(0, out_path.stat().st_size - 256))
            tail = fh.read().decode("utf-8", errors="replace")
        if tail.endswith(f"\n{SENTINEL}{token}\n"):
            return True, "passed"
        return False, "exited before the tests finished (no sentinel)"
    with open(err_path, "rb") as fh:
        fh.seek(max(0, err_path.stat().st_size - 8192))
        reason = _last_line(fh.read().decode("utf-8", errors="replace"))
    if code == 137 or (limits.memory_exceeded() and not reason):
        reason = reason or "killed (memory limit)"
    return False, reason or f"exit code {code}"


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL bwrap (its PID namespace dies with its init) and the process group."""
    for fn in (lambda: os.killpg(proc.pid, signal.SIGKILL), proc.kill):
        try:
            fn()
        except (ProcessLookupError, PermissionError, OSError):
            pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass

"""Run a generated program against its unit tests in an OS-isolated sandbox (DESIGN §8).

Two interpreters, each under bubblewrap (`bwrap` ≥ 0.7 for `--size`; Debian/Ubuntu package
`bubblewrap`; `make` installs it), joined only by two pipes (qpass.sandbox.harness):

- the candidate's: runs the program, then answers calls of its functions;
- the checker's: holds the tests and no candidate code; it runs the tests, each call of a
  program's function being a round trip that brings back plain builtin data only, and writes
  the verdict — a random token after the tests' end — to its own stdout, read by this process.

Each sandbox: new user, network, PID, mount, IPC and UTS namespaces; a read-only filesystem of
/usr (/bin, /lib, /lib64 as its links), a fresh /proc of its PID namespace, a read-only minimal
/dev, and one writable place, /sandbox: a tmpfs of `disk_mb` (default 64 MiB) — the disk quota:
a write past it is ENOSPC inside, and nothing the candidate writes ever reaches the host's disk
(tmpfs pages are charged to the memory limit too); it vanishes with the mount namespace, so
there is no tree on the host to clean. No /etc, /home, /tmp or the caller's files; an empty
environment but PATH, LANG, HOME, TMPDIR; no capabilities. Run as root, the sandbox drops to
the `nobody` uid first where nobody can read the interpreter. Both trees share one
process-count limit (a pids cgroup, else RLIMIT_NPROC) and, where a memory cgroup can be
created, one memory limit (otherwise each process is capped at `memory_mb`); CPU time, file size and core dumps are
capped per process. At the timeout both bwrap processes are SIGKILLed: a PID namespace's init
dies with them and the kernel kills everything in it, so a forked, setsid'ed grandchild
cannot outlive it.

What the tests see of the program: each name they use that the program defines — a function
or class becomes a proxy (a call is a round trip), a module the checker's own import of the
module of that name, a plain value (up to 1 MiB as JSON) its copy; a name that is a builtin
is never taken from the program.

Threat model of the verdict. Defended: a candidate cannot forge a pass. Nothing it can reach
holds the verdict or the token (they live in the checker's process, in other PID, mount, IPC
and network namespaces, on a pipe the candidate does not hold); it never sees the tests, only
the arguments of its calls; the tests compare only fresh builtin objects the checker decoded
from plain data, so an object with an always-true __eq__, a subclass of int/str/list, a
shadowed or monkeypatched builtin, or a StopIteration that would end a map() early changes
nothing; exiting (sys.exit(0), os._exit(0), SystemExit) before or during the tests is a
failure, even under a test's `except Exception`, as is any malformed or oversized message
(the checker reads the wire with a size cap and a JSON decoder, never pickle or eval). Not
defended: a candidate that returns the right values passes, however it found them; the
program's own helpers (e.g. HumanEval's `poly`, `encode_cyclic`) run in the candidate, which
may redefine them; calls are by value (arguments are copies: a test that checks how the
candidate mutated an argument cannot pass), and a result that is not plain data (a
generator, a map, an instance of its own class) fails. A candidate may exhaust the shared
memory and process limits and so fail the checker — a failure, never a pass. The tests are
trusted to judge, yet run isolated too.

Where no isolation is possible (no bwrap or one without --size, namespaces forbidden)
run_candidate refuses with a clear message unless the caller passes unsafe=True (`qpass eval
--unsafe-code-exec`): the same two interpreters as plain processes in a host temp dir, with
rlimits and a blocked socket module in the candidate's — not a security boundary (the
candidate could reach the checker, and writes are capped per file only); the temp dir is then
removed by qpass.sandbox.cleanup.remove_tree, whatever the candidate made of it."""
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
import threading
import time
from pathlib import Path

from qpass.errors import QpassError
from qpass.sandbox import harness
from qpass.sandbox.cleanup import remove_tree
from qpass.sandbox.harness import SENTINEL
from qpass.sandbox.tree_limits import TreeLimits

SANDBOX_DIR = "/sandbox"
_HARNESS = Path(harness.__file__).read_text()
_TAIL = 8192                       # bytes of each output kept for the reason

# The unsafe fallback's candidate (explicit --unsafe-code-exec only): rlimits, blocked sockets.
_UNSAFE_PRELUDE = r'''
import resource, socket, _socket
_mem, _cpu, _fsize = map(int, sys.argv[4:7])
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


def _bwrap_argv(disk_bytes: int) -> list[str]:
    argv = [shutil.which("bwrap") or "bwrap", "--unshare-all", "--die-with-parent",
            "--new-session", "--cap-drop", "ALL", "--clearenv",
            "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "LANG", "C.UTF-8",
            "--setenv", "HOME", SANDBOX_DIR, "--setenv", "TMPDIR", SANDBOX_DIR,
            "--setenv", "PYTHONDONTWRITEBYTECODE", "1", "--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/lib", "/lib64", "/lib32", "/sbin"):
        if os.path.islink(top):
            argv += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            argv += ["--ro-bind", top, top]
    prefix = os.path.realpath(sys.base_prefix)
    if not prefix.startswith("/usr"):                      # a Python installed elsewhere
        argv += ["--ro-bind", prefix, prefix]
    # everything read-only (the root tmpfs and /dev included: no unbounded writable place),
    # then the one writable place, with its size: the disk quota
    return argv + ["--proc", "/proc", "--dev", "/dev", "--dir", SANDBOX_DIR,
                   "--remount-ro", "/", "--remount-ro", "/dev",
                   "--size", str(disk_bytes), "--tmpfs", SANDBOX_DIR, "--chdir", SANDBOX_DIR]


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
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bubblewrap (bwrap) is not installed (Debian/Ubuntu: apt-get install bubblewrap)"
    try:
        usage = subprocess.run([bwrap, "--help"], capture_output=True, timeout=30).stdout
        if b"--size" not in usage:
            version = subprocess.run([bwrap, "--version"], capture_output=True, timeout=30)
            return (f"{version.stdout.decode(errors='replace').strip() or 'this bwrap'} has no "
                    f"--size, needed for the sandbox's disk quota (bubblewrap 0.7 or newer)")
        r = subprocess.run(_bwrap_argv(1 << 20) + [_python(), "-I", "-S", "-c", "pass"],
                           capture_output=True, timeout=30, preexec_fn=_drop(_sandbox_uid()))
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


class _Tail(threading.Thread):
    """Drains a pipe, keeping its last _TAIL bytes (the output never touches the disk)."""

    def __init__(self, fh):
        super().__init__(daemon=True)
        self.fh, self.data = fh, b""
        self.start()

    def run(self):
        try:
            while chunk := self.fh.read1(1 << 16):
                self.data = (self.data + chunk)[-_TAIL:]
        except (OSError, ValueError):
            pass

    def text(self) -> str:
        self.join(timeout=5)
        return self.data.decode("utf-8", errors="replace")


def _feed(proc: subprocess.Popen, data: str) -> threading.Thread:
    def write():
        try:
            proc.stdin.write(data.encode())
            proc.stdin.close()
        except (OSError, ValueError):
            pass
    th = threading.Thread(target=write, daemon=True)
    th.start()
    return th


def run_candidate(program: str, test: str, timeout: float = 5.0, memory_mb: int = 1024,
                  max_output_mb: int = 16, max_procs: int = 64, unsafe: bool = False,
                  disk_mb: int = 64) -> tuple[bool, str]:
    """(passed, reason): run `program`, then `test` (asserts) against it, in the sandbox.

    passed is True only when the checker ran the tests to their end within `timeout`
    seconds; reason is "passed", "timeout after Ns", "killed by signal SIG...", "exited
    before the tests finished (the tests did not reach their end)" or the last line of the
    error (e.g. "AssertionError", "OSError: [Errno 28] No space left on device").
    `disk_mb` is the size of the only writable place, `max_output_mb` caps one file and one
    message between the two interpreters. Raises QpassError where no sandbox can run, unless
    `unsafe` (see the module doc)."""
    if not (isinstance(disk_mb, int) and disk_mb >= 1):
        raise QpassError(f"disk_mb must be a whole number of MiB, at least 1 (got {disk_mb!r})")
    problem = isolation_problem()
    if problem is not None and not unsafe:
        raise QpassError(f"refusing to run generated code without isolation: {problem}; install "
                         f"bubblewrap, or pass --unsafe-code-exec (unsafe=True) to run it "
                         f"unisolated at your own risk")
    limit = max_output_mb << 20
    uid = None if problem is not None else _sandbox_uid()
    limits = TreeLimits(memory_mb << 20, max_procs, cpu_s=int(timeout) + 2, file_bytes=limit,
                        uid=uid)
    c_req, k_req = os.pipe()           # checker -> candidate: calls
    k_ans, c_ans = os.pipe()           # candidate -> checker: answers
    open_fds = [c_req, k_req, k_ans, c_ans]
    wire = [str(limit)]
    tmp = None
    try:
        if problem is None:
            base = _bwrap_argv(disk_mb << 20) + [_python(), "-I", "-S", "-c"]
            cand_argv = base + [_HARNESS + "\ncandidate_main()\n", str(c_req), str(c_ans)] + wire
            check_argv = base + [_HARNESS + "\nchecker_main()\n", str(k_req), str(k_ans)] + wire
        else:
            tmp = tempfile.mkdtemp(prefix="qpass-cand-")
            cand_argv = [sys.executable, "-I", "-c",
                         "import sys\n" + _UNSAFE_PRELUDE + _HARNESS + "\ncandidate_main()\n",
                         str(c_req), str(c_ans), *wire, str(memory_mb << 20),
                         str(int(timeout) + 2), str(limit)]
            check_argv = [sys.executable, "-I", "-c", _HARNESS + "\nchecker_main()\n",
                          str(k_req), str(k_ans), *wire]
        token = secrets.token_hex(16)
        with limits:
            return _run(cand_argv, check_argv, (c_req, c_ans), (k_req, k_ans), open_fds, tmp,
                        program, token + "\n" + test, token, timeout, limits, uid)
    finally:
        _close(open_fds)
        if tmp is not None:
            remove_tree(tmp)


def _spawn(argv, fds, cwd, limits, uid, stdout):
    env = {"PATH": os.defpath, "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
           "PYTHONDONTWRITEBYTECODE": "1"}
    if cwd is not None:
        env["TMPDIR"] = cwd

    def pre():
        limits.enter_child()           # join the cgroup and set rlimits (still as root)
        _drop(uid)()
    return subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.PIPE, stdout=stdout,
                            stderr=subprocess.PIPE, pass_fds=fds, start_new_session=True,
                            preexec_fn=pre)


def _close(fds: list[int]) -> None:
    while fds:
        try:
            os.close(fds.pop())
        except OSError:
            pass


def _run(cand_argv, check_argv, cand_fds, check_fds, open_fds, tmp, program, check_input,
         token, timeout, limits, uid) -> tuple[bool, str]:
    deadline = time.monotonic() + timeout
    procs, threads, code, cand_code = [], [], None, None
    try:
        procs.append(_spawn(cand_argv, cand_fds, tmp, limits, uid, subprocess.DEVNULL))
        procs.append(_spawn(check_argv, check_fds, tmp, limits, uid, subprocess.PIPE))
        cand, checker = procs
        _close(open_fds)                     # only the children hold the wire now
        threads = [_feed(cand, program), _feed(checker, check_input)]
        tails = _Tail(cand.stderr), _Tail(checker.stdout), _Tail(checker.stderr)
        try:
            code = checker.wait(timeout=max(0.0, deadline - time.monotonic()))
            if code == harness.STOPPED:       # the candidate stopped answering: why?
                cand_code = cand.wait(timeout=min(1.0, max(0.05, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            pass
    finally:
        for p in procs:
            _kill(p)
        limits.kill_all()
    for th in threads:
        th.join(timeout=1)
    outputs = tuple(t.text() for t in tails)
    for p in procs:
        for fh in (p.stdin, p.stdout, p.stderr):
            if fh is not None:                # the candidate's stdout is /dev/null
                fh.close()
    if code is None:
        return False, f"timeout after {timeout:g}s"
    return _verdict(code, cand_code, outputs, token, limits)


def _verdict(code, cand_code, outputs, token, limits) -> tuple[bool, str]:
    cand_err, check_out, check_err = outputs
    if code == 0 and check_out.endswith(f"\n{SENTINEL}{token}\n"):
        return True, "passed"
    if code == harness.STOPPED:            # the candidate's own error, else what the checker saw
        if cand_code:
            return False, _reason(cand_code, cand_err, limits, "")
        return False, _last_line(check_err).removeprefix("CandidateStopped: ")
    return False, _reason(code, check_err, limits, "the tests exited before their end")


def _reason(code: int, stderr: str, limits: TreeLimits, clean_exit: str) -> str:
    if code == 0:
        return clean_exit
    reason = _last_line(stderr)
    if code < 0 or (code > 128 and not reason):       # bwrap passes a signal on as 128+N
        if limits.memory_exceeded():
            return "killed (memory limit)"
        try:
            return f"killed by signal {signal.Signals(abs(code) % 128).name}"
        except ValueError:
            pass
    return reason or f"exit code {code}"


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

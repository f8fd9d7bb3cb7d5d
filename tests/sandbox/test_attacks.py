"""Problem 3 of issue 14: attacks a generated program tried against the code-task runner. Each
candidate's tests pass exactly when its attack worked, so a sound sandbox scores every one
False (and the attack leaves no trace outside)."""
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from qpass.errors import QpassError
from qpass.sandbox import run_candidate

OK = "def f():\n    return 1\n"


def _fails(program, test="", **kw):
    ok, reason = run_candidate(program, test, **kw)
    return (not ok), reason


def test_reaching_a_local_listener_fails():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    srv.settimeout(0.2)
    port = srv.getsockname()[1]
    got = []

    def accept():
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            try:
                got.append(srv.accept()[0])
            except OSError:
                pass
    th = threading.Thread(target=accept)
    th.start()
    prog = textwrap.dedent(f"""
        import importlib, subprocess, sys
        base = __import__('socket').socket.__mro__[-2]       # the C type under any wrapper
        s = base(2, 1); s.connect(('127.0.0.1', {port}))
        sock = importlib.reload(__import__('socket'))
        sock.create_connection(('127.0.0.1', {port}))
        subprocess.run([sys.executable, '-c',
                        "import socket; socket.create_connection(('127.0.0.1', {port}))"], check=True)
    """)
    failed, reason = _fails(prog, timeout=5)
    th.join()
    srv.close()
    assert failed and not got, f"candidate reached the listener ({reason})"


def test_reading_host_files_and_parent_environment_fails():
    # /proc/PID/environ shows a process's initial environment, so the evaluator must be
    # started with the secret in it
    prog = ("import glob\n"
            "leaked = open('/etc/passwd').read()\n"
            "env = b''\n"
            "for p in glob.glob('/proc/*/environ'):\n"
            "    try:\n        env += open(p, 'rb').read()\n"
            "    except OSError:\n        pass\n"
            "assert b's3cr3t-token' in env\n")
    code = f"from qpass.sandbox import run_candidate\nprint('result', run_candidate({prog!r}, ''))\n"
    env = dict(os.environ, QPASS_TEST_SECRET="s3cr3t-token")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 0 and "result (False" in r.stdout, (r.stdout, r.stderr[-500:])


def test_own_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("QPASS_TEST_SECRET", "s3cr3t-token")
    assert _fails("import os\nassert 'QPASS_TEST_SECRET' in os.environ\n")[0]


def test_writing_outside_the_temp_dir_fails(tmp_path):
    target = tmp_path / "escaped"
    failed, _ = _fails(f"open({str(target)!r}, 'w').write('x')\n")
    assert failed and not target.exists()


def test_killing_the_evaluator_fails():
    # the evaluator runs in its own process so that a successful attack does not kill pytest;
    # the candidate SIGKILLs its parent and every other process it can see
    prog = ("import os, signal\n"
            "for pid in [os.getppid()] + [int(p) for p in os.listdir('/proc') if p.isdigit()]:\n"
            "    try:\n        os.kill(pid, signal.SIGKILL) if pid not in (0, os.getpid()) else None\n"
            "    except OSError:\n        pass\n")
    code = ("from qpass.sandbox import run_candidate\n"
            f"ok, reason = run_candidate({prog!r}, '')\n"
            "print('evaluator survived')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "evaluator survived" in r.stdout, r.stderr[-500:]


def test_forked_session_leader_does_not_outlive_the_timeout(tmp_path):
    marker = tmp_path / "outlived"
    shared = tmp_path / "shared"
    shared.mkdir()
    prog = textwrap.dedent(f"""
        import os, time
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                time.sleep(2.5)
                open({str(marker)!r}, 'w').write('x')   # outside: only reachable unsandboxed
                os._exit(0)
            os._exit(0)
        time.sleep(60)
    """)
    failed, reason = _fails(prog, timeout=1)
    assert failed and "timeout" in reason
    time.sleep(3.5)
    assert not marker.exists()


def test_memory_is_limited_for_the_whole_tree():
    prog = textwrap.dedent("""
        import os
        pids = []
        for _ in range(4):
            pid = os.fork()
            if pid == 0:
                b = bytearray(200 << 20)
                for i in range(0, len(b), 4096):
                    b[i] = 1
                import time; time.sleep(1.0)
                os._exit(0)
            pids.append(pid)
        assert all(os.waitpid(p, 0)[1] == 0 for p in pids)
    """)
    assert _fails(prog, memory_mb=256, timeout=20)[0]


def test_process_count_is_limited():
    prog = textwrap.dedent("""
        import os, time
        pids = []
        for _ in range(300):
            pid = os.fork()
            if pid == 0:
                time.sleep(3)
                os._exit(0)
            pids.append(pid)
    """)
    assert _fails(prog, timeout=10)[0]


@pytest.mark.parametrize("exit_call", ["import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n",
                                       "raise SystemExit\n"])
def test_exiting_before_the_tests_is_not_a_pass(exit_call):
    failed, reason = _fails(OK + exit_call, "assert f() == 2\n")
    assert failed and ("sentinel" in reason or "did not reach" in reason)


def test_a_correct_candidate_still_passes():
    assert run_candidate(OK, "assert f() == 1\n") == (True, "passed")


def test_refuses_without_isolation_unless_unsafe(monkeypatch):
    import qpass.sandbox.runner as ce
    monkeypatch.setattr(ce, "isolation_problem", lambda: "bwrap not found (simulated)")
    with pytest.raises(QpassError, match="--unsafe-code-exec"):
        run_candidate(OK, "assert f() == 1\n")
    assert run_candidate(OK, "assert f() == 1\n", unsafe=True) == (True, "passed")

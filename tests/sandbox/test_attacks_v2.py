"""Part 7 of issue 25, hostile folders: attacks on the code-task runner found on main. Each
attack test fails on the runner before it (a RecursionError or a tree left behind, 5 GiB on the
host disk, a forged pass, an always-equal pass); a correct solution still passes and a wrong
one still fails."""
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import pytest

from qpass.sandbox import run_candidate

DEPTH = 3000
# a 3,000-deep chain, some of it chmod 000 / 0500, a symlink out and a FIFO in it; where the
# candidate may (root, unsafe), a file made immutable
DEEP_TREE = textwrap.dedent(f"""
    import fcntl, os, struct
    os.mkdir('deep'); os.chdir('deep')
    os.symlink({tempfile.gettempdir()!r}, 'out')          # never followed by the cleanup
    for i in range({DEPTH}):
        os.mkdir('d'); os.chdir('d')
        open('f', 'w').write('x')
    os.mkfifo('fifo')
    try:                                                   # chattr +i (root only)
        fd = os.open('f', os.O_RDONLY)
        n = (1 << 30) | (struct.calcsize('l') << 16) | (ord('f') << 8) | 2
        fcntl.ioctl(fd, n, (0x10).to_bytes(4, 'little') + bytes(4))
    except OSError:
        pass
    for i in range({DEPTH}):                               # chmod 000 and 0500 on the way up
        os.chdir('..')
        if i % 500 == 0:
            os.chmod('d', 0o000 if i % 1000 == 0 else 0o500)
""")


@pytest.fixture
def fast_tmp(tmp_path):
    """A folder on tmpfs where there is one (thousands of mkdir/rmdir on this machine's disk
    take seconds), else tmp_path."""
    if not os.access("/dev/shm", os.W_OK):
        yield tmp_path
        return
    d = tempfile.mkdtemp(prefix="qpass-test-", dir="/dev/shm")
    yield Path(d)
    subprocess.run(["chmod", "-R", "u+rwx", d], check=False, capture_output=True)
    subprocess.run(["rm", "-rf", d], check=False, capture_output=True)   # not recursive


@pytest.fixture
def private_tmp(fast_tmp, monkeypatch):
    """The system temp dir, as qpass sees it, is a fresh empty folder of this test."""
    d = fast_tmp / "systmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


# ----- 1. a deep, hostile tree -----

@pytest.mark.parametrize("unsafe", [False, True], ids=["sandbox", "unsafe"])
def test_a_deep_hostile_tree_is_cleaned_without_recursion_error(private_tmp, unsafe, monkeypatch):
    if unsafe:
        import qpass.sandbox.runner as runner
        monkeypatch.setattr(runner, "isolation_problem", lambda: "no bwrap (simulated)")
    ok, reason = run_candidate(DEEP_TREE, "", timeout=20, unsafe=unsafe)
    assert ok, reason
    assert list(private_tmp.iterdir()) == []
    assert os.path.isdir(tempfile.gettempdir())


def test_remove_tree_handles_any_depth_locks_and_links(fast_tmp):
    from qpass.sandbox.cleanup import remove_tree
    outside = fast_tmp / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    root = fast_tmp / "tree"
    root.mkdir()
    (root / "link_dir").symlink_to(outside)
    (root / "link_file").symlink_to(outside / "keep")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    locked = []
    for i in range(DEPTH):                 # deeper than PATH_MAX could spell: fd-relative
        os.mkdir("d", dir_fd=fd)
        os.symlink(str(outside), "up", dir_fd=fd)
        child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        if i % 700 == 0:
            locked.append(fd)
        else:
            os.close(fd)
        fd = child
    os.mkfifo("fifo", dir_fd=fd)
    os.close(os.open("f", os.O_CREAT | os.O_WRONLY, 0o000, dir_fd=fd))
    for lfd in locked:
        os.fchmod(lfd, 0o000)
        os.close(lfd)
    os.close(fd)
    remove_tree(root)
    assert not os.path.lexists(root)
    assert (outside / "keep").read_text() == "keep"
    remove_tree(root)                      # a missing tree is fine


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may make a file immutable")
def test_remove_tree_undoes_immutable_and_append_only(tmp_path):
    import fcntl
    from qpass.sandbox.cleanup import FS_IOC_GETFLAGS, FS_IOC_SETFLAGS, remove_tree
    root = tmp_path / "tree"
    (root / "d").mkdir(parents=True)
    made = []
    for path, flag in ((root / "d" / "imm", 0x10), (root / "d" / "app", 0x20), (root / "d", 0x10)):
        if path.name != "d":
            path.write_text("x")
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, flag.to_bytes(4, sys.byteorder) + bytes(4))
            buf = bytearray(8)
            fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf)
            made.append(bool(int.from_bytes(buf[:4], sys.byteorder) & flag))
        except OSError:
            made.append(False)
        finally:
            os.close(fd)
    if not any(made):
        pytest.skip("this filesystem has no immutable flag")
    with pytest.raises(PermissionError):
        os.unlink(root / "d" / ("imm" if made[0] else "app"))
    remove_tree(root)
    assert not os.path.lexists(root)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root and setpriv")
def test_remove_tree_reopens_dirs_its_owner_locked(tmp_path):
    """chmod 000 and 0500 stop their owner once root's override is gone (no capabilities)."""
    root = tmp_path / "tree"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_text("x")
    (root / "a" / "ro").mkdir()
    (root / "a" / "ro" / "g").write_text("x")
    os.chmod(root / "a" / "ro", 0o500)
    os.chmod(root / "a" / "b", 0o000)
    os.chmod(root / "a", 0o000)
    # qpass.sandbox alone (its package's __init__ would load torch: seconds)
    pkg = str(Path(__file__).resolve().parents[2] / "qpass")
    code = ("import sys, types\nq = types.ModuleType('qpass')\nq.__path__ = [%r]\n"
            "sys.modules['qpass'] = q\nfrom qpass.sandbox.cleanup import remove_tree\n"
            "remove_tree(%r)\n" % (pkg, str(root)))
    r = subprocess.run(["setpriv", "--inh-caps=-all", "--bounding-set=-all", sys.executable,
                        "-c", code], capture_output=True, text=True, timeout=60)
    if os.path.lexists(root):              # leave nothing behind even if the test fails
        subprocess.run(["chmod", "-R", "u+rwx", str(root)], check=False)
    assert r.returncode == 0, r.stderr[-800:]
    assert not os.path.lexists(root)


def test_remove_tree_failure_is_one_qpass_error(tmp_path, monkeypatch):
    import qpass.sandbox.cleanup as cleanup
    from qpass.errors import QpassError
    (tmp_path / "t" / "x").mkdir(parents=True)

    def refuse(*a, **k):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(cleanup.os, "rmdir", refuse)
    with pytest.raises(QpassError, match=r"could not remove .*t: Operation not permitted"):
        cleanup.remove_tree(tmp_path / "t")


# ----- 2. a disk quota -----

def test_writing_past_the_quota_fails_and_the_host_disk_does_not_grow():
    host = tempfile.gettempdir()
    base = shutil.disk_usage(host).used
    peak = [0]
    done = threading.Event()

    def watch():
        while not done.wait(0.01):
            peak[0] = max(peak[0], shutil.disk_usage(host).used - base)
    th = threading.Thread(target=watch)
    th.start()
    prog = ("chunk = b'x' * (8 << 20)\n"
            "for i in range(64):                  # 512 MiB in files under the 16 MiB cap\n"
            "    with open(f'big{i}', 'wb') as f:\n"
            "        f.write(chunk)\n")
    try:
        ok, reason = run_candidate(prog, "", disk_mb=32, timeout=10)
    finally:
        done.set()
        th.join()
    assert not ok and "No space left on device" in reason, reason
    assert peak[0] < 256 << 20, f"the host disk grew by {peak[0] >> 20} MiB"


def test_no_other_place_is_writable():
    prog = textwrap.dedent("""
        wrote = []
        for d in ('/', '/dev', '/dev/shm', '/usr', '/proc', '/tmp', '/var/tmp', '/root', '/home'):
            try:
                with open(d + '/qpass-escape', 'wb') as f:
                    f.write(b'x' * 4096)
                wrote.append(d)
            except OSError:
                pass
        assert wrote, 'nothing but /sandbox is writable'
    """)
    ok, reason = run_candidate(prog, "")
    assert not ok and "nothing but /sandbox is writable" in reason, reason


def test_the_quota_leaves_room_for_honest_files():
    prog = textwrap.dedent("""
        import tempfile
        def f():
            with tempfile.NamedTemporaryFile() as t:
                t.write(b'y' * (1 << 20)); t.flush(); t.seek(0)
                return len(t.read())
    """)
    assert run_candidate(prog, "assert f() == 1 << 20\n", disk_mb=8) == (True, "passed")


# ----- 3. forging the verdict -----

FORGE_TOKEN = textwrap.dedent("""
    import gc, os, sys
    SENT = 'QPASS-TESTS-REACHED-END '
    found = []
    def look(v):
        if type(v) is str and len(v) == 32 and all(c in '0123456789abcdef' for c in v):
            found.append(v)
    f = sys._getframe()
    while f is not None:                  # the harness's frames: its locals and globals
        for v in list(f.f_locals.values()) + list(f.f_globals.values()):
            look(v)
        f = f.f_back
    for v in vars(sys.modules['__main__']).values():
        look(v)
    for o in gc.get_objects():
        if type(o) is dict:
            for v in list(o.values()):
                look(v)
    for tok in found + [found[0]] if found else []:
        for fd in (1, 2):
            os.write(fd, ('\\n' + SENT + tok + '\\n').encode())
    os._exit(0)
""")

FORGE_WIRE = textwrap.dedent("""
    import json, os
    def frame(obj):
        data = json.dumps(obj).encode()
        return len(data).to_bytes(4, 'big') + data
    # "done" in every shape it could guess; it does not know the tests' expected value
    fake = (frame(['ready', []]) + frame(['pass']) + frame(['verdict', True]) +
            frame(['raise', 'SystemExit', '0']) +
            b'\\nQPASS-TESTS-REACHED-END ' + b'0' * 32 + b'\\n')
    for fd in range(3, 64):               # every descriptor it holds: the wire too
        try:
            os.write(fd, fake)
        except OSError:
            pass
    for pid in os.listdir('/proc'):       # any other process it can see
        if pid.isdigit() and int(pid) != os.getpid():
            for fd in range(0, 16):
                try:
                    with open(f'/proc/{pid}/fd/{fd}', 'wb') as fh:
                        fh.write(fake)
                except OSError:
                    pass
    os._exit(0)
""")

# a function that answers with a frame too big, then with JSON too deep, on the wire
FORGE_HOSTILE_FRAMES = textwrap.dedent("""
    import os, sys
    def f():
        ans = int(sys.argv[2])
        os.write(ans, (2 ** 31).to_bytes(4, 'big'))
        return 1
    def g():
        ans = int(sys.argv[2])
        body = b'[' * 100000 + b']' * 100000
        os.write(ans, len(body).to_bytes(4, 'big') + body)
        return 1
""")


@pytest.mark.parametrize("program", [
    "def f():\n    return 1\n" + FORGE_TOKEN,
    "def f():\n    return 1\n" + FORGE_WIRE,
], ids=["token-from-frames-and-gc", "fake-frames-and-verdicts-on-every-fd"])
def test_forging_the_verdict_fails(program):
    ok, reason = run_candidate(program, "assert f() == 2\n")
    assert not ok, reason


@pytest.mark.parametrize("test", ["assert f() == 2\n", "assert g() == 2\n"], ids=["huge", "deep"])
def test_hostile_frames_fail_without_hanging_the_checker(test):
    ok, reason = run_candidate(FORGE_HOSTILE_FRAMES, test, timeout=5)
    assert not ok and "timeout" not in reason, reason


def test_exiting_during_the_tests_fails_even_under_except_exception():
    prog = "import os, sys\ndef f(how):\n    sys.exit(0) if how else os._exit(0)\n"
    test = ("for how in (1, 0):\n    try:\n        f(how)\n    except Exception:\n        pass\n")
    ok, reason = run_candidate(prog, test)
    assert not ok and "did not reach" in reason, reason


# ----- 4. always-equal objects and other borrowed semantics -----

@pytest.mark.parametrize("program,test", [
    ("class E:\n    __eq__ = lambda s, o: True\n    __ne__ = lambda s, o: False\n"
     "    __hash__ = object.__hash__\ndef f(x):\n    return E()\n",
     "assert f(1) == 42\nassert 42 == f(1)\nassert [f(2)] == [7]\n"),
    ("class I(int):\n    __eq__ = lambda s, o: True\ndef f(x):\n    return I(0)\n",
     "assert f(1) == 42\n"),
    ("class S(str):\n    __eq__ = lambda s, o: True\n    __hash__ = str.__hash__\n"
     "def f(x):\n    return [S('')]\n",
     "assert f(1) == ['right']\n"),
    ("def abs(x):\n    return 0\ndef f(x):\n    return 0.0\n",        # shadow a builtin
     "assert abs(f(1) - 0.5) < 1e-6\n"),
    ("import builtins\nbuiltins.abs = lambda x: 0\ndef f(x):\n    return 0.0\n",
     "assert abs(f(1) - 0.5) < 1e-6\n"),
    ("def f(x):\n    raise StopIteration\n",                         # ends map() silently
     "assert all(map(f, [1, 2, 3]))\n"),
], ids=["always-equal", "int-subclass", "str-subclass", "shadowed-abs", "patched-builtins",
        "stop-iteration"])
def test_objects_that_borrow_equality_fail(program, test):
    ok, reason = run_candidate(program, test)
    assert not ok, reason


def test_harness_encodes_only_plain_builtin_data():
    from qpass.sandbox.harness import decode, encode
    v = [None, True, 1, 2.5, float("inf"), "s", b"\x00b", 1j, (1, [2]), {1: {"a": (3,)}},
         {4, 5}, frozenset({6}), {(1, 2): None}, 10 ** 5000, -(2 ** 70), -0.0, 2 ** 63 - 1]
    out = decode(encode(v))
    assert out == v and [type(x) for x in out] == [type(x) for x in v]
    for bad in (object(), type("I", (int,), {})(1), [map(str, [])], {1: range(3)}):
        with pytest.raises(TypeError):
            encode(bad)
    for bad in (["X", []], ["L", 1], ["D", [[1]]], ["C", [1, 2]], [[1], 2],
                ["D", [[["L", []], 1]]]):
        with pytest.raises((ValueError, TypeError)):
            decode(bad)


# ----- correct and wrong still score as they should -----

HUMANEVAL_LIKE = textwrap.dedent('''
    import math
    FACTOR = 2
    def helper(xs):
        return sum(x * FACTOR for x in xs)
    def solve(xs, scale=1.0):
        """HumanEval-style entry point."""
        if not xs:
            raise ValueError("empty")
        total = helper(xs) * scale
        return {"total": total, "pair": (min(xs), max(xs)), "sqrt": math.sqrt(total),
                "none": None, "set": set(xs), "bytes": bytes(xs), "list": sorted(xs)}
''')
HUMANEVAL_TEST = textwrap.dedent('''
    METADATA = {"author": "t"}
    def check(candidate):
        r = candidate([3, 1, 2])
        assert r["total"] == 12 and r["pair"] == (1, 3) and r["none"] is None
        assert abs(r["sqrt"] - math.sqrt(12)) < 1e-9            # math: the program's import
        assert r["set"] == {1, 2, 3} and r["bytes"] == b"\\x03\\x01\\x02"
        assert r["list"] == [1, 2, 3] and isinstance(r["pair"], tuple)
        assert candidate([1], scale=0.5)["total"] == 1.0
        assert helper([1, 2]) == 6 and FACTOR == 2                # program helpers and values
        try:
            candidate([])
            assert False, "no ValueError"
        except ValueError as e:
            assert str(e) == "empty"
    check(solve)
''')


def test_a_humaneval_style_correct_solution_passes_and_a_wrong_one_fails():
    assert run_candidate(HUMANEVAL_LIKE, HUMANEVAL_TEST) == (True, "passed")
    wrong = HUMANEVAL_LIKE.replace("(min(xs), max(xs))", "[min(xs), max(xs)]")
    ok, reason = run_candidate(wrong, HUMANEVAL_TEST)
    assert not ok and "AssertionError" in reason, reason


def test_a_value_that_is_not_plain_data_fails_with_a_reason():
    ok, reason = run_candidate("def f():\n    return map(str, [1])\n",
                               "assert list(f()) == ['1']\n")
    assert not ok and "cannot leave the sandbox" in reason, reason


def test_a_bwrap_without_size_is_no_isolation(tmp_path, monkeypatch):
    """No quota, no sandbox: a bubblewrap too old for --size is refused, with its version."""
    import qpass.sandbox.runner as runner
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\n[ \"$1\" = --version ] && echo 'bubblewrap 0.6.1'\n"
                    "[ \"$1\" = --help ] && echo '    --tmpfs DEST   Mount new tmpfs on DEST'\n"
                    "exit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    runner._probe.cache_clear()
    try:
        problem = runner.isolation_problem()
    finally:
        monkeypatch.undo()
        runner._probe.cache_clear()
    assert problem and "bubblewrap 0.6.1 has no --size" in problem

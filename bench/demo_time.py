"""How long `make demo` takes: wall and CPU seconds of `python -m qpass.cli demo`.

Runs the command `make demo` runs (`.venv/bin/python -m qpass.cli demo`, with this
interpreter) in a child process and reads its CPU time from getrusage(RUSAGE_CHILDREN) (user
+ system, all threads), so the figure holds on a shared machine where wall time does not; the
load average before and after says how shared it was. Prints one JSON object (last line).

    python bench/demo_time.py                     # the full demo (what `make demo` runs)
    python bench/demo_time.py --source /tmp/old   # another checkout of qpass (e.g. before a change)
    python bench/demo_time.py --quick             # `make bench`: the demo with RTN only
    python bench/demo_time.py -- --threads 2      # arguments after -- go to `qpass demo`"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--pipelines", "w4a16-rtn"]


def _git_rev(src: Path) -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=src, text=True,
                              capture_output=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _overlay(src: Path, tmp: Path) -> Path:
    """A folder where `import qpass` is `src`'s, passes/ and backends/ included: the checkout
    keeps them top-level and the installed (editable) package maps them to this checkout's."""
    pkg = tmp / "qpass"
    pkg.mkdir()
    for entry in (src / "qpass").iterdir():
        (pkg / entry.name).symlink_to(entry)
    for sub in ("passes", "backends"):
        if (src / sub).is_dir() and not (pkg / sub).exists():
            (pkg / sub).symlink_to(src / sub)
    return tmp


def time_demo(src: Path, demo_args: list[str], show: bool = False) -> dict:
    """Wall/CPU seconds and peak memory of one `python -m qpass.cli demo` run in `src`."""
    with tempfile.TemporaryDirectory() as tmp:
        path = str(src) if src == ROOT else str(_overlay(src, Path(tmp)))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [path] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
        return _run(src, Path(path), env, demo_args, show)


def _run(src: Path, cwd: Path, env: dict, demo_args: list[str], show: bool) -> dict:
    cmd = [sys.executable, "-m", "qpass.cli", "demo", *demo_args]
    load0 = os.getloadavg()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, text=True, capture_output=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if show or proc.returncode:
        sys.stderr.write(proc.stdout + proc.stderr)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return {"command": " ".join(["python", "-m", "qpass.cli", "demo", *demo_args]),
            "source": str(src), "git": _git_rev(src), "returncode": proc.returncode,
            "wall_s": round(wall, 1), "cpu_s": round(user + system, 1),
            "user_s": round(user, 1), "sys_s": round(system, 1),
            "max_rss_mib": round(after.ru_maxrss / 1024, 1),
            "load_avg_before": [round(x, 2) for x in load0],
            "load_avg_after": [round(x, 2) for x in os.getloadavg()],
            "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
            "date": date.today().isoformat()}


def main() -> int:
    argv = sys.argv[1:]
    demo_args = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, default=ROOT, help="qpass checkout to time (default: this one)")
    ap.add_argument("--quick", action="store_true", help="RTN only (what `make bench` runs)")
    ap.add_argument("--show", action="store_true", help="echo the demo's output to stderr")
    a = ap.parse_args(argv)
    res = time_demo(a.source.resolve(), (QUICK if a.quick else []) + demo_args, a.show)
    res["quick"] = a.quick
    print(json.dumps(res))
    return res["returncode"]


if __name__ == "__main__":
    sys.exit(main())

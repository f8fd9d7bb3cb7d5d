"""Limits for a whole process tree of a sandboxed candidate (qpass.sandbox.runner).

Preferred: a child cgroup of this process's own cgroup, per controller, v1 (`pids`, `memory`
hierarchies) or v2 (one unified group with both): pids.max and a memory limit (swap included
where the kernel accounts it) bind every process the candidate forks, and kill_all() SIGKILLs
whatever is left in them. Where a controller cannot be used (no permission, not mounted) the
fallback is per-process rlimits: RLIMIT_NPROC for the count (on top of the processes the user
already runs) and RLIMIT_AS per process. CPU time, file size and core dumps are always rlimits."""
from __future__ import annotations

import os
import resource
import signal
import time
import uuid
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _own_path(controller: str) -> str | None:
    """This process's cgroup path in `controller`'s hierarchy ("" for v2's unified one)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for ln in lines:
        _, ctrls, path = ln.split(":", 2)
        if controller in ctrls.split(","):
            return path
    return None


def _user_processes(uid: int) -> int:
    n = 0
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                n += p.stat().st_uid == uid
            except OSError:
                pass
    return n


class TreeLimits:
    def __init__(self, memory_bytes: int, max_procs: int, cpu_s: int, file_bytes: int,
                 uid: int | None = None):
        self.memory_bytes, self.max_procs = memory_bytes, max_procs
        self.cpu_s, self.file_bytes, self.uid = cpu_s, file_bytes, uid
        self.groups: list[Path] = []
        self.has_pids = self.has_memory = False
        self._nproc = max_procs

    # ----- parent side -----
    def __enter__(self) -> "TreeLimits":
        name = f"qpass-cand-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        v2 = CGROUP_ROOT / "cgroup.controllers"
        if v2.exists():
            self._try_v2(name)
        else:
            self._try_v1("pids", name, {"pids.max": str(self.max_procs)})
            self._try_v1("memory", name, {"memory.limit_in_bytes": str(self.memory_bytes),
                                          "memory.memsw.limit_in_bytes": str(self.memory_bytes)})
        if not self.has_pids:
            uid = os.getuid() if self.uid is None else self.uid
            self._nproc = _user_processes(uid) + self.max_procs
        return self

    def _try_v1(self, ctrl: str, name: str, files: dict) -> None:
        own = _own_path(ctrl)
        base = CGROUP_ROOT / ctrl
        if own is None or not base.is_dir():
            return
        d = base / own.lstrip("/") / name
        try:
            d.mkdir()
        except OSError:
            return
        self.groups.append(d)
        for fname, val in files.items():
            try:
                (d / fname).write_text(val)
            except OSError:
                if fname != "memory.memsw.limit_in_bytes":   # absent without swap accounting
                    return
        setattr(self, f"has_{ctrl}", True)

    def _try_v2(self, name: str) -> None:
        own = _own_path("")
        parent = CGROUP_ROOT / (own or "/").lstrip("/")
        try:
            enabled = (parent / "cgroup.subtree_control").read_text().split()
            d = parent / name
            d.mkdir()
        except OSError:
            return
        self.groups.append(d)
        for ctrl, files in (("pids", {"pids.max": str(self.max_procs)}),
                            ("memory", {"memory.max": str(self.memory_bytes),
                                        "memory.swap.max": "0"})):
            if ctrl not in enabled:
                continue
            try:
                for fname, val in files.items():
                    (d / fname).write_text(val)
                setattr(self, f"has_{ctrl}", True)
            except OSError:
                pass

    def kill_all(self) -> None:
        for _ in range(100):
            pids = []
            for d in self.groups:
                try:
                    pids += [int(p) for p in (d / "cgroup.procs").read_text().split()]
                except OSError:
                    pass
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.01)

    def memory_exceeded(self) -> bool:
        for d in self.groups:           # v1 counts in failcnt and oom_control, v2 in events
            for fname in ("memory.failcnt", "memory.oom_control", "memory.events"):
                try:
                    text = (d / fname).read_text()
                except OSError:
                    continue
                if fname == "memory.failcnt" and int(text.strip() or 0) > 0:
                    return True
                if any(ln.startswith("oom_kill ") and ln.split()[1] != "0"
                       for ln in text.splitlines()):
                    return True
        return False

    def __exit__(self, *exc) -> None:
        self.kill_all()
        for d in self.groups:
            try:
                d.rmdir()
            except OSError:
                pass

    # ----- child side (preexec, before exec) -----
    def enter_child(self) -> None:
        pid = str(os.getpid())
        for d in self.groups:
            try:
                (d / "cgroup.procs").write_text(pid)
            except OSError:
                pass
        lims = [(resource.RLIMIT_AS, self.memory_bytes), (resource.RLIMIT_CPU, self.cpu_s),
                (resource.RLIMIT_FSIZE, self.file_bytes), (resource.RLIMIT_CORE, 0),
                (resource.RLIMIT_NPROC, self._nproc)]
        for lim, val in lims:
            try:
                resource.setrlimit(lim, (val, val))
            except (ValueError, OSError):
                pass

"""Atomic directory writes: fill a temporary sibling, fsync it, then move it into place in one
step, so that at every instant the target holds the old complete directory or the new one.

    tmp = new_temporary(out)          # .OUT.qpass-tmp-PID-HEX, next to OUT
    try:
        ...write files into tmp...
        commit(tmp, out)              # fsync, then rename (OUT absent) or swap (OUT present)
    finally:
        discard(tmp)                  # the half-written directory, or the swapped-out old one

The swap is one renameat2(RENAME_EXCHANGE) where the kernel and filesystem have it, else three
renames (docs/FORMATS.md names the window where OUT is absent). Temporaries of dead processes
are removed by the next write next to them. Used by compiled checkpoints
(qpass.runtime.checkpoint) and exported directories (qpass.interop.writer); whether an
existing OUT may be replaced is the caller's check (commit(replace=False) never replaces)."""
from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import uuid
from pathlib import Path

_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_active: set[str] = set()          # temporaries this process is writing right now


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _renameat2(a: Path, b: Path, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(a))


def exchange_paths(a: Path, b: Path) -> None:
    """Swap two existing paths in one step (Linux renameat2 RENAME_EXCHANGE); OSError where
    the kernel or filesystem cannot."""
    _renameat2(a, b, _RENAME_EXCHANGE)


def _rename_new(tmp: Path, out: Path) -> None:
    """Rename onto a path that must not exist (FileExistsError if it appeared meanwhile)."""
    try:
        _renameat2(tmp, out, _RENAME_NOREPLACE)
    except OSError as e:
        if e.errno not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise
        os.rename(tmp, out)          # fails on a non-empty OUT; an empty one is replaced


def _temporary_name(out: Path) -> Path:
    return out.parent / f".{out.name}.qpass-tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _stale_temporaries(out: Path) -> list[Path]:
    pat = re.compile(rf"\.{re.escape(out.name)}\."
                     rf"(qpass-tmp-(\d+)-[0-9a-f]{{8}}|(tmp|old)-[0-9a-f]{{8}})\Z")
    stale = []
    for p in out.parent.iterdir() if out.parent.is_dir() else ():
        m = pat.match(p.name)
        if not m or str(p) in _active or not p.is_dir() or p.is_symlink():
            continue
        pid = int(m.group(2)) if m.group(2) else None     # older qpass: .NAME.tmp-/.old-HEX
        if pid is not None and pid != os.getpid():
            try:
                os.kill(pid, 0)
                continue                                  # its writer is still running
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        stale.append(p)
    return stale


def new_temporary(out: Path) -> Path:
    """A new empty directory next to `out` (its parent created), stale ones of `out` removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for p in _stale_temporaries(out):
        shutil.rmtree(p, ignore_errors=True)
    tmp = _temporary_name(out)
    _active.add(str(tmp))
    tmp.mkdir()
    return tmp


def _move_into_place(tmp: Path, out: Path, replace: bool) -> None:
    if not replace:
        _rename_new(tmp, out)
        return
    if not out.exists():
        os.rename(tmp, out)
        return
    try:
        exchange_paths(tmp, out)                          # tmp now holds the old directory
    except OSError as e:
        if e.errno not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise
        # no atomic swap on this filesystem: three renames (docs/FORMATS.md names the window)
        old = _temporary_name(out)
        os.rename(out, old)
        os.rename(tmp, out)
        os.rename(old, tmp)


def commit(tmp: Path, out: Path, replace: bool = True) -> None:
    """fsync every file of `tmp` and `tmp` itself, move it into place at `out` (a rename, or a
    swap with the existing `out`), fsync the parent. `tmp` then holds the old `out`, if any.
    replace=False: `out` must not exist (an OUT that appeared since the caller checked is not
    replaced: FileExistsError)."""
    for p in tmp.iterdir():
        fsync(p)
    fsync(tmp)
    _move_into_place(tmp, out, replace)
    fsync(out.parent)


def discard(tmp: Path) -> None:
    """Remove a temporary (half-written, or the old directory after a swap)."""
    shutil.rmtree(tmp, ignore_errors=True)
    _active.discard(str(tmp))

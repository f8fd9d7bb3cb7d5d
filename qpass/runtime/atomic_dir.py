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
are removed by the next write next to them (real directories of this user only: a symlink
or a stranger's folder with such a name is never removed or followed). Used by compiled
checkpoints (qpass.runtime.checkpoint) and exported directories (qpass.interop.writer); whether an
existing OUT may be replaced is the caller's check (commit(replace=False) never replaces)."""
from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import stat
import uuid
from contextlib import contextmanager
from pathlib import Path

from qpass.errors import CheckpointError
from qpass.folders.owned import exchange_paths, publish_modes, publish_new

_active: set[str] = set()          # temporaries this process is writing right now


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temporary_name(out: Path) -> Path:
    return out.parent / f".{out.name}.qpass-tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _stale_temporaries(out: Path) -> list[Path]:
    """Temporaries of `out` left by dead qpass processes: by name, and by lstat a real
    directory of this user (a symlink or a stranger's folder of that name is left alone)."""
    pat = re.compile(rf"\.{re.escape(out.name)}\."
                     rf"(qpass-tmp-(\d+)-[0-9a-f]{{8}}|(tmp|old)-[0-9a-f]{{8}})\Z")
    stale = []
    for p in out.parent.iterdir() if out.parent.is_dir() else ():
        m = pat.match(p.name)
        if not m or str(p) in _active:
            continue
        try:
            st = os.lstat(p)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
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
    """A new empty directory next to `out` (its parent created; made by mkdir, which never
    follows a link; mode 0700 while it fills: commit gives it the modes of a finished
    output), stale ones of `out` removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for p in _stale_temporaries(out):
        shutil.rmtree(p, ignore_errors=True)      # a real directory: rmtree follows no link
    tmp = _temporary_name(out)
    _active.add(str(tmp))
    tmp.mkdir(mode=0o700)
    return tmp


@contextmanager
def _parent_locked(out: Path):
    """An flock on OUT's parent directory while a commit moves things there: two saves to one
    OUT commit one after the other (the last one wins, whole), never interleaved."""
    fd = os.open(out.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _move_into_place(tmp: Path, out: Path, replace: bool) -> None:
    try:
        st = os.lstat(out)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISLNK(st.st_mode):
        raise CheckpointError(f"{out} is a symbolic link; qpass never replaces or writes "
                              f"through a link: choose another output directory (nothing was "
                              f"written)")
    if not replace or st is None:
        try:
            publish_new(tmp, out)                         # nothing may have appeared there
        except FileExistsError:
            raise CheckpointError(f"{out} appeared while qpass was writing it; choose a new "
                                  f"output directory (nothing was written)") from None
        return
    try:
        exchange_paths(tmp, out)                          # tmp now holds the old directory
    except OSError as e:
        if e.errno not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise
        # no atomic swap on this filesystem: three renames (docs/FORMATS.md names the window)
        old = _temporary_name(out)
        _active.add(str(old))                            # not a stale one to another save
        try:
            os.rename(out, old)
            os.rename(tmp, out)
            os.rename(old, tmp)
        finally:
            _active.discard(str(old))


def commit(tmp: Path, out: Path, replace: bool = True) -> None:
    """Give `tmp` the modes of a finished output (files 0644, folders 0755 under umask 022:
    publish_modes, what `cp` or save_pretrained leave), fsync every file of `tmp` and `tmp`
    itself, move it into place at `out` (a rename, or a swap with the existing `out`), fsync
    the parent. `tmp` then holds the old `out`, if any.
    replace=False: `out` must not exist (an OUT that appeared since the caller checked is not
    replaced: CheckpointError). Commits to one OUT are serialized (an flock on its parent),
    so concurrent saves never interleave: each is whole, the last one stays. A symlink at OUT
    is never replaced (CheckpointError)."""
    publish_modes(tmp)
    for p in tmp.iterdir():
        fsync(p)
    fsync(tmp)
    with _parent_locked(out):
        _move_into_place(tmp, out, replace)
    fsync(out.parent)


def discard(tmp: Path) -> None:
    """Remove a temporary (half-written, or the old directory after a swap)."""
    shutil.rmtree(tmp, ignore_errors=True)
    _active.discard(str(tmp))

"""Remove a directory tree that a hostile program may have shaped (qpass.sandbox.runner).

remove_tree(path) is iterative — one directory open at a time, a stack of names, so any
depth works (a 3,000-deep chain is nothing; a path that long could not even be spelled) — and
works relative to directory descriptors: no symlink is ever followed (each entry is lstat'ed,
each directory opened O_NOFOLLOW and checked to be the same inode that was listed; going up is
"..", checked against the inode it came from), no other filesystem is entered (a mount point
inside is an error, not a walk). What the program did to make removal fail is undone on the
way: a directory it made unreadable or unwritable (chmod 000) is given back 0700, and a file
or directory it made immutable or append-only (chattr +i/+a, possible only for a program
running as root) has those flags cleared where the filesystem allows it. Whatever still fails
is one QpassError line naming the path; a tree is never silently left behind."""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
import sys

from qpass.errors import QpassError

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_LONG = struct.calcsize("l")
FS_IOC_GETFLAGS = (2 << 30) | (_LONG << 16) | (ord("f") << 8) | 1     # _IOR('f', 1, long)
FS_IOC_SETFLAGS = (1 << 30) | (_LONG << 16) | (ord("f") << 8) | 2     # _IOW('f', 2, long)
_UNDELETABLE = 0x10 | 0x20                                           # IMMUTABLE | APPEND


def clear_flags(fd: int) -> None:
    """Clear the immutable and append-only inode flags of an open file, where possible."""
    buf = bytearray(8)
    try:
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf)
        flags = int.from_bytes(buf[:4], sys.byteorder)
        if flags & _UNDELETABLE:
            new = (flags & ~_UNDELETABLE).to_bytes(4, sys.byteorder) + bytes(4)
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, new)
    except OSError:
        pass


def _open_dir(name: str, dir_fd: int, st: os.stat_result) -> int:
    """Open the directory `name` that lstat saw as `st`; make it readable and writable."""
    try:
        fd = os.open(name, _DIR, dir_fd=dir_fd)
    except PermissionError:                   # chmod 000 by its (non-root) owner
        os.chmod(name, 0o700, dir_fd=dir_fd)
        fd = os.open(name, _DIR, dir_fd=dir_fd)
    now = os.fstat(fd)
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        os.close(fd)
        raise OSError(errno.ESTALE, f"{name!r} changed while it was being removed")
    if stat.S_IMODE(now.st_mode) & 0o700 != 0o700:
        os.fchmod(fd, 0o700)
    clear_flags(fd)
    return fd


def _unlink(name: str, dir_fd: int, st: os.stat_result) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
        return
    except FileNotFoundError:
        return
    except PermissionError:
        if not stat.S_ISREG(st.st_mode):
            raise
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                 dir_fd=dir_fd)
    try:
        clear_flags(fd)
    finally:
        os.close(fd)
    os.unlink(name, dir_fd=dir_fd)


def _clear_files(fd: int, dev: int) -> list[tuple[str, os.stat_result]]:
    """Unlink every non-directory in the open directory; return its subdirectories."""
    subdirs = []
    with os.scandir(fd) as it:
        for entry in it:
            try:
                st = os.stat(entry.name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(st.st_mode):
                _unlink(entry.name, fd, st)
            elif st.st_dev != dev:
                raise OSError(errno.EXDEV, f"{entry.name!r} is a mount point")
            else:
                subdirs.append((entry.name, st))
    return subdirs


def _remove(parent_fd: int, name: str) -> None:
    root = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    if not stat.S_ISDIR(root.st_mode):
        _unlink(name, parent_fd, root)
        return
    fd = _open_dir(name, parent_fd, root)
    stack: list[list] = [[name, root.st_ino, None]]        # name, inode, subdirs left to do
    try:
        while stack:
            top = stack[-1]
            if top[2] is None:
                top[2] = _clear_files(fd, root.st_dev)
            if top[2]:
                sub, st = top[2].pop()
                child = _open_dir(sub, fd, st)
                os.close(fd)
                fd = child
                stack.append([sub, st.st_ino, None])
                continue
            stack.pop()                                      # top is empty: up, then rmdir
            up = parent_fd if not stack else os.open("..", _DIR, dir_fd=fd)
            os.close(fd)
            fd = up
            if stack and os.fstat(fd).st_ino != stack[-1][1]:
                raise OSError(errno.ESTALE, "a directory moved while it was being removed")
            try:
                os.rmdir(top[0], dir_fd=fd)
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not stack:
                    raise
                stack[-1][2] = None                          # something new: list it again
            if not stack:
                fd = -1
    finally:
        if fd not in (-1, parent_fd):
            os.close(fd)


def remove_tree(path: str | os.PathLike) -> None:
    """Remove `path` and everything below it (see the module doc); a missing path is fine.
    Raises QpassError (one line) when the tree cannot be removed."""
    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(path)
    try:
        parent_fd = os.open(parent, _DIR)
    except FileNotFoundError:
        return
    except OSError as e:
        raise QpassError(f"could not remove {path}: {e.strerror or e}") from None
    try:
        for _ in range(3):                   # an entry that vanished meanwhile: walk again
            try:
                _remove(parent_fd, name)
            except FileNotFoundError:
                pass
            if not os.path.lexists(path):
                return
    except (OSError, RecursionError, MemoryError) as e:
        raise QpassError(f"could not remove {path}: {getattr(e, 'strerror', None) or e}") from None
    finally:
        os.close(parent_fd)
    raise QpassError(f"could not remove {path}: its entries keep changing")

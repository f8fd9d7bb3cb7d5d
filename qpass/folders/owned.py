"""The one rule for what qpass writes (DESIGN §6): folders and files it creates are its own.

  own_dir     a work folder is created with mkdir (exclusive, mode 0700) or, when it exists,
              opened with O_NOFOLLOW|O_DIRECTORY and checked on the descriptor: a real
              directory owned by this user, never a symlink to somebody's Documents
  lock_dir    an flock on a lock file inside such a folder, held for the run and released by
              the kernel when the process dies; a second holder is one OutputPathError naming
              the first one's PID
  clear_name  a name in an own folder made free for a new file: whatever is there is unlinked
              (a link itself, never what it points to)
  replacing   a user's output file (--json, --png, a study's results) written into a new file
              created exclusively next to it, then renamed over it: never written through, and
              never replacing, a symlink or a directory
  publish_new a finished file or folder renamed to a path that must not exist
              (RENAME_NOREPLACE: a dangling symlink planted there is not replaced)
  publish_modes  a finished output folder given the modes `cp` or save_pretrained leave
              (files 0666, folders 0777, less the umask): what qpass exports or saves is
              readable by a serving container running as another user; work folders are
              never published and stay 0700

A folder or file rewritten *while* qpass writes it by a running process of the same user is
outside the threat model; what a stranger can leave behind beforehand (a symlink, a folder
from a tarball, a lock file) is inside it."""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat
import uuid
from contextlib import contextmanager
from pathlib import Path

from qpass.errors import OutputPathError, UnsafeFileError

from .regular import _kind as special_kind

LOCK = "lock"
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2


def _kind(mode: int) -> str:
    """What an lstat mode is, in words (links and regular files too)."""
    if stat.S_ISLNK(mode):
        return "symbolic link"
    return "file" if stat.S_ISREG(mode) else special_kind(mode)


def own_dir(path, what: str = "work folder", private: bool = True) -> Path:
    """`path` as a directory qpass may write into: made here by mkdir when absent (mode 0700
    with `private`), else it must be a real directory (not a symlink: checked on a descriptor
    opened with O_NOFOLLOW) owned by this user; with `private` it is made 0700. Its parent
    is the user's choice and is created if missing. UnsafeFileError otherwise."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, 0o700 if private else 0o777)
    except FileExistsError:
        pass
    except OSError as e:
        raise OutputPathError(f"cannot create {what} {path}: {e.strerror}") from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        try:
            kind = _kind(os.lstat(path).st_mode)
        except OSError:
            kind = "directory"
        if kind == "directory":
            raise UnsafeFileError(f"{what} {path} cannot be opened ({e.strerror})") from None
        raise UnsafeFileError(
            f"{what} {path} is a {kind}, not a folder qpass made; qpass never writes through "
            f"or into anything else there: remove it (rm {path}"
            f"{', which removes the link only' if kind == 'symbolic link' else ''}) and rerun"
        ) from None
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid():
            raise UnsafeFileError(f"{what} {path} belongs to user id {st.st_uid}, not to you; "
                                  f"qpass writes only into folders of its own: remove it or "
                                  f"choose another output")
        if private and stat.S_IMODE(st.st_mode) != 0o700:
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return path


class DirLock:
    """An flock held on `path` (see lock_dir); release() or the process's end frees it."""

    def __init__(self, fd: int, path: Path):
        self.fd, self.path = fd, path

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)             # closing the descriptor drops the flock
            self.fd = None

    def __del__(self):
        self.release()


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    return f"PID {text}" if text.isdigit() else "a process that did not record its PID"


def lock_dir(directory, what: str, name: str = LOCK) -> DirLock:
    """An exclusive flock on `directory`/`name` (the directory checked by own_dir first; the
    file created with O_NOFOLLOW, holding this process's PID). OutputPathError at once when
    another process holds it: `what` names what is busy (e.g. "--out w4")."""
    directory = Path(directory)
    for _ in range(5):
        own_dir(directory)
        path = directory / name
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK |
                         os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            continue                      # a finishing run removed the folder just now
        except OSError as e:
            raise UnsafeFileError(f"lock file {path} cannot be opened ({e.strerror}): a link or "
                                  f"special file is there; remove {directory} and rerun") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise UnsafeFileError(f"lock file {path} is not a regular file; remove {directory} "
                                  f"and rerun")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise OutputPathError(f"{what} is being written by another qpass run ({holder}; "
                                  f"lock {path}); wait for it to finish or choose another "
                                  f"output") from None
        try:                              # a finishing run may have removed the file meanwhile
            now = os.lstat(path)
        except FileNotFoundError:
            now = None
        if now is None or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return DirLock(fd, path)
    raise OutputPathError(f"{what}: its lock {directory / name} keeps disappearing (another "
                          f"run finishing over and over?); rerun")


def clear_name(path) -> Path:
    """Make `path` (in a folder checked by own_dir) free for a new file: a file or link there
    is unlinked (the link itself, never its target); a directory is refused."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path
    if stat.S_ISDIR(st.st_mode):
        raise UnsafeFileError(f"{path} is a directory where qpass writes a file; remove it and "
                              f"rerun")
    os.unlink(path)
    return path


def remove_names(directory, names) -> None:
    """Unlink the entries `names` of `directory` that are not directories (links themselves,
    never their targets); absent ones are skipped."""
    for name in names:
        try:
            clear_name(Path(directory) / name)
        except UnsafeFileError:
            pass


def _renameat2(a, b, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available")
    at_fdcwd = -100
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(a))


def exchange_paths(a, b) -> None:
    """Swap two existing paths in one step (Linux renameat2 RENAME_EXCHANGE); OSError where
    the kernel or filesystem cannot."""
    _renameat2(a, b, _RENAME_EXCHANGE)


def publish_new(tmp, out) -> None:
    """Rename `tmp` to `out`, which must not exist: FileExistsError if anything is there, a
    dangling symlink included (RENAME_NOREPLACE; where the kernel lacks it, a hard link for a
    file, else a check with lexists just before the rename)."""
    try:
        _renameat2(tmp, out, _RENAME_NOREPLACE)
        return
    except OSError as e:
        if e.errno not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise
    if os.path.isfile(tmp) and not os.path.islink(tmp):
        try:
            os.link(tmp, out)             # fails on anything at `out`, never follows it
            os.unlink(tmp)
            return
        except OSError as e:
            if e.errno == errno.EEXIST:
                raise
    if os.path.lexists(out):
        raise FileExistsError(errno.EEXIST, "File exists", str(out))
    os.rename(tmp, out)


def check_replaceable(path, flag: str) -> Path:
    """`path` as an output file qpass may (re)write: absent, or a regular file; a symlink
    (dangling or not) or anything else is OutputPathError."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return path
    if not stat.S_ISREG(st.st_mode):
        kind = _kind(st.st_mode)
        raise OutputPathError(f"{flag} {path}: is a {kind}; qpass writes its outputs as new "
                              f"files and never writes through or replaces a "
                              f"{'link' if kind == 'symbolic link' else kind}: choose another "
                              f"path")
    return path


@contextmanager
def replacing(path, flag: str = "output"):
    """Yield a new file's path next to `path` (created exclusively, same suffix) to write the
    output into; on success it is fsynced and renamed over `path` (check_replaceable first,
    again just before the rename); on failure it is removed."""
    path = Path(path).absolute()
    check_replaceable(path, flag)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".qpass-tmp-{uuid.uuid4().hex[:8]}-{path.name}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    os.close(fd)
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        check_replaceable(path, flag)
        os.replace(tmp, path)             # replaces a regular file; never follows a link
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass


def write_output(path, data: str | bytes, flag: str = "output") -> Path:
    """`data` written to the output file `path` through replacing()."""
    with replacing(path, flag) as tmp:
        with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
    return Path(path)


def current_umask() -> int:
    """The process's umask, read where Linux shows it (/proc/self/status) so that it is never
    changed; elsewhere set and put back at once."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish_modes(directory) -> None:
    """Give the folder `directory` (a finished output of this process, about to be moved into
    place) and everything in it the modes a plain `cp` or save_pretrained gives: regular files
    0o666 & ~umask, folders 0o777 & ~umask (0644 / 0755 under umask 022), whatever the writer
    created them with (safetensors writes 0600; atomic_dir's temporary is 0700 while it
    fills). Links and special files are left alone (lstat); folders deepest first."""
    mask = current_umask()
    for root, dirs, files in os.walk(directory, topdown=False):
        for name in files + dirs:
            path = os.path.join(root, name)
            mode = os.lstat(path).st_mode
            if stat.S_ISREG(mode):
                os.chmod(path, 0o666 & ~mask)
            elif stat.S_ISDIR(mode):
                os.chmod(path, 0o777 & ~mask)
    os.chmod(directory, 0o777 & ~mask)

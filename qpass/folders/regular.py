"""Regular files inside a folder, read with a size cap (DESIGN §6).

A file qpass reads from a folder (an HF model directory, a compiled checkpoint, a resume work
folder, a calibration or eval-data folder) must be a regular file whose real path lies inside
the folder: a symlink may point elsewhere in the folder, never out of it (to ~/.ssh, /dev/zero,
another user's files); devices, FIFOs and sockets are refused before they are opened, so
nothing can make a read hang. The folder the user names is the trust anchor: it is resolved
once (a symlinked model directory is the user's own choice), its contents are not trusted.

One exception keeps the Hugging Face cache working: a snapshot directory
`models--ORG--NAME/snapshots/REV/` holds symlinks to `../../blobs/HASH`, so for such a folder
the repository's `blobs/` directory is inside too.

The file is opened by its resolved path with O_NOFOLLOW|O_NONBLOCK and checked with fstat on
the open descriptor, so a FIFO cannot block the open and a symlink swapped in after the check
fails to open. A folder rewritten *while* qpass reads it (a running attacker process on the
same machine) is outside the threat model."""
from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from qpass.errors import UnsafeFileError

# Size caps for metadata reads, by kind (bytes). Generous for real models: the largest known
# tokenizer.json is ~33 MB (Gemma), sharded indexes of 600B models ~10 MB, and a compiled
# manifest of a 100B MoE holds one graph node per expert linear.
CAPS = {
    "sums": 4 << 10,             # SHA256SUMS: one line
    "config": 4 << 20,           # config.json, generation_config.json, progress.json
    "index": 64 << 20,           # model.safetensors.index.json
    "tokenizer": 64 << 20,       # each tokenizer file
    "manifest": 256 << 20,       # a compiled checkpoint's manifest.json
    "data": 256 << 20,           # eval data, calibration texts, study files (per file)
}


def check_name(name: str, what: str = "file") -> str:
    """`name` as a plain name of a file in a folder (no separator, not '.', '..', not hidden),
    else UnsafeFileError: names read from files never choose a path."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or "\0" in name \
            or name in (".", "..") or name.startswith("."):
        raise UnsafeFileError(f"bad {what} name {str(name)[:80]!r}: a file name inside the folder "
                              f"is expected (no path separators, not hidden)")
    return name


def allowed_roots(folder) -> list[Path]:
    """The real directories a file of `folder` may resolve into: the folder itself and, for a
    Hugging Face cache snapshot, its repository's blobs/ directory."""
    root = Path(os.path.realpath(folder))
    roots = [root]
    if root.parent.name == "snapshots" and (root.parent.parent / "blobs").is_dir():
        roots.append(Path(os.path.realpath(root.parent.parent / "blobs")))
    return roots


def _inside(real: Path, roots: list[Path]) -> bool:
    return any(real == r or r in real.parents for r in roots)


def regular_file(path, folder, what: str = "file") -> Path:
    """The real path of `path` after checking it is a regular file inside `folder` (no FIFO,
    device or socket; no symlink out of the folder). UnsafeFileError otherwise;
    FileNotFoundError (unchanged) when it does not exist."""
    path = Path(path)
    real = Path(os.path.realpath(path))
    if not _inside(real, allowed_roots(folder)):
        raise UnsafeFileError(f"{what} {path} resolves to {real}, outside the folder {folder}; "
                              f"qpass reads only files inside the folder (replace the link with "
                              f"the file itself)")
    try:
        st = os.stat(real)                 # lstat would do: real has no symlink component
    except FileNotFoundError:
        if os.path.islink(path):
            raise UnsafeFileError(f"{what} {path} is a link to nothing ({real}); replace it "
                                  f"with the file itself") from None
        raise
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFileError(f"{what} {path} is not a regular file (a "
                              f"{_kind(st.st_mode)}); qpass reads only regular files")
    return real


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISSOCK, "socket")):
        if test(mode):
            return name
    return "special file"


def open_regular(path, folder, what: str = "file") -> int:
    """A read-only descriptor of the regular file `path` inside `folder` (checked on the open
    descriptor too, so nothing swapped in after the check is read)."""
    real = regular_file(path, folder, what)
    try:
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise UnsafeFileError(f"cannot open {what} {path}: {e.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafeFileError(f"{what} {path} is not a regular file")
    return fd


def read_bytes(path, folder, cap: int, what: str = "file") -> bytes:
    """The bytes of a regular file inside `folder`, refused when larger than `cap` (checked
    before reading, and again while reading: a file that grows is cut off, not followed)."""
    fd = open_regular(path, folder, what)
    try:
        size = os.fstat(fd).st_size
        if size > cap:
            raise UnsafeFileError(f"{what} {path} is {size:,} bytes, over qpass's cap of "
                                  f"{cap:,} for this kind of file; it cannot be what it claims")
        chunks, total = [], 0
        while True:
            chunk = os.read(fd, min(1 << 20, cap + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > cap:
                raise UnsafeFileError(f"{what} {path} grew past qpass's cap of {cap:,} bytes "
                                      f"while being read")
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_text(path, folder, cap: int, what: str = "file") -> str:
    """read_bytes decoded as UTF-8 (one UnsafeFileError when it is not UTF-8)."""
    try:
        return read_bytes(path, folder, cap, what).decode("utf-8")
    except UnicodeDecodeError as e:
        raise UnsafeFileError(f"{what} {path} is not UTF-8 text (byte {e.start})") from None


def sha256_file(path, folder, what: str = "file") -> str:
    """sha256 of a regular file inside `folder` (no cap: weights are large; a regular file
    ends, so the read is bounded by its size)."""
    fd = open_regular(path, folder, what)
    h = hashlib.sha256()
    try:
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
    finally:
        os.close(fd)
    return h.hexdigest()

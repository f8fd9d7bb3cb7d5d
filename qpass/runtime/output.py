"""Output paths checked before any compute (DESIGN §6, §9): a command that would fail to write
its result after an hour of GPTQ fails in its first second instead, with one line that names
the flag, the path and what to do.

check_output_dir: a checkpoint directory (--out): not under /proc, /sys or /dev, no existing
  path component is a file, the nearest existing ancestor accepts a new file (a probe file is
  created and removed: this catches read-only mounts, permissions and full inode tables), and
  the target itself is absent, empty or a qpass checkpoint holding only what qpass wrote.
check_output_file: a result file (--json, --png): the same, and the path is not a directory, not
  a symlink (dangling or not: qpass never writes through one) and not a file of a qpass
  checkpoint; write it with qpass.folders.owned.replacing / write_output.
  With overwrite=False (qpass quantize without --overwrite, Pipeline.run's default) an
  existing qpass checkpoint is refused too, naming what it holds (check_not_replacing).
check_output_folder: a folder of results (qpass study --out): a writable place, a directory.
check_new_output: an output that must not exist yet (qpass export's directory or file).
check_free_space: enough free bytes on the target's filesystem for an estimated size."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from qpass.errors import CheckpointError, OutputPathError
from qpass.folders.owned import check_replaceable
from qpass.runtime import checkpoint

_PSEUDO_FS = ("/proc", "/sys", "/dev")


def _nearest_existing(path: Path, flag: str) -> Path:
    """The deepest existing ancestor of `path` (a dangling link counts as existing); every
    existing component must be a directory."""
    cur = path
    while not os.path.lexists(cur):
        cur = cur.parent
    if not cur.is_dir():
        what = "a dangling symbolic link" if cur.is_symlink() else "a file"
        raise OutputPathError(f"{flag} {path}: {cur} is {what}, not a directory; choose a path "
                              f"whose parents are directories")
    return cur


def _check_writable_place(path: Path, flag: str) -> None:
    real = Path(os.path.realpath(path))
    for top in _PSEUDO_FS:
        if real == Path(top) or Path(top) in real.parents:
            raise OutputPathError(f"{flag} {path}: {top} is a kernel pseudo-filesystem, not a "
                                  f"place for outputs; choose a directory on a real disk")
    anc = _nearest_existing(path.parent if os.path.lexists(path) else path, flag)
    try:
        fd, probe = tempfile.mkstemp(prefix=".qpass-probe-", dir=anc)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputPathError(f"{flag} {path}: cannot create files in {anc} ({e.strerror}); "
                              f"choose a writable location") from None


def check_output_dir(path, flag: str = "--out", overwrite: bool = True,
                     preset_of=None) -> Path:
    out = Path(path).absolute()
    _check_writable_place(out, flag)
    try:
        checkpoint.check_target(out)
    except CheckpointError as e:
        raise OutputPathError(f"{flag}: {e}") from None
    if not overwrite:
        check_not_replacing(out, flag, "pass --overwrite to replace it", preset_of)
    return out


def check_not_replacing(path, flag: str, how: str, preset_of=None) -> None:
    """Refuse a `path` that already holds a qpass checkpoint: a run never silently replaces
    another one's result (an hour of GPTQ by a minute of RTN); the user asks for it
    (`--overwrite`, `overwrite=True`: `how` says which). The line names what is there
    (checkpoint.describe; `preset_of` as there)."""
    what = checkpoint.describe(path, preset_of)
    if what is not None:
        where = f"{flag}{path}" if flag.endswith("=") else f"{flag} {path}"
        raise OutputPathError(f"{where} already holds a qpass checkpoint ({what}); {how}, or "
                              f"choose another output directory (nothing was written)")


def check_output_folder(path, flag: str = "--out") -> Path:
    """A folder of results (qpass study's --out): a writable place whose existing components
    are directories; what may already be inside is the command's own rule."""
    out = Path(path).absolute()
    _check_writable_place(out, flag)
    if os.path.lexists(out) and (out.is_symlink() or not out.is_dir()):
        raise OutputPathError(f"{flag} {out}: exists and is not a directory; give a directory")
    return out


def check_output_file(path, flag: str = "--json") -> Path:
    out = Path(path).absolute()
    if out.is_dir() and not out.is_symlink():
        raise OutputPathError(f"{flag} {out}: is a directory; give a file name, e.g. "
                              f"{out / 'results.json'}")
    _check_writable_place(out, flag)               # first: a parent that is a file is named
    check_replaceable(out, flag)                   # no symlink (dangling or not), no FIFO
    ours = checkpoint.qpass_files(out.parent)
    if ours is not None and out.name in ours:
        raise OutputPathError(f"{flag} {out}: is part of the qpass checkpoint in {out.parent}; "
                              f"write results elsewhere (e.g. {out.parent / 'eval' / 'results.json'})")
    return out


def check_new_output(path, flag: str = "--out") -> Path:
    """An output that must not exist yet (an exported directory or file): a writable place
    (as check_output_dir) and nothing at the path, not even a dangling symlink."""
    out = Path(path).absolute()
    if os.path.lexists(out):
        link = " (a symbolic link, which qpass never replaces)" if out.is_symlink() else ""
        raise OutputPathError(f"{flag} {out}: already exists{link}; choose a new name (nothing "
                              f"was written)")
    _check_writable_place(out, flag)
    return out


def check_free_space(path, need_bytes: int, flag: str = "--out") -> None:
    anc = _nearest_existing(Path(path).absolute(), flag)
    free = shutil.disk_usage(anc).free
    if free < need_bytes:
        from qpass.display.units import fmt_bytes
        raise OutputPathError(f"{flag} {path}: the output needs about {fmt_bytes(need_bytes)} "
                              f"but {anc} has {fmt_bytes(free)} free; free space or choose "
                              f"another disk")

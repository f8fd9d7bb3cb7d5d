"""The work folder of a run that writes OUT (DESIGN §6, §12): `.OUT.qpass-stream` next to OUT.

It is qpass's own: made by mkdir (mode 0700), or — left by an interrupted run — a real
directory of this user (qpass.folders.owned.own_dir: a symlink, a file or another user's
folder there is one error, and nothing is written through it). It is locked for the run: an
flock on its `lock` file, which the kernel releases when the process dies, so a second run
writing the same OUT (streamed or in memory) is one OutputPathError at once, naming the
first run's PID. Only files of closed names (NAMES) are ever written, read back or removed
there; the streamed form keeps its stage shards, boundary caches and resume records in it
(disk_store.py, resume.py). When the run ends the folder goes, unless it holds a resumable
state (or files qpass did not write, which are left alone).

Within one thread the lock is re-entrant: the CLI takes it before loading the model and the
run's store takes it again; another thread or process gets the error."""
from __future__ import annotations

import os
import re
import threading
from contextlib import contextmanager
from pathlib import Path

from qpass.folders.owned import LOCK, lock_dir, remove_names

SUFFIX = ".qpass-stream"
# every name qpass writes in a work folder; anything else there is not its own
NAMES = re.compile(r"(stage-\d{5}\.safetensors|cache-\d{5}\.pt|globals\.safetensors"
                   r"|progress\.json(\.tmp)?|learned-rotation\.pt(\.tmp)?|lock)\Z")

_held: dict[tuple[str, int], list] = {}       # (folder, thread) -> [DirLock, holders]
_guard = threading.Lock()


def work_path(out) -> Path:
    out = Path(out).absolute()
    return out.parent / f".{out.name}{SUFFIX}"


class WorkFolder:
    """The work folder of output `out`; acquire() checks and locks it, release() unlocks
    it (and removes it when nothing resumable is left)."""

    def __init__(self, out):
        self.out = Path(out).absolute()
        self.path = work_path(self.out)
        self._key = None

    def acquire(self) -> "WorkFolder":
        key = (str(self.path), threading.get_ident())
        with _guard:
            if key in _held:
                _held[key][1] += 1
            else:
                _held[key] = [lock_dir(self.path, f"{self.out}"), 1]
        self._key = key
        return self

    def release(self) -> None:
        """Drop this holder; the last one removes the lock file, and the folder if nothing
        else is left (a completed or a not-yet-started run), then unlocks."""
        if self._key is None:
            return
        with _guard:
            entry = _held[self._key]
            entry[1] -= 1
            if entry[1] == 0:
                del _held[self._key]
                remove_names(self.path, [LOCK])   # still locked: a waiter re-checks it
                try:
                    os.rmdir(self.path)           # only when empty: state and strangers stay
                except OSError:
                    pass
                entry[0].release()
        self._key = None

    def clear(self) -> None:
        """Remove every file of qpass's names except the lock (the run's state), never
        following a link; other entries stay."""
        remove_names(self.path, [n for n in os.listdir(self.path)
                                 if NAMES.match(n) and n != LOCK])

    def __del__(self):
        try:
            self.release()
        except Exception:         # interpreter shutdown; the kernel drops the flock anyway
            pass


@contextmanager
def hold(out):
    """The work folder of `out` locked for the block (re-entrant within the thread)."""
    folder = WorkFolder(out).acquire()
    try:
        yield folder
    finally:
        folder.release()

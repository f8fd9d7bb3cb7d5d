"""The one progress facility: every step longer than a few seconds says it is alive.

    with progress.phase("eval", total=len(tasks), unit="tasks") as ph:
        for t in tasks:
            ph.describe(t)          # what the current item is
            ...
            ph.advance()

Phases nest (a stage loop inside a study, sampling steps inside an eval task); the phase
that opens first while nothing reports owns the display until it closes. Where it goes:

- stderr is a terminal: rich bars (one per open phase; an inner one disappears when done);
- stderr is not a terminal (`> log 2>&1`): one line per event, written and flushed on
  stderr: the owning phase's start and end, and between them at most one status line every
  `every` seconds (default 10; a heartbeat thread writes one during a long step too):
      qpass: quantize 3/26 stages (block 2: GPTQ) › GPTQ 2/4 · 1m12s elapsed · ETA 4m50s
  ETA composes the open phases' fractions; items counted as done before the phase began
  (resumed stages, cached results) do not count towards the rate.

Who reports is decided by the session and each phase's `enabled`:
- session: the command line sets mode "on" (bars or lines) or "off" (--quiet) for its run
  (`session`); a library caller has mode "off" unless it asks;
- enabled=None: as the enclosing phase (or the session); False: this phase and everything
  inside it stay silent; True: at least bars on a terminal, even in a library call (what
  `Pipeline.run(progress=True)` has always done), never lines into a piped stderr unless the
  session asked for them.
Layer 0: imports nothing of qpass; rich only when bars are drawn."""
from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

DEFAULT_EVERY = 10.0
ENV_EVERY = "QPASS_PROGRESS_EVERY"   # seconds between status lines, when no flag says
PREFIX = "qpass:"
OFF, TTY, ON = "off", "tty", "on"    # silent; bars on a terminal only; bars or lines


@dataclass
class _Settings:
    mode: str = OFF
    every: float = DEFAULT_EVERY
    stream: object = None              # None: sys.stderr as it is when a display starts
    clock: Callable[[], float] = time.monotonic
    heartbeat: bool = True


_settings = _Settings()
_stack: list["Phase"] = []
_lock = threading.RLock()


def every_default() -> float:
    """Seconds between status lines: $QPASS_PROGRESS_EVERY, else 10."""
    raw = os.environ.get(ENV_EVERY)
    try:
        value = float(raw) if raw else DEFAULT_EVERY
    except ValueError:
        return DEFAULT_EVERY
    return value if value >= 0 else DEFAULT_EVERY


@contextlib.contextmanager
def session(enabled: bool = True, every: float | None = None, stream=None,
            clock: Callable[[], float] | None = None, heartbeat: bool = True) -> Iterator[None]:
    """What one command-line run sets: progress on (bars on a terminal, else lines) or off;
    `every` seconds between status lines (None: every_default()). Restored on exit."""
    global _settings
    before, depth = _settings, len(_stack)
    _settings = _Settings(mode=ON if enabled else OFF,
                          every=every_default() if every is None else float(every),
                          stream=stream, clock=clock or time.monotonic, heartbeat=heartbeat)
    try:
        yield
    finally:
        while len(_stack) > depth:              # a phase left open by an error: close it
            _stack[-1].close(ok=False)
        _settings = before


@dataclass(eq=False)
class Phase:
    """One step being counted: `done` of `total` `unit`s, `detail` naming the current item."""
    label: str
    total: int | None = None
    unit: str = ""
    done: int = 0
    mode: str = OFF
    detail: str = ""
    start: float = 0.0
    start_done: int = 0
    display: object = field(default=None, repr=False)   # the display it reports to, or None
    closed: bool = False

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.display is not None:
            self.display.changed(self)

    def describe(self, detail: str) -> None:
        self.detail = str(detail)
        if self.display is not None:
            self.display.changed(self)

    def set_total(self, total: int | None) -> None:
        self.total = total
        if self.display is not None:
            self.display.changed(self)

    def close(self, ok: bool = True) -> None:
        """End the phase (and any phase opened inside it and left open)."""
        with _lock:
            if self.closed:
                return
            while _stack and _stack[-1] is not self and self in _stack:
                _stack[-1].close(ok)
            self.closed = True
            if self in _stack:
                _stack.remove(self)
            if self.display is not None:
                self.display.closed(self, ok)

    # the fraction of this phase done, counting the open phase inside it
    def fraction(self, inner: float = 0.0) -> float | None:
        if not self.total:
            return None
        return min(1.0, max(0.0, (self.done + inner) / self.total))

    def text(self) -> str:
        if self.total is not None:
            count = f" {self.done}/{self.total}"
        else:
            count = f" {self.done}" if self.done else ""
        unit = f" {self.unit}" if self.unit and count else ""
        detail = f" ({self.detail})" if self.detail else ""
        return f"{self.label}{count}{unit}{detail}"


def _mode(enabled: bool | None) -> str:
    parent = _stack[-1].mode if _stack else _settings.mode
    if enabled is None:
        return parent
    if not enabled:
        return OFF
    return parent if parent == ON else TTY


def begin(label: str, total: int | None = None, unit: str = "", done: int = 0,
          enabled: bool | None = None) -> Phase:
    """Start a phase (close it with .close(); `phase` is the with-statement form). done: items
    already done when it starts (resumed, cached): shown, never counted in the rate."""
    with _lock:
        ph = Phase(label, total, unit, done, _mode(enabled), start=_settings.clock(),
                   start_done=done)
        parent = next((p.display for p in reversed(_stack) if p.display is not None), None)
        _stack.append(ph)
        if ph.mode != OFF:
            ph.display = parent if parent is not None else _new_display(ph)
            if ph.display is not None:
                ph.display.opened(ph)
        return ph


@contextlib.contextmanager
def phase(label: str, total: int | None = None, unit: str = "", done: int = 0,
          enabled: bool | None = None) -> Iterator[Phase]:
    ph = begin(label, total, unit, done, enabled)
    try:
        yield ph
    except BaseException:
        ph.close(ok=False)
        raise
    ph.close()


def say(message: str) -> None:
    """One line from a step that reports (a resumed run, a cache hit): a log line, or printed
    above the bars; nothing when no phase reports or the session is off."""
    with _lock:
        if _stack and _stack[-1].mode == OFF:
            return
        shown = next((p.display for p in reversed(_stack) if p.display is not None), None)
        if shown is not None:
            shown.say(message)
        elif _settings.mode == ON:
            stream = _settings.stream or sys.stderr
            _write(stream, f"{PREFIX} {message}")


def _write(stream, line: str) -> None:
    stream.write(line + "\n")
    stream.flush()


def _new_display(owner: Phase):
    stream = _settings.stream or sys.stderr
    tty = bool(getattr(stream, "isatty", lambda: False)())
    if tty:
        try:
            return Bars(owner, stream)
        except Exception:   # noqa: BLE001 - another live display (the caller's own) is active
            return None
    if owner.mode == ON:
        return Lines(owner, stream, _settings.every, _settings.clock,
                     heartbeat=_settings.heartbeat and _settings.clock is time.monotonic)
    return None


def duration(seconds: float) -> str:
    """12.3 -> '12s', 72 -> '1m12s', 3725 -> '1h02m'; under 10 s one decimal."""
    s = max(0.0, seconds)
    if s < 10:
        return f"{s:.1f}s"
    s = int(round(s))
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def eta(frames: list[Phase], now: float) -> float | None:
    """Seconds left, from the outermost frame with a total: its fraction done (with the open
    frames inside it) over the time it has run, leaving out what was done before it began."""
    inner = 0.0
    outer = None
    for ph in reversed(frames):
        f = ph.fraction(inner)
        if f is None:
            inner = 0.0
            continue
        inner, outer = f, ph
    if outer is None:
        return None
    f = inner
    f0 = outer.start_done / outer.total
    elapsed = now - outer.start
    if f - f0 <= 0 or f >= 1 or elapsed <= 0:
        return None
    return elapsed * (1 - f) / (f - f0)


class Lines:
    """Log lines on a stream that is not a terminal (module docstring)."""

    def __init__(self, owner: Phase, stream, every: float, clock, heartbeat: bool = True):
        self.owner, self.stream, self.every, self.clock = owner, stream, every, clock
        self.last = clock()
        self._stop = threading.Event()
        self._thread = None
        if heartbeat and every > 0:
            self._thread = threading.Thread(target=self._beat, name="qpass-progress",
                                            daemon=True)
            self._thread.start()

    def frames(self) -> list[Phase]:
        return [p for p in _stack if p.display is self]

    def status(self, now: float, frames: list[Phase] | None = None) -> str:
        frames = self.frames() if frames is None else frames
        line = f"{PREFIX} " + " › ".join(p.text() for p in frames)
        line += f" · {duration(now - self.owner.start)} elapsed"
        left = eta(frames, now)
        if left is not None and not self.owner.closed:
            line += f" · ETA {duration(left)}"
        return line

    def emit(self, line: str) -> None:
        self.last = self.clock()
        _write(self.stream, line)

    def tick(self, force: bool = False) -> None:
        with _lock:
            now = self.clock()
            if (force or now - self.last >= self.every) and not self.owner.closed:
                self.emit(self.status(now))

    def opened(self, ph: Phase) -> None:
        if ph is self.owner:
            self.emit(f"{PREFIX} {ph.text()} · started")
        else:
            self.tick()

    def changed(self, ph: Phase) -> None:
        self.tick()

    def closed(self, ph: Phase, ok: bool) -> None:
        if ph is not self.owner:
            self.tick()
            return
        self._stop.set()
        if ok:
            ph.detail = ""
            self.emit(self.status(self.clock(), [ph]) + " · done")

    def say(self, message: str) -> None:
        with _lock:
            self.emit(f"{PREFIX} {message}")

    def _beat(self) -> None:
        while not self._stop.wait(max(0.05, self.last + self.every - self.clock())):
            self.tick()


class Bars:
    """rich bars on a terminal: one per open phase, an inner one removed when it closes."""

    def __init__(self, owner: Phase, stream):
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)
        self.owner = owner
        self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), TimeRemainingColumn(),
                            console=Console(file=stream), transient=False)
        self.bar.start()
        self.tasks: dict[int, int] = {}

    @staticmethod
    def _description(ph: Phase) -> str:
        unit = f" {ph.unit}" if ph.unit else ""
        return f"{ph.label}{unit}" + (f": {ph.detail}" if ph.detail else "")

    def opened(self, ph: Phase) -> None:
        self.tasks[id(ph)] = self.bar.add_task(self._description(ph), total=ph.total,
                                               completed=ph.done)

    def changed(self, ph: Phase) -> None:
        task = self.tasks.get(id(ph))
        if task is not None:
            self.bar.update(task, completed=ph.done, total=ph.total,
                            description=self._description(ph))

    def closed(self, ph: Phase, ok: bool) -> None:
        task = self.tasks.pop(id(ph), None)
        if ph is self.owner:
            self.bar.stop()
        elif task is not None:
            self.bar.remove_task(task)

    def say(self, message: str) -> None:
        self.bar.console.print(message, soft_wrap=True, markup=False, highlight=False)

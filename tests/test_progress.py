"""qpass.display.progress on a fake clock: at most one status line every `every` seconds plus the
owning phase's start and end, ETA from the open phases' fractions (items done before a phase
began left out of the rate), who stays silent, bars only on a terminal."""
import io
import time

import pytest

from qpass.display import progress


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def _lines(stream) -> list[str]:
    return stream.getvalue().splitlines()


@pytest.fixture
def log():
    stream, clock = io.StringIO(), Clock()
    with progress.session(enabled=True, every=10, stream=stream, clock=clock):
        yield stream, clock
    assert progress._stack == []


def test_at_most_one_line_every_period_plus_start_and_end(log):
    stream, clock = log
    with progress.phase("quantize", total=10, unit="stages") as ph:
        assert _lines(stream) == ["qpass: quantize 0/10 stages · started"]
        for _ in range(9):                     # one stage a second: 9 s, under the period
            clock.t += 1
            ph.advance()
        assert len(_lines(stream)) == 1
        clock.t += 1                           # 10 s after the start line
        ph.describe("block 8: GPTQ")
        assert _lines(stream)[-1] == ("qpass: quantize 9/10 stages (block 8: GPTQ) · 10s "
                                      "elapsed · ETA 1.1s")
        clock.t += 5
        ph.advance()                           # 5 s after the last line: nothing
        assert len(_lines(stream)) == 2
    assert _lines(stream)[-1] == "qpass: quantize 10/10 stages · 15s elapsed · done"
    assert len(_lines(stream)) == 3


def test_eta_leaves_out_what_was_done_before_the_phase(log):
    stream, clock = log
    with progress.phase("study", total=10, unit="results", done=5) as ph:   # 5 from the cache
        clock.t += 20
        ph.advance()                           # 1 computed in 20 s, 4 left: 80 s
        assert _lines(stream)[-1].endswith("· 20s elapsed · ETA 1m20s")
        assert "study 6/10 results" in _lines(stream)[-1]


def test_eta_composes_the_open_phases(log):
    stream, clock = log
    with progress.phase("eval", total=2, unit="tasks") as outer:
        outer.describe("general")
        with progress.phase("elbo", total=4, unit="batches") as inner:
            clock.t += 10
            inner.advance()                    # 1/4 of task 1 of 2: 1/8 done in 10 s
    line = [ln for ln in _lines(stream) if "elbo" in ln][0]
    assert line == ("qpass: eval 0/2 tasks (general) › elbo 1/4 batches · 10s elapsed · "
                    "ETA 1m10s")


def test_only_the_owning_phase_announces_start_and_end(log):
    stream, clock = log
    with progress.phase("study", total=2):
        for _ in range(2):
            with progress.phase("quantize", total=3) as q:
                q.advance(3)
    assert [ln.rsplit("·", 1)[-1].strip() for ln in _lines(stream)] == ["started", "done"]


def test_every_zero_writes_each_event(tmp_path):
    stream, clock = io.StringIO(), Clock()
    with progress.session(every=0, stream=stream, clock=clock):
        with progress.phase("sampling", total=3, unit="steps") as ph:
            for _ in range(3):
                ph.advance()
    assert [ln.split(" · ")[0] for ln in _lines(stream)] == [
        "qpass: sampling 0/3 steps", "qpass: sampling 1/3 steps", "qpass: sampling 2/3 steps",
        "qpass: sampling 3/3 steps", "qpass: sampling 3/3 steps"]


def test_who_stays_silent():
    stream, clock = io.StringIO(), Clock()
    with progress.session(enabled=False, every=0, stream=stream, clock=clock):   # --quiet
        with progress.phase("eval", total=1) as ph:
            ph.advance()
        progress.say("resuming")
    with progress.session(every=0, stream=stream, clock=clock):
        with progress.phase("eval", total=1, enabled=False):        # progress=False
            with progress.phase("elbo", total=2) as inner:           # inherits: silent
                inner.advance()
    assert stream.getvalue() == ""
    # a library call (no session): True asks for bars, which a stream that is not a
    # terminal never gets; None follows the session, which is off
    with progress.phase("library", total=1, enabled=True) as ph:    # no session, no terminal
        ph.advance()
    with progress.phase("library", total=1) as ph:                  # no session: off
        ph.advance()
    assert progress._stack == []


def test_say_writes_one_line_and_errors_write_no_done_line(log):
    stream, clock = log
    with pytest.raises(KeyError):
        with progress.phase("quantize", total=3):
            progress.say("resuming: 2 of 3 stages done by an earlier run")
            raise KeyError("x")
    assert _lines(stream) == ["qpass: quantize 0/3 · started",
                              "qpass: resuming: 2 of 3 stages done by an earlier run"]


def test_a_phase_left_open_is_closed_with_its_parent_and_the_session(log):
    stream, clock = log
    outer = progress.begin("pipeline", total=1)
    progress.begin("RTN", total=5)              # a pass's task the pass never closed
    outer.close()
    assert progress._stack == []
    progress.begin("left open", total=1)        # the session closes it (fixture asserts)


def test_heartbeat_writes_during_a_long_step():
    stream = io.StringIO()
    with progress.session(every=0.05, stream=stream):
        with progress.phase("GPTQ", total=1):
            time.sleep(0.4)                      # no advance: the heartbeat speaks
    status = [ln for ln in _lines(stream) if ln.endswith("elapsed")]
    assert 2 <= len(status) <= 9 and status[0].startswith("qpass: GPTQ 0/1 · ")


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_bars_on_a_terminal():
    stream = FakeTerminal()
    with progress.session(every=0, stream=stream):
        with progress.phase("eval", total=2, unit="tasks") as ph:
            assert type(ph.display).__name__ == "Bars"
            with progress.phase("elbo", total=3) as inner:
                assert inner.display is ph.display
                inner.advance(3)
            ph.advance(2)
    out = stream.getvalue()
    assert "eval tasks" in out and "2/2" in out and "qpass:" not in out


@pytest.mark.parametrize("seconds,text", [(0.04, "0.0s"), (9.96, "10.0s"), (12.3, "12s"),
                                          (72, "1m12s"), (3725, "1h02m")])
def test_duration(seconds, text):
    assert progress.duration(seconds) == text

"""Issue 26 part 2, "no sign of life": real commands with stdout and stderr redirected to
files (`> log 2>&1`: not a terminal) say they are alive — a line at each phase's start and
end with N/total and the time elapsed, status lines between them at most every
--progress-every seconds (here 0: every event), none with --quiet — and name what they
wrote. One interpreter runs every command (qpass's import is most of a small command's
time): each gets its own files at the file-descriptor level, as a shell redirect does."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DRIVER = r"""
import json, os, sys
from qpass.cli.main import main
codes = {}
for name, argv in json.loads(sys.argv[1]):
    sys.stdout.flush(); sys.stderr.flush()
    with open(name + ".out", "wb") as out, open(name + ".err", "wb") as err:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            codes[name] = main(argv)
        except SystemExit as e:                  # argparse's usage errors
            codes[name] = e.code
        sys.stdout.flush(); sys.stderr.flush()
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
with open("codes.json", "w") as f:
    json.dump(codes, f)
"""

STUDY = """
[study]
name = "one"
[grid]
pipelines = ["fp"]
tasks = ["math"]
[[models]]
name = "tiny"
path = "tiny-llada"
[eval]
limit = 1
math_items = 1
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("progress")
    (d / "study.toml").write_text(STUDY)
    study = ["study", str(d / "study.toml"), "--out", str(d / "st"), "--no-plots"]
    commands = [
        ("eval", ["eval", "tiny-llada", "--tasks", "math", "--limit", "2",
                  "--json", str(d / "r.json")]),
        ("eval_every", ["eval", "tiny-llada", "--tasks", "math", "--limit", "1",
                        "--progress-every", "1000"]),
        ("eval_quiet", ["eval", "tiny-llada", "--tasks", "math", "--limit", "1", "--quiet"]),
        ("quantize", ["quantize", "tiny-llada", "--pipeline", "w4a16-gptq", "--out",
                      str(d / "w4"), "--calib-n", "2", "--seq-len", "32"]),
        ("trajectory", ["eval", "tiny-llada", "--trajectory", "w4a16-rtn", "--n-prompts", "1",
                        "--gen-length", "4", "--steps", "4", "--block-length", "4",
                        "--png", str(d / "t.png")]),
        ("study1", study), ("study2", study)]
    run_commands(d, commands, {"QPASS_PROGRESS_EVERY": "0"})
    return d


def run_commands(d: Path, commands: list, env: dict, prelude: str = "", timeout: int = 300,
                 check: bool = True) -> dict[str, int]:
    """Run `commands` ([(name, argv)]) in one interpreter in folder `d` (`prelude`: Python run
    first), each into its own NAME.out / NAME.err; their exit codes by name, all 0 if `check`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    r = subprocess.run([sys.executable, "-c", prelude + DRIVER, json.dumps(commands)], cwd=d,
                       env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    codes = json.loads((d / "codes.json").read_text())
    assert not check or codes == {name: 0 for name, _ in commands}, {
        n: (d / f"{n}.err").read_text()[-2000:] for n, c in codes.items() if c}
    return codes


def _err(d: Path, name: str) -> list[str]:
    return (d / f"{name}.err").read_text().splitlines()


def _progress(lines: list[str]) -> list[str]:
    return [ln for ln in lines if ln.startswith("qpass: ")]


ELAPSED = r" · \d+(\.\d)?s elapsed"


def test_eval_says_each_task_and_its_steps_and_names_the_json(runs):
    lines = _progress(_err(runs, "eval"))
    assert lines[0] == "qpass: eval 0/1 tasks · started"
    assert any(re.fullmatch(r"qpass: eval 0/1 tasks \(math\) › sampling \(llada\) [1-4]/4 steps"
                            + ELAPSED + r"( · ETA .*)?", ln) for ln in lines), lines
    assert re.fullmatch("qpass: eval 1/1 tasks" + ELAPSED + " · done", lines[-1]), lines
    assert f"wrote {runs / 'r.json'}" in _err(runs, "eval")
    assert "exact_match" in (runs / "eval.out").read_text()        # the table stays on stdout


def test_progress_every_and_quiet(runs):
    # a run shorter than --progress-every: its start and end only, the flag over the env
    lines = _progress(_err(runs, "eval_every"))
    assert len(lines) == 2 and lines[0].endswith("started") and lines[1].endswith("done"), lines
    assert _progress(_err(runs, "eval_quiet")) == []


def test_quantize_into_a_log_says_each_stage_and_where_it_saved(runs):
    err = _err(runs, "quantize")
    lines = _progress(err)
    assert lines[0] == "qpass: quantize 0/8 stages · started"
    assert any(re.match(r"qpass: quantize 3/8 stages \(block 2: GPTQ\) › GPTQ [0-4]/4 rounds"
                        + ELAPSED, ln) for ln in lines), lines
    assert re.fullmatch("qpass: quantize 8/8 stages" + ELAPSED + " · done", lines[-1]), lines
    assert any(ln.startswith(f"saved {runs / 'w4'} ") for ln in err), err


def test_trajectory_says_its_steps_and_where_the_png_went(runs):
    err = _err(runs, "trajectory")
    lines = _progress(err)
    assert "qpass: quantize 0/8 stages · started" in lines        # the pipeline it quantizes
    assert any(re.match(r"qpass: trajectory [1-5]/5 steps \(w4a16-rtn: ", ln) for ln in lines)
    assert re.fullmatch("qpass: trajectory 5/5 steps" + ELAPSED + " · done", lines[-1]), lines
    assert err[-1] == f"wrote {runs / 't.png'}"
    assert (runs / "t.png").read_bytes()[:4] == b"\x89PNG"


def test_study_counts_results_and_says_what_the_cache_serves(runs):
    first, second = _err(runs, "study1"), _err(runs, "study2")
    cache = runs / "st" / "cache"
    assert f"0 of 1 results from the cache ({cache}); 1 to compute" in first
    assert re.fullmatch("qpass: study 1/1 results" + ELAPSED + " · done",
                        _progress(first)[-1]), first
    assert f"1 of 1 results from the cache ({cache}); 0 to compute" in second
    assert _progress(second)[0] == "qpass: study 1/1 results · started"
    wrote = [ln for ln in second if ln.startswith("1 results (1 from the cache); wrote ")]
    assert len(wrote) == 1, second
    assert all(str(runs / "st" / name) in wrote[0]
               for name in ("results.json", "results.csv", "results.md")), wrote

"""Every `qpass ...` line of README.md's code blocks runs and prints something a person
recognises (issue 26: a user's first hour).

The commands are read from the README itself, in order, and run in one temporary folder, so
the checkpoint `qpass quantize ... --out w4/` writes is the one the later commands read. By
default they run at test sizes, each change listed in FAST below and nothing else changed:
the quantize preset w4a16-gptq becomes w4a16-rtn (GPTQ's calibration takes minutes on 2
cores; the lowering, saving and the generate/eval/export that follow are the same), `qpass eval`
scores fewer items, the trajectory comparison runs one short prompt, and the paper study runs
a cut-down copy of its config (same sections, one model, two pipelines, one task, few items).
`QPASS_README_FULL=1` runs the README's exact command lines instead (about an hour on 2 cores,
most of it the paper study). The commands on checkpoints a user brings (`./diffusiongemma-dir`,
`./llada2-dir`, `my_texts.jsonl`) run on the tiny random checkpoints of the same architectures
the tests build (tests/fixtures), put at those paths first; their generations are random
tokens, so for them the check is that the model's own sampler ran."""
import json
import os
import re
import shlex
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FULL = os.environ.get("QPASS_README_FULL") == "1"


def readme_commands(text: str) -> list[str]:
    """The `qpass ...` lines inside the README's fenced code blocks, comments stripped."""
    out, fenced, lines = [], False, iter(text.splitlines())
    for line in lines:
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif fenced and line.lstrip().startswith("qpass "):
            while line.rstrip().endswith("\\"):               # a continued command line
                line = line.rstrip()[:-1] + " " + next(lines, "")
            out.append(shlex.join(shlex.split(line, comments=True)))
    return out


def _small_study(config: Path, tmp: Path) -> Path:
    """The study config cut to test size: first model, FP + RTN W4, the general task, few items."""
    import tomllib                     # Python >= 3.11, as qpass.study needs
    cfg = tomllib.loads(config.read_text())
    m = cfg["models"][0]
    text = (f'[study]\nname = "{cfg["study"]["name"]}-readme-test"\nout = "study-out"\nseeds = [0]\n'
            f'[grid]\npipelines = ["fp", "w4a16-rtn"]\ntasks = ["general"]\n'
            f'[[models]]\nname = "{m["name"]}"\npath = "{m["path"]}"\n'
            f'[eval]\nlimit = 2\ntext_bytes = 1024\nn_mc = 1\ncloze_mc = 1\n'
            f'[calibration]\nn = 4\nseq_len = 64\n')
    path = tmp / "study-small.toml"
    path.write_text(text)
    return path


def fast(argv: list[str], tmp: Path) -> list[str]:
    """FAST: the test-size version of one README command line (see the module docstring)."""
    cmd = argv[1]
    argv = list(argv)
    if cmd == "quantize" and "--pipeline" in argv:
        i = argv.index("--pipeline") + 1
        argv[i] = argv[i].replace("w4a16-gptq", "w4a16-rtn")
    elif cmd == "eval" and "--trajectory" in argv:
        argv += ["--n-prompts", "1", "--gen-length", "8", "--steps", "8", "--block-length", "8",
                 "--calib-n", "4", "--seq-len", "64"]
    elif cmd == "eval":
        argv += ["--limit", "2", "--text-bytes", "1024", "--n-mc", "1"]
    elif cmd == "study":
        argv[2] = str(_small_study(ROOT / argv[2], tmp))
    return argv


def generated_text(stdout: str, prompt: str) -> str:
    """What `qpass generate` printed after the prompt, up to its separator line."""
    body = stdout.split("\n" + "-" * 40)[0]
    assert body.startswith(prompt), stdout
    return body[len(prompt):]


def readable(text: str) -> bool:
    """Words, not a newline and spaces: >= 4 words of letters, under 40% whitespace."""
    words = re.findall(r"[A-Za-z]{2,}", text)
    return len(words) >= 4 and sum(c.isspace() for c in text) < 0.4 * max(len(text), 1)


def test_readme_lists_the_commands_this_test_runs():
    cmds = readme_commands(README.read_text())
    assert {shlex.split(c)[1] for c in cmds} >= {"inspect", "quantize", "generate", "eval",
                                                  "export", "study", "backends"}
    assert any("--trajectory" in c for c in cmds)
    assert readme_commands("```bash\nqpass x --a 'b c'   # note\nmake demo\nqpass z \\\n"
                           "    --b 1\n```\nqpass y\n") == ["qpass x --a 'b c'", "qpass z --b 1"]


def user_checkpoints(tmp: Path) -> None:
    """The folders the README's bring-your-own-checkpoint lines name (module doc)."""
    import importlib.util
    import sys
    sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
    import diffusion_gemma
    diffusion_gemma.build(tmp / "diffusiongemma-dir")
    spec = importlib.util.spec_from_file_location(
        "_readme_rc_build", ROOT / "tests" / "fixtures" / "remote_code" / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    build.build("llada2", tmp / "llada2-dir")
    (tmp / "my_texts.jsonl").write_text("\n".join(
        json.dumps({"text": t}) for t in (ROOT / "qpass" / "ops.py").read_text().split("\n\n")))


def _as_is(path: Path) -> bool:
    return (path / "qpass_as_is.json").exists() or "-dir" in path.name


def check(argv: list[str], out: str, err: str, tmp: Path) -> None:
    """The per-command check that the output is the one a person expects."""
    cmd, text = argv[1], out + err
    assert text.strip(), "printed nothing"
    if cmd in ("quantize", "generate") and _as_is(tmp / argv[2]):
        if cmd == "quantize":
            out_dir = tmp / argv[argv.index("--out") + 1]
            assert (out_dir / "qpass_as_is.json").exists() and "saved" in text, text[-2000:]
        else:
            prompt = argv[argv.index("--prompt") + 1]
            assert generated_text(out, prompt) and "own sampler" in err, err
        return
    if cmd == "inspect" and "--format" in argv:
        assert json.loads(out), out[:500]
    elif cmd == "inspect":
        assert re.search(r"RTN|int4", text), text[:2000]
    elif cmd == "quantize":
        out_dir = tmp / argv[argv.index("--out") + 1]
        assert (out_dir / "manifest.json").exists() and "saved" in text, text[-2000:]
    elif cmd == "generate":
        prompt = argv[argv.index("--prompt") + 1]
        gen = generated_text(out, prompt)
        assert readable(gen), f"generated no words: {gen!r}"
        assert "forward passes" in err, err
    elif cmd == "eval" and "--trajectory" in argv:
        assert (tmp / argv[argv.index("--png") + 1]).stat().st_size > 0
    elif cmd == "eval":
        res = json.loads((tmp / argv[argv.index("--json") + 1]).read_text())
        assert {"general", "math", "code"} <= set(res["tasks"]), res
    elif cmd == "export":
        assert any((tmp / argv[argv.index("--out") + 1]).iterdir())
    elif cmd == "study":
        assert "wrote" in text and "results.json" in text and "w4a16" in text, text[-2000:]
    elif cmd == "backends":
        assert "reference" in text, text


def test_every_readme_command_runs_and_prints_what_a_user_expects(tmp_path, monkeypatch, capfd):
    """All in one test (one temporary folder, one checkpoint shared by the commands after
    `qpass quantize`), so parallel test workers never run the commands twice."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("QPASS_PROGRESS_EVERY", "3600")
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "_readme_rc_iso", ROOT / "tests" / "fixtures" / "remote_code" / "isolation.py")
    iso = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(iso)
    with iso.private_modules_cache(tmp_path / "hf_modules"):
        user_checkpoints(tmp_path)
        _run_all(tmp_path, capfd)


def _run_all(tmp_path, capfd) -> None:
    from qpass.cli import main
    failures, timings = [], []
    for line in readme_commands(README.read_text()):
        argv = shlex.split(line)
        argv = argv if FULL else fast(argv, tmp_path)
        t0 = time.perf_counter()
        rc = main(argv[1:])
        out, err = capfd.readouterr()
        timings.append(f"{time.perf_counter() - t0:5.1f}s  {shlex.join(argv)}")
        try:
            assert rc == 0, f"exit {rc}: {err[-2000:]}"
            check(argv, out, err, tmp_path)
        except AssertionError as e:
            failures.append(f"{shlex.join(argv)}\n    {e}")
    print("\n".join(timings))
    assert not failures, "\n".join(failures)

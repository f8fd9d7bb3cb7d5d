"""Issue 26 parts 4 and 5, "a user's first hour": the flags people bring from llm-compressor /
GPTQModel / torchao (--scheme, --bits, --group-size, --ignore), `qpass presets` and `qpass
schemes`, --device auto everywhere, `python -m qpass` (torchrun's form), and mistakes refused
in one line before any compute: an output path that cannot be written, a compiled folder
given to quantize, a qpass checkpoint at --out without --overwrite.

"Before any compute" is checked by replacing what computes (model loading, calibration,
Pipeline.run, evaluate, the study runner) with a function that fails the test, and by the
absence of progress lines, never by timing. One RTN checkpoint of tiny-llada is shared."""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import qpass
from qpass import presets
from qpass.cli import build_parser, main
from qpass.errors import OutputPathError, SpecError
from qpass.specs import SCHEMES, QuantSpec, Scheme

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "QPASS_PROGRESS_EVERY": "3600"}
COMPUTE = ("qpass.cli.quantize.load_model", "qpass.cli.quantize.build_calibration",
           "qpass.cli.eval.load_model", "qpass.cli.trajectory.load_model",
           "qpass.cli.inspect.load_model", "qpass.runtime.load_compiled",
           "qpass.study.run_study", "qpass.eval.runner.evaluate", "qpass.Pipeline.run")


@pytest.fixture(scope="module")
def ck(tmp_path_factory):
    """tiny-llada through the w4a16-rtn preset, by the CLI, with its stderr."""
    out = tmp_path_factory.mktemp("first-hour") / "w4"
    r = subprocess.run([sys.executable, "-m", "qpass.cli", "quantize", "tiny-llada", "--pipeline",
                        "w4a16-rtn", "--out", str(out)], env=ENV, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return out, r.stderr


@pytest.fixture
def no_compute(monkeypatch):
    """Everything that loads or computes fails the test when called."""
    def computed(*a, **k):
        raise AssertionError("computed before the mistake was refused")
    for target in COMPUTE:
        monkeypatch.setattr(target, computed)


def _one_line(capsys, rc) -> str:
    """The single stderr line of a refused command (argparse's usage lines aside)."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.strip().splitlines()
             if not ln.startswith("usage") and not ln.startswith(" ")]
    assert rc == 2 and len(lines) == 1, err
    assert "stages" not in err and "qpass: " not in err, err        # no progress: nothing ran
    return lines[0]


def _run(argv) -> int:
    try:
        return main(argv)
    except SystemExit as e:          # argparse's usage error
        return e.code


def _hashes(d: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir())}


# ---- 1. --scheme / --bits / --group-size / --ignore ------------------------------------
def test_scheme_flags_change_the_preset_scheme_end_to_end(ck, tmp_path, capsys):
    """--pipeline w4a16-rtn --scheme w4a16:g64 --ignore 'blocks.0.*': RTN's passes, groups of
    64 (scales of K/64 columns in the file), block 0 kept in float."""
    out = tmp_path / "r"
    shutil.copytree(ck[0], out)
    assert main(["quantize", "tiny-llada", "--pipeline", "w4a16-rtn", "--scheme", "w4a16:g64",
                 "--ignore", "blocks.0.*", "--out", str(out), "--overwrite", "--quiet"]) == 0
    m = json.loads((out / "manifest.json").read_text())
    assert [e["name"] for e in m["pipeline"]] == ["RTN", "Lower"]
    assert m["pipeline_scheme"]["weight"] == "int4:g64:sym"
    assert m["pipeline_scheme"]["overrides"] == [["blocks.0.*", None]]
    mods = m["graph"]["modules"]
    assert mods["blocks.0.q_proj"]["class"] == "Linear"                     # kept in float
    assert mods["blocks.1.q_proj"]["kwargs"]["weight_spec"] == "int4:g64:sym"
    k = mods["blocks.1.q_proj"]["kwargs"]["in_features"]
    scales = load_file(out / "model.safetensors")["blocks.1.q_proj.scales"]
    assert scales.numel() == mods["blocks.1.q_proj"]["kwargs"]["out_features"] * k // 64


def _pipeline_of(argv):
    from qpass.cli import scheme_args
    from qpass.cli.common import resolve_pipeline
    args = build_parser().parse_args(["quantize", "tiny-llada", "--out", "x", *argv])
    scheme_args.check_conflicts(args, args.parser)
    return scheme_args.pipeline(args, resolve_pipeline)


def test_flags_alone_run_gptq_and_compose_with_a_preset():
    pipe = _pipeline_of(["--bits", "3", "--group-size", "32"])     # GPTQModel's knobs
    assert [p.name for p in pipe.passes] == ["GPTQ"] and pipe.passes[0].act_order
    assert pipe.scheme().weight == QuantSpec(3, granularity="group", group_size=32)
    assert pipe.passes[0].scheme.weight == pipe.scheme().weight
    pipe = _pipeline_of(["--scheme", "W8A8"])                     # llm-compressor's spelling
    assert [p.name for p in pipe.passes] == ["FuseNorms", "GPTQ", "ObserveActivations"]
    assert pipe.scheme().act == QuantSpec.parse("int8:token:dyn")
    pipe = _pipeline_of(["--pipeline", "q4_0-rtn", "--group-size", "-1"])   # per channel
    assert pipe.passes[0].scheme.weight == QuantSpec.parse("int4:channel:signed:f16scale")
    pipe = _pipeline_of(["--pipeline", "w4a4-quarot", "--bits", "3", "--ignore", "role:linear"])
    assert [p.name for p in pipe.passes] == ["FuseNorms", "Rotate", "GPTQ", "ObserveActivations"]
    assert pipe.passes[2].scheme.weight.bits == 3 and pipe.passes[2].scheme.act.bits == 4
    assert pipe.passes[2].scheme.spec_for("blocks.0.q_proj", "linear")[0] is None


def test_pipeline_with_scheme_keeps_a_pass_with_its_own():
    pipe = qpass.Pipeline([qpass.passes.RTN(), qpass.passes.ObserveActivations("int8:tensor")],
                          scheme="w4a16").with_scheme("w3a16g128")
    assert pipe.passes[0].scheme.weight.bits == 3
    assert str(pipe.passes[1].scheme.act) == "int8:tensor"


def test_scheme_names_take_weight_spec_tokens():
    assert Scheme.parse("w4a16:g64").weight == QuantSpec(4, granularity="group", group_size=64)
    assert Scheme.parse("q4_0:g64").weight == QuantSpec.parse("int4:g64:sym:signed:f16scale")
    # the grid token brings back the full grid q4_0 meant before llama.cpp's became its default
    assert Scheme.parse("q4_0:full").weight == QuantSpec.parse("int4:g32:sym:f16scale")
    assert Scheme.parse("w4a4kv8:g128").attn.bits == 8
    assert Scheme.parse("w8a8:asym").weight == QuantSpec(8, symmetric=False)
    for bad, says in (("w4a16:g64:g32", "twice"), ("w4a16:nope", "unknown token"),
                      ("w5a16", "unknown scheme")):
        with pytest.raises(SpecError, match=says):
            Scheme.parse(bad)


@pytest.mark.parametrize("argv,says", [
    (["--scheme", "w4a16", "--bits", "3"], "--bits 3 with --scheme w4a16"),
    (["--bits", "9"], "--bits: expected weight bits from 1 to 8"),
    (["--group-size", "0"], "--group-size: expected a positive group size"),
    ([], "give --pipeline PRESET"),
    (["--scheme", "w5a16"], "unknown scheme 'w5a16'"),
    (["--pipeline", "w4a4-quarot", "--scheme", "w4a16"], "no activation spec to observe"),
])
def test_conflicting_or_wrong_scheme_flags_are_one_line(tmp_path, capsys, no_compute, argv, says):
    line = _one_line(capsys, _run(["quantize", "tiny-llada", "--out", str(tmp_path / "o"), *argv]))
    assert says in line, line
    assert not (tmp_path / "o").exists()


def test_an_ignore_pattern_that_matches_nothing_is_one_line(tmp_path, capsys, monkeypatch):
    def computed(*a, **k):
        raise AssertionError("calibrated before --ignore was checked")
    monkeypatch.setattr("qpass.cli.quantize.build_calibration", computed)
    monkeypatch.setattr("qpass.Pipeline.run", computed)
    line = _one_line(capsys, main(["quantize", "tiny-llada", "--scheme", "w4a16", "--ignore",
                                   "lm_head", "--out", str(tmp_path / "o")]))
    assert "--ignore 'lm_head' matches no linear" in line and "blocks.0.q_proj" in line


# ---- 2. qpass presets, qpass schemes ---------------------------------------------------
def test_presets_and_schemes_list_one_plain_line_each(capsys):
    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["preset", "bits", "passes", "matches"]
    assert [ln.split()[0] for ln in lines[1:]] == presets.names()
    assert set(presets.ABOUT) == set(presets.names())
    row = dict((ln.split()[0], ln) for ln in lines[1:])
    assert re.search(r"w4a16 g128\s+GPTQ\s+GPTQ \(Frantar", row["w4a16-gptq"])
    assert "FuseNorms → Rotate → GPTQ → ObserveActivations" in row["w4a4-quarot"]
    assert "QuaRot" in row["w4a4-quarot"] and "\x1b[" not in "".join(lines)   # no colours
    assert main(["schemes"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    from qpass.cli.schemes import ABOUT
    assert [ln.split()[0] for ln in lines[1:]] == list(SCHEMES) and set(ABOUT) == set(SCHEMES)
    assert re.search(r"^q4_0\s+w4a16 g32\s+int4:g32:sym:signed:f16scale\s+float\s+llama.cpp Q4_0",
                     "\n".join(lines), re.M)


# ---- 3. --device auto everywhere -------------------------------------------------------
def test_device_defaults_to_auto_in_every_command_and_is_said_once(ck, monkeypatch):
    from qpass.cli.common import resolve_device
    ap = build_parser()
    for argv in (["quantize", "m", "--out", "o"], ["eval", "m"], ["generate", "m", "--prompt", "a"],
                 ["inspect", "m"]):
        assert ap.parse_args(argv).device == "auto", argv
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == "cuda"
    said = re.findall(r"^device (cpu|cuda\S*) \(--device auto", ck[1], re.M)
    assert len(said) == 1, ck[1]


# ---- 4. python -m qpass, torchrun -m qpass ---------------------------------------------
@pytest.mark.timeout(600)
def test_python_m_qpass_and_torchrun_m_qpass_quantize(ck, tmp_path):
    r = subprocess.run([sys.executable, "-m", "qpass", "schemes"], env=ENV, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "w4a16g128" in r.stdout, r.stderr
    # DESIGN §12's form; a checkpoint directory (the zoo's own), loaded on each of 2 gloo ranks
    zoo = Path(qpass.__file__).parent / "zoo" / "tiny-llada"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                        "--master-port", "29533", "-m", "qpass", "quantize", str(zoo),
                        "--pipeline", "w4a16-rtn", "--out", str(tmp_path / "dp"), "--device",
                        "cpu", "--quiet"], env=ENV, capture_output=True, text=True, timeout=500)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = load_file(ck[0] / "model.safetensors"), load_file(tmp_path / "dp" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- 5. mistakes refused in one line before any compute --------------------------------
def _outputs(tmp: Path, ck: Path):
    blocked = tmp / "FILE" / "sub"          # a path under a regular file
    study = tmp / "study.toml"
    study.write_text('[study]\nname = "s"\n[grid]\npipelines = ["fp"]\ntasks = ["math"]\n'
                     '[[models]]\nname = "t"\npath = "tiny-llada"\n')
    return [
        (["quantize", "tiny-llada", "--pipeline", "w4a16-rtn", "--out", str(blocked)], "--out"),
        (["eval", "tiny-llada", "--json", str(blocked / "r.json")], "--json"),
        (["eval", "tiny-llada", "--trajectory", "w4a16-rtn", "--json", str(blocked / "t.json")],
         "--json"),
        (["eval", "tiny-llada", "--trajectory", "w4a16-rtn", "--png", str(blocked / "t.png")],
         "--png"),
        (["inspect", "tiny-llada", "--outliers", "--pipeline", "w4a4-quarot", "--png",
          str(blocked / "o.png")], "--png"),
        (["inspect", "tiny-llada", "--png", str(tmp / "o.png")], "--png plots --outliers"),
        (["export", str(ck), "--format", "gptq", "--out", str(blocked)], "--out"),
        (["study", str(study), "--out", str(blocked), "--no-plots"], "--out"),
        (["study", str(study), "--out", "/proc/qpass-study", "--no-plots"], "pseudo-filesystem"),
    ]


def test_every_output_path_is_checked_before_compute(ck, tmp_path, capsys, no_compute):
    (tmp_path / "FILE").write_text("a file")
    for argv, says in _outputs(tmp_path, ck[0]):
        line = _one_line(capsys, _run(argv))
        assert says in line, (argv, line)
    assert (tmp_path / "FILE").read_text() == "a file" and not (tmp_path / "o.png").exists()


def test_a_compiled_folder_given_to_quantize_is_refused_at_once(ck, tmp_path, capsys, no_compute):
    line = _one_line(capsys, main(["quantize", str(ck[0]), "--pipeline", "w4a16-gptq", "--out",
                                   str(tmp_path / "again")]))
    assert f"{ck[0]} is already a qpass compiled checkpoint (preset w4a16-rtn: RTN → Lower" in line
    assert "quantize the original model" in line and "qpass export" in line
    assert "graph_vocab" not in line and not (tmp_path / "again").exists()


def test_an_existing_checkpoint_at_out_needs_overwrite(ck, tmp_path, capsys, no_compute):
    before = _hashes(ck[0])
    line = _one_line(capsys, main(["quantize", "tiny-llada", "--pipeline", "w4a16-gptq", "--out",
                                   str(ck[0])]))
    assert re.search(r"--out .*w4 already holds a qpass checkpoint \(preset w4a16-rtn: RTN → "
                     r"Lower, scheme w4a16g128, written \d{4}-\d\d-\d\d \d\d:\d\d\); pass "
                     r"--overwrite to replace it", line), line
    assert _hashes(ck[0]) == before


def test_the_python_api_refuses_too_unless_overwrite(ck, tmp_path, monkeypatch):
    out = tmp_path / "w4"
    shutil.copytree(ck[0], out)
    monkeypatch.setattr("qpass.pipeline.executor.Executor.run",
                        lambda self: pytest.fail("computed before out= was checked"))
    model = qpass.models.load("tiny-llada")
    with pytest.raises(OutputPathError, match=r"out=.*w4 already holds a qpass checkpoint "
                                              r"\(pipeline RTN → Lower.*overwrite=True"):
        qpass.presets.get("w4a16-rtn").run(model, out=out, progress=False)
    monkeypatch.undo()
    qpass.Pipeline([qpass.passes.RTN()], scheme="int4:g32:sym").run(model, out=out, progress=False,
                                                                   overwrite=True)
    assert json.loads((out / "manifest.json").read_text())["pipeline_scheme"]["weight"] == \
        "int4:g32:sym"


def test_gguf_refusal_names_the_q4_0_presets(ck, tmp_path, capsys):
    line = _one_line(capsys, main(["export", str(ck[0]), "--format", "gguf", "--out",
                                   str(tmp_path / "m.gguf")]))
    assert "--pipeline q4_0-gptq" in line and "--scheme q4_0" in line, line
    assert not (tmp_path / "m.gguf").exists()

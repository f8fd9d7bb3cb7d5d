"""Issue 14's table of bad inputs: each row is a command (or API call) on a broken input and the
one clear error it must end in — exit 2 and a single stderr line naming the problem for the
CLI, the named error class for the API — with the user's files left intact."""
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch

import qpass
from qpass.cli import main
from qpass.errors import CheckpointError, SpecError

ZOO = Path(qpass.__file__).parent / "zoo" / "tiny-llada"


def _hf_copy(tmp_path: Path) -> Path:
    d = tmp_path / "hf"
    shutil.copytree(ZOO, d, ignore=shutil.ignore_patterns("eval", "train_log.json"))
    return d


def _config(d, **kw):
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(kw)
    (d / "config.json").write_text(json.dumps(cfg))


def _break_json(d):
    (d / "config.json").write_text('{"d_model": 256,\n "n_heads": 4,,\n}')


def _index(d):
    (d / "model.safetensors.index.json").write_text('{"weight_map": ')


def _corrupt(d):
    f = d / "model.safetensors"
    f.write_bytes(b"\xff" * 64 + f.read_bytes()[64:])


def _nan_weight(d):
    from safetensors.torch import load_file, save_file
    t = load_file(str(d / "model.safetensors"))
    k = next(k for k in sorted(t) if "q_proj" in k)
    t[k][0, 0] = float("nan")
    save_file(t, str(d / "model.safetensors"))


def _broken_tokenizer(d):
    (d / "qpass_tokenizer.json").unlink()
    (d / "tokenizer.json").write_text("{not json")


# (id, how to break an HF copy of tiny-llada, message fragment)
LOAD_CASES = [
    ("invalid config.json", _break_json, "line 2"),
    ("invalid index json", _index, "index.json"),
    ("config field of wrong type", lambda d: _config(d, d_model="256"), "d_model"),
    ("zero heads", lambda d: _config(d, n_heads=0), "n_heads"),
    ("negative max length", lambda d: _config(d, max_sequence_length=-5), "max_seq_len"),
    ("mask id outside vocab", lambda d: _config(d, mask_token_id=9999), "mask_token_id"),
    ("corrupt safetensors", _corrupt, "model.safetensors"),
    ("NaN in a weight", _nan_weight, "NaN"),
    ("broken tokenizer.json", _broken_tokenizer, "tokenizer"),
]


@pytest.mark.parametrize("case", LOAD_CASES, ids=[c[0] for c in LOAD_CASES])
def test_broken_checkpoint_is_one_clear_error(tmp_path, capsys, case):
    _, breaker, fragment = case
    d = _hf_copy(tmp_path)
    breaker(d)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir()}
    with pytest.raises(CheckpointError, match=fragment):
        qpass.models.load(str(d))
    rc = main(["eval", str(d), "--tasks", "math", "--limit", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and fragment in err[0], err
    assert before == {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir()}


# (id, argv, message fragment); every one fails before a model is loaded or computed
CLI_CASES = [
    ("bad --device", ["quantize", "tiny-llada", "--pipeline", "w8a8-rtn", "--out", "{tmp}/o",
                      "--device", "gpu0"], "--device"),
    ("huge --seed", ["generate", "tiny-llada", "--prompt", "a", "--seed", str(2 ** 70)], "seed"),
    ("NaN temperature", ["generate", "tiny-llada", "--prompt", "a", "--temperature", "nan"],
     "--temperature"),
    ("negative --text-bytes", ["eval", "tiny-llada", "--text-bytes", "-5"], "--text-bytes"),
    ("zero --limit", ["eval", "tiny-llada", "--limit", "0"], "--limit"),
    ("--steps above --gen-length", ["generate", "tiny-llada", "--prompt", "a", "--gen-length", "8",
                                    "--steps", "1000000000"], "--steps"),
    ("non-UTF-8 prompt", ["generate", "tiny-llada", "--prompt", "caf\udce9"], "UTF-8"),
    ("--json to a directory", ["eval", "tiny-llada", "--json", "{tmp}"], "directory"),
    ("missing --data-dir", ["eval", "tiny-llada", "--data-dir", "{tmp}/nope"], "--data-dir"),
    ("--out under /proc", ["quantize", "tiny-llada", "--pipeline", "w8a8-rtn", "--out",
                           "/proc/qpass"], "pseudo-filesystem"),
    ("--seq-len above the model's positions", ["quantize", "tiny-llada", "--pipeline",
                                                "w4a16-gptq", "--out", "{tmp}/o", "--seq-len",
                                                "5000"], "1024 positions"),
    ("--out is a user folder", ["quantize", "tiny-llada", "--pipeline", "w8a8-rtn", "--out",
                                "{tmp}/user"], "not a qpass"),
]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_bad_cli_input_is_one_line_before_compute(tmp_path, capsys, monkeypatch, case):
    _, argv, fragment = case
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "thesis.tex").write_text("mine")
    monkeypatch.setattr("qpass.Pipeline.run", lambda *a, **k: pytest.fail("computed first"))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    try:
        rc = main(argv)
    except SystemExit as e:            # argparse's usage error: also exit 2, one message line
        rc = e.code
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if not ln.startswith("usage")
           and not ln.startswith(" ")]
    assert rc == 2 and len(err) == 1 and fragment in err[0], err
    assert (tmp_path / "user" / "thesis.tex").read_text() == "mine"


def test_static_per_token_spec_is_refused():
    with pytest.raises(SpecError, match="dyn"):
        qpass.QuantSpec.parse("int8:token:static")


def test_second_weight_rounding_pass_is_refused():
    from qpass import passes as P
    with pytest.raises(qpass.PipelineError):
        qpass.Pipeline([P.RTN("int4:g32:sym"), P.RTN("int8:channel")])


def test_nan_weights_of_an_in_memory_model_are_named_before_any_pass(monkeypatch):
    from qpass import passes as P
    from qpass.calibration import CalibrationSet
    model = qpass.models.load("tiny-dream-random")
    with torch.no_grad():
        model.blocks[0].up_proj.weight[0, 0] = float("inf")
    calib = CalibrationSet.from_ids(torch.arange(64) % 90, mask_id=model.config.mask_token_id,
                                    n=2, seq_len=16)
    monkeypatch.setattr(P.FuseNorms, "run", lambda *a, **k: pytest.fail("a pass ran"))
    with pytest.raises(qpass.CalibrationError, match="blocks.0.up_proj.weight"):
        qpass.Pipeline([P.FuseNorms(), P.GPTQ("int4:g16:sym")]).run(model, calib, progress=False)

"""`qpass quantize` end to end in a subprocess; the saved dir loads and gives the same logits
as the same pipeline run in-process. Bad input is one error line, never a traceback."""
import os
import subprocess
import sys

import torch

import qpass

CLI = [sys.executable, "-c", "import sys; from qpass.cli import main; sys.exit(main())"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _qpass(*args):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, env=ENV, timeout=300)


def test_quantize_cli_end_to_end(tmp_path):
    out = tmp_path / "w4"
    r = _qpass("quantize", "tiny-llada", "--pipeline", "w4a16-rtn", "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    assert "saved" in r.stderr and "42 quantized linears" in r.stderr
    loaded = qpass.load_compiled(out)
    model = qpass.models.load("tiny-llada")
    again = qpass.presets.get("w4a16-rtn").run(model, progress=False)
    ids = torch.tensor([loaded.tokenizer.encode("def add(a, b):\n    return a + b\n")])
    with torch.no_grad():
        assert torch.equal(loaded(ids), again(ids))


def test_cli_errors_are_one_line(tmp_path, capsys):
    from qpass.cli import main
    for args in (["quantize", "tiny-llada", "--pipeline", "nope", "--out", str(tmp_path / "x")],
                 ["quantize", "no-such-model", "--pipeline", "w4a16-rtn", "--out", str(tmp_path / "y")],
                 ["inspect", "tiny-llada", "--pipeline", "w4a16-rtn", "--after", "GPTQ"]):
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "error:" in err[0], err
    assert not (tmp_path / "x").exists()


def test_inspect_after_diff_names_changes(capsys):
    from qpass.cli import main
    assert main(["inspect", "tiny-llada-random", "--pipeline", "w4a4-rtn", "--after", "FuseNorms",
                 "--diff"]) == 0
    out = capsys.readouterr().out
    assert "weightless" in out and "fused_norm" in out


def test_inspect_diff_api_lists_specs_and_scales():
    from qpass.inspect.diff import inspect_after
    from qpass import passes as P
    pipe = qpass.Pipeline([P.FuseNorms(), P.RTN("int4:g32:asym")])
    info = inspect_after(qpass.models.load("tiny-llada-random"), pipe, "rtn")
    changed = {r["node"]: r["detail"] for r in info["changes"]}
    assert len(changed) == 14
    assert all("QuantLinear" in d and "int4:g32:asym" in d and "scales min/median/max" in d
               for d in changed.values())


def test_inspect_pipeline_planned_coverage_on_meta(capsys):
    import json

    from qpass.cli import main
    assert main(["inspect", "llada-8b", "--pipeline", "w4a16-rtn", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 225 and sum(r["status"] == "quantized" for r in rows) == 224
    assert main(["inspect", "llada-8b", "--pipeline", "w4a16-rtn", "--after", "RTN"]) == 2
    assert "meta device" in capsys.readouterr().err

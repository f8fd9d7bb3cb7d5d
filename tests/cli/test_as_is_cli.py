"""The commands on models captured as they are (issue 27): quantize streams a DiffusionGemma
checkpoint dir, generate uses its own sampler, inspect shows the real 26B-A4B structure on
meta, remote code is refused without --trust-remote-code."""
import json
import os
import sys
from pathlib import Path

import pytest

FIX = Path(__file__).resolve().parents[1] / "fixtures"
sys.path.insert(0, str(FIX))
import diffusion_gemma as dg  # noqa: E402

import qpass  # noqa: E402
from qpass.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    p = tmp_path_factory.mktemp("calib") / "calib.txt"
    p.write_text(open(os.path.join(os.path.dirname(qpass.__file__), "ops.py")).read())
    return p


def test_quantize_then_generate(tmp_path, calib, capsys):
    d = dg.build(tmp_path / "dg")
    out = tmp_path / "w4"
    assert main(["quantize", str(d), "--pipeline", "w4a16-gptq", "--calib", str(calib),
                 "--calib-n", "8", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "captured as it is" in err and "streamed from" in err
    assert "MoE router" in err or "role router" in err
    assert "never called it on text" in err            # the vision tower, with its reason
    q = qpass.load_compiled(out)
    assert len(q.report["items"]) == 26 and q.report["streamed"]["tensor_reads"] > 0
    assert main(["generate", str(out), "--prompt", "def f(x):", "--gen-length", "8",
                 "--steps", "2"]) == 0
    cap = capsys.readouterr()
    assert cap.out.startswith("def f(x):") and "own sampler" in cap.err
    # a second quantize into the same --out is refused before any compute
    assert main(["quantize", str(d), "--pipeline", "w4a16-rtn", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_inspect_real_config_on_meta(capsys):
    assert main(["inspect", "diffusiongemma-26b-a4b", "--format", "json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["architecture"] == "DiffusionGemmaForBlockDiffusion"
    assert s["parameters"] == 25_823_778_864           # the real index's total_parameters
    experts = [it for it in s["items"] if it["kind"] == "experts"]
    assert len(experts) == 30 and all(len(it["aliases"]) == 2 for it in experts)
    assert experts[0]["shapes"] == [[128, 1408, 2816], [128, 2816, 704]]
    routers = [it for it in s["items"] if it["role"] == "router"]
    assert len(routers) == 30
    b = s["bytes"]
    assert b["w2a16g128"] < b["w3a16g128"] < b["w4a16g128"] < b["w8a16"] < b["bf16"]
    assert 0.25 < b["w4a16g128"] / b["bf16"] < 0.32


def test_remote_code_needs_the_flag(tmp_path, capsys):
    import importlib.util
    spec = importlib.util.spec_from_file_location("_rc_build", FIX / "remote_code" / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    d = build.build("sdar", tmp_path / "sdar")
    assert main(["inspect", str(d)]) == 2
    assert "--trust-remote-code" in capsys.readouterr().err

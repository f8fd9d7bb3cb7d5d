"""`qpass quantize` lowers by default; `qpass generate DIR --device cpu` runs the lowered kernels,
says which, and gives the same tokens as the simulated twin (`--backend none`)."""
import json
import os
import subprocess
import sys

import pytest

import qpass

CLI = [sys.executable, "-c", "import sys; from qpass.cli import main; sys.exit(main())"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
PROMPT = "12+5=17\n37+48="


def _qpass(*args):
    return subprocess.run(CLI + list(args), capture_output=True, text=True, env=ENV, timeout=600)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    out = {}
    for backend in ("auto", "none"):
        path = d / backend
        r = _qpass("quantize", "tiny-llada", "--pipeline", "w4a4-quarot", "--out", str(path),
                   "--calib-n", "4", "--seq-len", "64", "--quiet", "--backend", backend)
        assert r.returncode == 0, r.stderr
        out[backend] = (path, r.stderr)
    return out


def test_quantize_lowers_by_default_and_records_kernels(checkpoints):
    path, err = checkpoints["auto"]
    # the 42 W4A4 linears: those fed by an RMSNorm take its fused codes (linear_int_codes),
    # the rest (after attention / the online Hadamard) quantize their input themselves
    assert "kernels here: " in err and "linear_w4a4 ×12 → reference" in err
    assert "linear_int_codes ×30 → reference" in err and "rmsnorm_quant" in err
    manifest = json.loads((path / "manifest.json").read_text())
    lower = [p for p in manifest["report"]["passes"] if p["name"] == "Lower"]
    assert len(lower) == 1
    kernels = lower[0]["metrics"]["kernels"]
    rows = {r["node"]: r for r in kernels}
    assert sum(r["op"] in ("linear_w4a4", "linear_int_codes") for r in kernels) == 42
    assert {r["op"] for r in kernels} >= {"linear_w4a4", "linear_int_codes", "rmsnorm_quant",
                                          "attention", "hadamard"}
    # on this CUDA-less machine the reason names the backend passed over
    assert all(r["backend"] == "reference" and "triton passed over" in r["why"]
               for r in rows.values() if r["op"])
    _, err_none = checkpoints["none"]
    assert "none (simulated model" in err_none
    sim = json.loads((checkpoints["none"][0] / "manifest.json").read_text())
    assert not any(p["name"] == "Lower" for p in sim["report"]["passes"])


def test_generate_on_cpu_runs_lowered_kernels_with_the_simulated_tokens(checkpoints):
    outs = {}
    for backend, (path, _) in checkpoints.items():
        r = _qpass("generate", str(path), "--device", "cpu", "--prompt", PROMPT,
                   "--gen-length", "16", "--steps", "16", "--block-length", "8")
        assert r.returncode == 0, r.stderr
        outs[backend] = (r.stdout, r.stderr)
    assert outs["auto"][0] == outs["none"][0]
    assert "ran lowered kernels: " in outs["auto"][1]
    assert "linear_w4a4" in outs["auto"][1] and "on reference (cpu)" in outs["auto"][1]
    assert "ran no lowered kernels" in outs["none"][1]


def test_load_compiled_binds_the_target_device(checkpoints):
    path, _ = checkpoints["auto"]
    m = qpass.load_compiled(path, device="cpu")
    assert m.kernels and {r["backend"] for r in m.kernels} == {"reference"}
    assert {r["op"] for r in m.kernels} >= {"linear_w4a4", "attention", "hadamard"}
    assert qpass.load_compiled(checkpoints["none"][0]).kernels == []


def test_generate_with_cache_and_threshold(checkpoints):
    path, _ = checkpoints["auto"]
    r = _qpass("generate", str(path), "--prompt", PROMPT, "--gen-length", "16",
               "--block-length", "8", "--cache", "dual", "--threshold", "0.9")
    assert r.returncode == 0, r.stderr
    assert "forward passes" in r.stderr and r.stdout.startswith(PROMPT)
    bad = _qpass("generate", str(path), "--prompt", PROMPT, "--cache", "dual", "--threshold", "2")
    assert bad.returncode == 2 and "threshold must be in" in bad.stderr

"""bench/kernels_gpu.py parses, skips with one line without CUDA, and (under the Triton
interpreter, tiny shapes) runs every code path and reports correct kernels."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).parents[2]
SCRIPT = ROOT / "bench" / "kernels_gpu.py"


def _run(*args, **env):
    e = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    e.update(env)
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=e, capture_output=True,
                          text=True, timeout=300, cwd=ROOT)


def test_help_and_the_no_cuda_skip_line():
    r = _run("--help")
    assert r.returncode == 0 and "--quick" in r.stdout and "--smoke" in r.stdout
    if not torch.cuda.is_available():
        r = _run("--quick")
        assert r.returncode == 0 and r.stdout.strip().splitlines() == [
            "kernels_gpu: skipped, no CUDA device (the GPU figures need one)"]


def test_smoke_run_under_the_interpreter():
    pytest.importorskip("triton")
    r = _run("--smoke", TRITON_INTERPRET="1")
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    mma = [row for row in out["w4a16"] if row["kernel"] == "w4a16_repacked"]
    assert {row["regime"] for row in mma} == {"small", "large"}
    assert all(row["rel_err_vs_fp64"] < 2e-3 for row in mma)        # fp16 in the interpreter
    fused = [row for row in out["fused_quant"] if row["kernel"] == "fused"]
    assert len(fused) == 2 and all(row["codes_equal_separate_quantizer"] for row in fused)
    fp8 = {row["kernel"]: row for row in out["fp8"]}
    assert fp8["fp8_triton"]["rel_err_vs_reference"] < 1e-3 and "dense_matmul" in fp8
    assert "fp8_torch_scaled_mm" in fp8        # a CPU has no fp8 GEMM: the row says so
    fp4 = {row["kernel"]: row for row in out["fp4"]}
    assert all(fp4[k]["rel_err_vs_reference"] < 2e-3 for k in ("nvfp4_triton", "mxfp4_triton"))

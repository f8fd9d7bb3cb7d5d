"""Data-parallel calibration (torch.distributed, gloo on CPU): `torchrun --nproc-per-node 2 -m
qpass.cli quantize …` gives the same checkpoint as one process — every statistic is
all-reduced in float64 before GPTQ solves."""
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _quantize(out, nproc):
    args = ["quantize", "tiny-llada", "--pipeline", "w4a8-gptq", "--out", str(out),
            "--calib-n", "24", "--seq-len", "64", "--quiet", "--device", "cpu"]
    if nproc == 1:
        cmd = [sys.executable, "-m", "qpass.cli", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-port", "29517", "-m", "qpass.cli", *args]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)


@pytest.mark.timeout(900)
def test_two_gloo_ranks_equal_one_process(tmp_path):
    one = _quantize(tmp_path / "one", 1)
    assert one.returncode == 0, one.stderr[-2000:]
    two = _quantize(tmp_path / "two", 2)
    assert two.returncode == 0, two.stderr[-3000:]
    a = load_file(tmp_path / "one" / "model.safetensors")
    b = load_file(tmp_path / "two" / "model.safetensors")
    assert a.keys() == b.keys()
    codes = [k for k in a if k.endswith("qweight")]
    assert codes and all(torch.equal(a[k], b[k]) for k in codes)          # codes identical
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=0, msg=k)   # scales to rounding

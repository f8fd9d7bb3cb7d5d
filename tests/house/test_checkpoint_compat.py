"""Compiled checkpoints saved by main d9e79e7 (before the subsystem move) still load and give
bit-identical logits (tests/fixtures/ckpt_v1, made with that commit's Pipeline.run + save)."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import qpass

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "ckpt_v1"
CASES = ["llada_w4a16_rtn", "llada_w4a4_quarot", "dream_w8a8_lowered"]


@pytest.mark.parametrize("name", CASES)
def test_old_checkpoint_loads_with_identical_logits(name):
    expected = load_file(str(FIX / "expected_logits.safetensors"))
    model = qpass.load_compiled(FIX / name)
    with torch.no_grad():
        got = model(expected["input_ids"])
    assert torch.equal(got, expected[name])

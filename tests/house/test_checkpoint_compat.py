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


# Saved by main 32d14b6 (the last commit before the one executor) with its own Pipeline.run
# + save on tiny-llada-random: lowered GPTQ + QuaRot (GPTQ config version 1, with the
# since-dropped offload_dir), lowered RTN with K/V quantized attention, DuQuant + static
# observers, and the AWQ preset. (GPTQ under a K/V scheme is not reproduced: that main's
# in-memory GPTQ marked attention for K/V only after every block was solved, so its later
# blocks calibrated on float attention while its streamed form, and now both, use the K/V
# attention of the already-quantized blocks.)
FIX_MAIN = Path(__file__).resolve().parents[1] / "fixtures" / "ckpt_main_32d14b6"
CASES_MAIN = ["llada_w4a8_gptq_lowered", "llada_w8a8kv8_rtn_lowered", "llada_w4a8_duquant_static",
              "llada_w4a16_awq"]


@pytest.mark.parametrize("name", CASES_MAIN)
def test_checkpoint_of_the_two_executor_main_loads_and_is_reproduced(name, tmp_path):
    """It loads with bit-identical logits, and its pipeline, rebuilt from the manifest and
    run by the one executor on the same model and calibration, writes the same tensors."""
    from qpass.calibration import CalibrationSet
    expected = load_file(str(FIX_MAIN / "expected_logits.safetensors"))
    model = qpass.load_compiled(FIX_MAIN / name)
    with torch.no_grad():
        assert torch.equal(model(expected["input_ids"]), expected[name])
    fp = qpass.models.load("tiny-llada-random")
    calib = CalibrationSet.from_ids(torch.arange(4000) % 90, mask_id=fp.config.mask_token_id,
                                    n=4, seq_len=32, seed=3)
    again = qpass.Pipeline.from_manifest(FIX_MAIN / name).run(fp, calib, progress=False,
                                                             out=tmp_path / name)
    old = load_file(str(FIX_MAIN / name / "model.safetensors"))
    new = load_file(str(again.path / "model.safetensors"))
    assert set(old) == set(new)
    for k in old:
        assert torch.equal(old[k], new[k]), k

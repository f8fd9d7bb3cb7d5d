"""Shared fixtures of the pass tests."""
from pathlib import Path

import pytest
import torch

import qpass
from qpass.calibration import CalibrationSet


@pytest.fixture(scope="module")
def llada():
    """tiny-llada, 8x128 calibration windows of held-out Shakespeare, 2x96 probe ids from a
    later part of the same text, and the FP logits on them."""
    model = qpass.models.load("tiny-llada")
    text = (Path(qpass.__file__).parent / "zoo/tiny-llada/eval/shakespeare_test.txt").read_text()
    calib = CalibrationSet.from_texts([text], model.tokenizer, n=8, seq_len=128, seed=0)
    ids = CalibrationSet.from_texts([text[5000:]], model.tokenizer, n=2, seq_len=96,
                                    seed=1).input_ids[:2]
    with torch.no_grad():
        ref = model(ids)
    return model, calib, ids, ref

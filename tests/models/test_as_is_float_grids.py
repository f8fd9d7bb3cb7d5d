"""A model captured as it is (DiffusionGemma: fused 3-D expert stores) quantized to nvfp4 keeps
every expert's float32 global scale through save and load: the reloaded model computes the
logits of the in-memory result (up to float32 rounding; integer schemes differ by the same
few 1e-7 here)."""
import os
import sys
from pathlib import Path

import torch

import qpass
from qpass.presets import PRESETS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))
import diffusion_gemma as dg  # noqa: E402

TEXT = open(os.path.join(os.path.dirname(qpass.__file__), "ops.py")).read()


def test_nvfp4_experts_save_and_reload(tmp_path):
    d = dg.build(tmp_path / "dg")
    q = PRESETS["w4a16-nvfp4"]().run(d, calib=TEXT, out=tmp_path / "nv", progress=False)
    back = qpass.load_compiled(tmp_path / "nv")
    ids, canvas = dg.prompt_and_canvas(4, batch=2)
    with torch.no_grad():
        a = q(input_ids=ids, decoder_input_ids=canvas).logits
        b = back(input_ids=ids, decoder_input_ids=canvas).logits
    assert torch.allclose(a, b, rtol=0, atol=1e-5)

"""Group sizes that fit every layer (issue 18): a scheme's group size that does not divide K
falls back to the largest divisor that is a multiple of 32, else per-channel, reported in the
coverage table; strict_groups refuses instead."""
from dataclasses import replace

import pytest
import torch

import qpass
from qpass import passes as P
from qpass.calibration import CalibrationSet
from qpass.specs import QuantSpec, Scheme


@pytest.mark.parametrize("K, want", [(4096, "int4:g128:sym"), (576, "int4:g96:sym"),
                                     (64, "int4:g64:sym"), (100, "int4:channel")])
def test_fit_weight(K, want):
    w, _, reason = Scheme.parse("w4a16g128").specs_for("layer", "linear", K)
    assert str(w) == want and (("fallback" in reason) == (want != "int4:g128:sym"))
    if want != "int4:channel":
        assert K % w.group_size == 0 and w.group_size % 32 == 0


def test_strict_groups_refuses():
    strict = replace(Scheme.parse("w4a16g128"), strict_groups=True)
    with pytest.raises(qpass.SpecError, match="K=576 is not divisible by group size 128"):
        strict.specs_for("layer", "linear", 576)
    assert Scheme.from_dict(strict.to_dict()).strict_groups


@pytest.mark.parametrize("preset", ["w4a16-rtn", "w4a16-gptq", "w4a16-awq"])
def test_g128_presets_fit_a_small_model(preset):
    """tiny-llada-random's K=64 layers took a SpecError before; now g64, with the reason."""
    model = qpass.models.load("tiny-llada-random")
    calib = CalibrationSet.from_ids(torch.arange(3000) % 90, mask_id=model.config.mask_token_id,
                                    n=8, seq_len=32, seed=0)
    out = qpass.presets.get(preset).run(model, calib, progress=False)
    rows = [r for r in out.report.coverage if r.status == "quantized"]
    assert rows and all("fallback" in r.reason for r in rows if r.name.endswith("q_proj"))
    q = out.gm.get_submodule("blocks.0.q_proj")
    assert q.weight_spec.group_size == 64
    with pytest.raises(qpass.SpecError, match="not divisible by group size 128"):
        qpass.presets.get(preset).strict_groups().run(model, calib, progress=False)

"""Group sizes that fit every layer (issue 18): a scheme's group size that does not divide K
falls back to the largest of 128/64/32 below it that divides (what serving kernels take), else
per-channel, reported in the coverage table; by default one such group size for the whole
model (group_fit="model"), per layer with group_fit="layer"; strict_groups refuses instead."""
from dataclasses import replace

import pytest
import torch

import qpass
from qpass import passes as P
from qpass.calibration import CalibrationSet
from qpass.specs import QuantSpec, Scheme


@pytest.mark.parametrize("K, want", [(4096, "int4:g128:sym"), (576, "int4:g64:sym"),
                                     (96, "int4:g32:sym"), (64, "int4:g64:sym"),
                                     (100, "int4:channel")])
def test_fit_weight(K, want):
    w, _, reason = Scheme.parse("w4a16g128").specs_for("layer", "linear", K)
    assert str(w) == want and (("fallback" in reason) == (want != "int4:g128:sym"))
    if want != "int4:channel":
        assert K % w.group_size == 0 and w.group_size % 32 == 0


def _brute_model_group(ks, g):
    """The largest power of two in [32, g) dividing every K, by trying them all."""
    cands = [d for d in range(g - 1, 31, -1) if d & (d - 1) == 0 and all(k % d == 0 for k in ks)]
    return cands[0] if cands else None


@pytest.mark.parametrize("ks", [[576, 1536], [4096, 12288], [576, 96], [4096, 100], [192, 320],
                                [64, 128], [640, 1280, 2560]])
def test_model_fit_is_one_group_for_every_layer(ks):
    base = Scheme.parse("w4a16g128")
    fitted = base.fit_to(ks)
    divides = all(k % 128 == 0 for k in ks)
    assert fitted.model_group == (None if divides else _brute_model_group(ks, 128))
    specs = {k: fitted.specs_for(f"l{k}", "linear", k)[0] for k in ks}
    if fitted.model_group:          # every layer, also one whose K 128 divides, shares it
        assert {s.group_size for s in specs.values()} == {fitted.model_group}
        assert all("whole model" in fitted.specs_for("l", "linear", k)[2] for k in ks)
    elif divides:
        assert {s.group_size for s in specs.values()} == {128}
    else:                           # no common group: each layer is fitted alone
        assert specs == {k: base.specs_for("l", "linear", k)[0] for k in ks}
    layer = replace(base, group_fit="layer").fit_to(ks)
    assert layer.model_group is None
    assert layer.specs_for("l", "linear", 1536)[0].group_size == 128


def test_group_fit_round_trips_and_is_checked():
    s = replace(Scheme.parse("w4a16g128"), group_fit="layer")
    assert Scheme.from_dict(s.to_dict()).group_fit == "layer"
    assert Scheme.from_dict(Scheme.parse("w4a16g128").to_dict()).group_fit == "model"
    with pytest.raises(qpass.SpecError, match="group_fit must be one of"):
        replace(s, group_fit="block")


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

"""ObserveActivations and collect_input_stats against float64 references computed here from the
linear inputs captured by the test's own hooks."""
import math

import pytest
import torch
import torch.nn.functional as F

import qpass
from qpass import passes as P
from qpass.calibration import CalibrationSet
from qpass.ir.qlinear import QuantLinear
from qpass.calibration.stats import collect_input_stats

GRID = [1.0 - 0.025 * i for i in range(21)]


def _graph_and_calib():
    model = qpass.models.load("tiny-llada-random").double()
    calib = CalibrationSet.from_ids(torch.arange(2000) % 90, mask_id=96, n=6, seq_len=20, seed=1)
    return model, qpass.capture(model), calib


def _captured_inputs(model, calib, name):
    """The test's own record of one linear's calibration inputs (float64, (tokens, K))."""
    rows = []
    h = model.get_submodule(name).register_forward_pre_hook(
        lambda m, a: rows.append(a[0].detach().reshape(-1, a[0].shape[-1]).double()))
    with torch.no_grad():
        for (ids,) in calib.batches(8):
            model(ids)
    h.remove()
    return torch.cat(rows)


def _fq(x, s, z, levels):
    return ((torch.round(x / s) + z).clamp(0, levels - 1) - z) * s


def _f32(v: float) -> float:
    """Scales are stored in float32."""
    return float(torch.tensor(v, dtype=torch.float32))


def ref_scale(x, bits, observer):
    """Symmetric per-tensor scale by min-max, the 99.9th percentile of |x|, or MSE grid search,
    on the full grid: absmax maps to (2^b − 1)/2 steps."""
    qmax, a = (2 ** bits - 1) / 2, x.abs().flatten()
    if observer == "minmax":
        return _f32(a.max().item() / qmax)
    if observer == "percentile":
        k = math.ceil(0.999 * a.numel())
        return _f32(a.sort().values[k - 1].item() / qmax)
    best = None
    for f in GRID:
        s = _f32(f * a.max().item() / qmax)
        err = ((_fq(x, s, 2 ** (bits - 1), 2 ** bits) - x) ** 2).sum().item()
        if best is None or err < best[0]:
            best = (err, s)
    return best[1]


def _apply(p, g, calib):
    """Run one pass through the executor on `g` in place; its report record."""
    return qpass.Pipeline([p], verify=False).apply(g, calib=calib).passes[0]


@pytest.mark.parametrize("observer", ["minmax", "percentile", "mse"])
def test_static_tensor_observers_match_reference(observer):
    model, g, calib = _graph_and_calib()
    name = "blocks.1.down_proj"
    x = _captured_inputs(model, calib, name)
    res = _apply(P.ObserveActivations(f"int8:tensor:static:{observer}"), g, calib)
    q = g.gm.get_submodule(name)
    assert isinstance(q, QuantLinear) and q.weight_spec is None and not q.act_spec.dynamic
    assert q.act_scale.shape == (1, 1)
    assert abs(q.act_scale.item() - ref_scale(x, 8, observer)) <= 1e-6 * ref_scale(x, 8, observer)
    assert res.metrics["static"] == 14        # every block linear; the head stays float


def test_static_asymmetric_minmax_zero_point():
    model, g, calib = _graph_and_calib()
    x = _captured_inputs(model, calib, "blocks.0.q_proj")
    _apply(P.ObserveActivations("int8:tensor:asym:static"), g, calib)
    q = g.gm.get_submodule("blocks.0.q_proj")
    lo, hi = min(x.min().item(), 0.0), max(x.max().item(), 0.0)
    s = (hi - lo) / 255
    assert abs(q.act_scale.item() - s) <= 1e-6 * s
    assert q.act_zero.item() == round(-lo / float(torch.tensor(s).float()))


def test_dynamic_per_token_fake_quantizes_each_row():
    model, g, calib = _graph_and_calib()
    name = "blocks.0.up_proj"
    _apply(P.ObserveActivations("int4:token:dyn"), g, calib)
    q, lin = g.gm.get_submodule(name), model.get_submodule(name)
    assert q.act_scale is None and str(q.act_spec) == "int4:token:dyn"
    x = torch.randn(3, 7, lin.in_features, dtype=torch.float64)
    s = (x.abs().amax(-1, keepdim=True) * 2 / 15).float().double()     # full grid, fp32 scale
    with torch.no_grad():
        ref = F.linear(_fq(x, s, 8, 16), lin.weight)
        # the format dequantizes in float32, hence float32-level agreement
        assert (q(x) - ref).abs().max() < 1e-6


def test_statistics_match_reference_and_reach_the_report():
    model, g, calib = _graph_and_calib()
    name = "blocks.1.o_proj"
    x = _captured_inputs(model, calib, name)
    stats = collect_input_stats(g, calib)[name]
    ch = x.abs().amax(0)
    assert abs(stats.absmax - ch.max().item()) < 1e-6
    assert abs(stats.max_median_ratio - ch.max().item() / ch.median().item()) < 1e-6
    assert [i for i, _ in stats.top_outliers()] == ch.topk(5).indices.tolist()
    assert stats.tokens == x.shape[0]
    res = _apply(P.ObserveActivations("w8a8"), g, calib)
    assert res.metrics["act_stats"][name]["tokens"] == x.shape[0]
    assert abs(res.metrics["act_stats"][name]["absmax"] - ch.max().item()) < 1e-6
    assert "head" not in res.metrics["act_stats"]     # the scheme keeps the head in float


def test_observe_keeps_gptq_weights_and_sets_spec():
    model, g, calib = _graph_and_calib()
    _apply(P.GPTQ("int4:g32:sym", sequential=False), g, calib)
    before = g.gm.get_submodule("blocks.0.k_proj").dequantized_weight(torch.float64)
    _apply(P.ObserveActivations("int8:token:dyn"), g, calib)
    q = g.gm.get_submodule("blocks.0.k_proj")
    assert str(q.act_spec) == "int8:token:dyn"
    assert torch.equal(q.dequantized_weight(torch.float64), before)


@pytest.mark.parametrize("arg, words", [("int8:channel:static", "per-channel"),
                                        ("w4a16g128", "no activation spec")])
def test_bad_specs_are_spec_errors(arg, words):
    with pytest.raises(qpass.SpecError, match=words):
        P.ObserveActivations(arg)

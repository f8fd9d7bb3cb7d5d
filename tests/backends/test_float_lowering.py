"""Lower puts floating-point linears on kernels (issue 28 item 6): fp8 W8A8 on
qpass::linear_fp8, nvfp4 / mxfp4 weight-only on qpass::linear_fp4a16. On the reference backend
the lowered model equals the simulated one: bit for bit for fp8 W8A8 (QuantLinear simulates
with the kernels' exact arithmetic) and mxfp4 (power-of-two scales: the same weight matrix);
nvfp4 within float32 rounding (the kernel divides the sum by the global scale once, the
simulation multiplies each weight by b/G: each product's relative difference is ≤ 2^-23, and
nothing downstream rounds to a grid in a weight-only model). The rest stays simulated, noted;
checkpoints reload; exporters read a lowered float linear as they read a QuantLinear."""
import pytest
import torch

import qpass
from qpass import passes as P
from qpass.backends.op_schemas import kernel_calls, reset_kernel_calls
from qpass.interop import read_source
from qpass.runtime.lowered_float import LoweredFloatLinear

Q = "blocks.0.q_proj"


IDS = torch.randint(0, 256, (2, 40), generator=torch.Generator().manual_seed(0))


def _logits(m, ids):
    with torch.no_grad():
        return m(ids)


@pytest.mark.parametrize("scheme, op, exact", [("w8a8-fp8", "linear_fp8", True),
                                               ("w4a16-mxfp4", "linear_fp4a16", True),
                                               ("w4a16-nvfp4", "linear_fp4a16", False)])
def test_lowered_float_model_equals_the_simulated_one(model, lower, scheme, op, exact):
    ids = IDS
    sim = qpass.Pipeline([P.RTN()], scheme=scheme).run(model, progress=False)
    low, _ = lower(sim)
    assert isinstance(low.gm.get_submodule(Q), LoweredFloatLinear)
    reset_kernel_calls()
    a, b = _logits(sim, ids), _logits(low, ids)
    assert kernel_calls()[(op, "reference", "cpu")] == 42
    if exact:
        assert torch.equal(a, b)
    else:
        assert (a - b).abs().max() <= 1e-5 * a.abs().max()
    # exporters read the lowered linear's codes and scales as the QuantLinear's
    for q_sim, q_low in zip(read_source(sim).linears, read_source(low).linears):
        for f in ("codes", "scales", "stored_scale", "global_scale", "act_scale"):
            x, y = getattr(q_sim, f), getattr(q_low, f)
            assert (x is None and y is None) or torch.equal(x, y), (q_sim.hf_name, f)


def test_static_fp8_activations_lower_and_reload(model, lower, tmp_path):
    from qpass.calibration import CalibrationSet
    ids = IDS
    calib = CalibrationSet.from_ids(torch.arange(2000) % 250, mask_id=258, n=2, seq_len=32)
    steps = [P.RTN("fp8:channel"), P.ObserveActivations("fp8:tensor")]
    sim = qpass.Pipeline(steps).run(model, calib, progress=False)
    low, _ = lower(sim)
    m = low.gm.get_submodule(Q)
    assert m.kind == "fp8" and torch.equal(m.act_scale, sim.gm.get_submodule(Q).act_scale)
    assert torch.equal(_logits(sim, ids), _logits(low, ids))
    low.save(tmp_path / "c")
    assert torch.equal(_logits(qpass.load_compiled(tmp_path / "c"), ids), _logits(low, ids))


def test_float_formats_without_a_kernel_stay_simulated_with_the_reason(model, lower):
    sim = qpass.Pipeline([P.RTN()], scheme="w4a4-nvfp4").run(model, progress=False)
    c, res = lower(sim)
    assert type(c.gm.get_submodule(Q)).__name__ == "QuantLinear"
    assert res.metrics["kept_simulated"] == 42
    assert any("no kernel for weights nvfp4" in n for n in res.notes)


def test_the_fp8_kernel_declines_gpus_below_sm89_and_fp4_does_not(monkeypatch):
    """tl.dot on float8 needs compute capability 8.9+: on an older GPU TritonBackend declines
    qpass::linear_fp8 with one reason (the registry then records the fallback to the
    reference backend); the fp4 weight-only kernel decodes with integer arithmetic and runs."""
    from qpass.backends.triton import TritonBackend
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    fp8 = dict(K=64, N=8, group_size=0, static=False)
    fp4 = dict(K=64, N=8, block=16, scale_format="e4m3")
    for cap, fp8_ok in [((8, 0), False), ((8, 6), False), ((8, 9), True), ((9, 0), True)]:
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None, c=cap: c)
        b = TritonBackend()
        assert b.supports("linear_fp8", fp8, "cuda", torch.float16) == fp8_ok
        assert b.supports("linear_fp4a16", fp4, "cuda", torch.float16)
        if not fp8_ok:
            why = b.why_not("linear_fp8", fp8, "cuda", torch.float16)
            assert "8.9" in why and f"sm_{cap[0]}{cap[1]}" in why

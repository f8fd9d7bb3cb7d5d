"""RTN and GPTQ on the floating-point grids (fp8, nvfp4, mxfp4, mxfp8): GPTQ's solver against a
float64 textbook GPTQ that rounds to the format's values inside the group's scales, its
exact cases (a diagonal Hessian gives RTN's codes; act-order keeps RTN's block scales), and the
passes through Pipeline.run on the zoo's tiny-llada."""

import pytest
import torch

import qpass
from qpass import passes as P
from qpass import presets
from qpass.formats import QuantizedWeight, float_qparams
from qpass.formats.floating import element, nvfp4_global_scale
from qpass.formats.minifloat import round_to
from qpass.ir.qlinear import QuantLinear
from qpass.passes.gptq import quantize_weight, reconstruction_error
from qpass.specs import QuantSpec

from test_gptq import correlated_inputs

SPECS = ["fp8:channel", "fp8:tensor", "fp8:g32", "fp8:b32", "nvfp4", "mxfp4", "mxfp8"]


def textbook_float_gptq(W, H, spec, damp=0.01):
    """Column-by-column GPTQ in float64, every update applied at once; a group's scales from
    the current weights at its first column (float_qparams, as RTN computes them; nvfp4's
    global scale from the whole original weight); each column rounded to the nearest element
    value under its scale."""
    spec = QuantSpec.parse(spec)
    W, H = W.double().clone(), H.double().clone()
    N, K = W.shape
    H += damp * H.diag().mean() * torch.eye(K, dtype=H.dtype)
    U = torch.linalg.cholesky(torch.linalg.inv(H), upper=True)
    gs = spec.group_size if spec.granularity in ("group", "block") else K
    glob = nvfp4_global_scale(W.abs().amax().reshape(1)) if spec.format == "nvfp4" else None
    row = spec if spec.granularity in ("tensor", "block") or spec.format != "fp8" else \
        QuantSpec(format="fp8", granularity="channel")
    Q = torch.zeros_like(W)
    for i in range(K):
        if i % gs == 0:
            s = float_qparams(W[:, i:i + gs], row, glob).scale.double()
            s = s.repeat_interleave(-(-N // s.shape[0]), 0)[:N, 0]
        Q[:, i] = round_to(W[:, i] / s, element(spec)) * s
        err = (W[:, i] - Q[:, i]) / U[i, i]
        W[:, i:] -= err[:, None] * U[i, i:][None, :]
    return Q


def _layer(N=64, K=128, n=600, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(N, K, generator=g, dtype=torch.float64) * 0.05
    X = correlated_inputs(K, n, seed)
    return W, 2 * X.T @ X / n


@pytest.mark.parametrize("spec", SPECS)
def test_solver_equals_the_textbook_float_gptq(spec):
    W, H = _layer()
    Q, info = quantize_weight(W, H, spec, block_size=32)
    Qref = textbook_float_gptq(W, H, spec)
    same = (Q == Qref).double().mean()
    assert same > 0.995, (spec, float(same))         # lazy blocks round differently, rarely
    assert abs(reconstruction_error(W, Q, H) - reconstruction_error(W, Qref, H)) < \
        0.02 * reconstruction_error(W, Qref, H)
    # what the solve returns is what the packed weight holds (float32: bit for bit; in float64
    # the value·scale products are exact, the packed weight's float32 ones rounded)
    assert torch.allclose(info.qweight.dequantize(torch.float64), Q, rtol=1e-6, atol=0)
    Q32, info32 = quantize_weight(W.float(), H.float(), spec, block_size=32)
    assert torch.equal(info32.qweight.dequantize(), Q32)


@pytest.mark.parametrize("spec", SPECS)
def test_diagonal_hessian_gives_rtn_and_correlated_inputs_beat_it(spec):
    W, H = _layer(N=40, K=96)
    rtn = QuantizedWeight.from_float(W.float(), spec)
    _, info = quantize_weight(W.float(), torch.eye(96) * 3.0, spec, block_size=32)
    assert torch.equal(info.qweight.codes(), rtn.codes())
    assert torch.equal(info.qweight.scale, rtn.scale)
    Q, info = quantize_weight(W.float(), H.float(), spec, refine=1)
    assert reconstruction_error(W, Q, H) < 0.8 * reconstruction_error(W, rtn.dequantize(), H)
    assert info.refine_gain >= 0


@pytest.mark.parametrize("spec", ["nvfp4", "mxfp4", "fp8:b32"])
def test_act_order_keeps_rtn_block_scales(spec):
    """act-order + groups = static groups: the block scales (and nvfp4's global scale) are
    exactly RTN's; GPTQ only chooses the elements inside them."""
    W, H = _layer(N=64, K=128)
    rtn = QuantizedWeight.from_float(W.float(), spec)
    _, info = quantize_weight(W.float(), H.float(), spec, act_order=True)
    assert info.static_groups_forced
    assert torch.equal(info.qweight.scale, rtn.scale)
    if spec == "nvfp4":
        assert torch.equal(info.qweight.global_scale, rtn.global_scale)


# ---- passes on tiny-llada ---------------------------------------------------------------------
def _rel(model, ids, ref):
    with torch.no_grad():
        out = model(ids)
    return float((out - ref).norm() / ref.norm())


def test_rtn_presets_on_tiny_llada(llada):
    model, _, ids, ref = llada
    errs = {}
    for name in ("w8a8-fp8", "w4a16-nvfp4"):
        out = presets.get(name).run(model, progress=False)
        mods = [m for m in out.gm.modules() if isinstance(m, QuantLinear)]
        assert len(mods) == 42 and all(m.weight_spec.is_float for m in mods)
        errs[name] = _rel(out, ids, ref)
    assert errs["w8a8-fp8"] < 0.05 and errs["w4a16-nvfp4"] < 0.15, errs
    assert errs["w8a8-fp8"] < errs["w4a16-nvfp4"]


@pytest.mark.parametrize("name", ["w4a16-nvfp4-gptq", "fp8"])
def test_gptq_pass_beats_rtn_on_most_linears(llada, name):
    model, calib, ids, ref = llada
    pipe = presets.get(name) if name != "fp8" else qpass.Pipeline([P.GPTQ("w8a16-fp8")])
    out = pipe.run(model, calib, progress=False)
    m = [r for r in out.report.passes if r.name == "GPTQ"][0].metrics
    assert m["quantized"] == 42 and m["better_than_rtn"] >= 38, m["better_than_rtn"]
    assert _rel(out, ids, ref) < (0.1 if name != "fp8" else 0.03)

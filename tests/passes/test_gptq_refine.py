"""GPTQ's coordinate-descent refinement against a brute-force float64 reference written here:
every accepted step is the best grid point for its column, the damped objective never rises,
the reported gain is the measured decrease, only codes move (grid, scales, zeros, layout
stay), and the pass's "auto" rule refines only with enough calibration tokens per input."""
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import qpass
from qpass import passes as P
from qpass.calibration import CalibrationSet
from qpass.errors import SpecError
from qpass.passes import _gptq_refine as refine_mod
from qpass.passes.gptq import GPTQ, factor_hessian, quantize_weight

from test_gptq import correlated_inputs


def damped(H, rel=0.01):
    H = H.double().clone()
    dead = H.diag() == 0
    H[dead, dead] = 1.0
    return H + rel * H.diag().mean() * torch.eye(H.shape[0], dtype=H.dtype)


def objective(W, Q, Hd):
    D = W.double() - Q.double()
    return float(((D @ Hd) * D).sum())


def brute_force_sweep(W, qweight, Hd, order):
    """One sweep of coordinate descent, float64, column by column in `order`: every grid
    level of every entry is tried and the best kept (no closed form, no lazy updates)."""
    spec = qweight.spec
    codes = qweight.codes().long()
    N, K = W.shape
    gs = spec.group_size if spec.granularity == "group" else K
    scale = qweight.scale.double().repeat_interleave(gs, 1)[:, :K]
    zero = (qweight.zero.double() if qweight.zero is not None
            else torch.full_like(qweight.scale.double(), 2 ** (spec.bits - 1)))
    zero = zero.repeat_interleave(gs, 1)[:, :K]
    W = W.double()
    levels = torch.arange(2 ** spec.bits, dtype=torch.float64)
    for j in order.tolist():
        R = W - (codes.double() - zero) * scale
        rest = R @ Hd[:, j] - R[:, j] * Hd[j, j]          # Σ_{k≠j} r_k Hd_kj, per row
        cand = W[:, j:j + 1] - (levels[None] - zero[:, j:j + 1]) * scale[:, j:j + 1]  # r_j
        f = 2 * cand * rest[:, None] + Hd[j, j] * cand ** 2
        codes[:, j] = f.argmin(1)
    return codes, (codes.double() - zero) * scale


def _layer(N, K, n, seed, spec):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(N, K, generator=g, dtype=torch.float64) * 0.1
    X = correlated_inputs(K, n, seed)
    return W, 2 * X.T @ X / n


@pytest.mark.parametrize("spec, act_order", [("int4:g16:sym", False), ("int4:g16:sym", True),
                                             ("int3:g8:asym", False), ("int4:sym", False)])
@pytest.mark.parametrize("moved_as, keep", [("dense", True), ("csr", True), ("csr", False)])
def test_one_sweep_equals_the_brute_force_sweep(spec, act_order, moved_as, keep, monkeypatch):
    """Both forms of the moved codes' gradient correction (dense, CSR), and Hd kept by the
    factor or rebuilt from H, against the brute-force sweep (3 blocks: corrections run)."""
    monkeypatch.setattr(refine_mod, "SPARSE_MAX_DENSITY", 1.0 if moved_as == "csr" else -1.0)
    W, H = _layer(12, 48, 400, 0, spec)
    factor = factor_hessian(H, spec, act_order, dtype=torch.float64, keep_hessian=keep)
    assert (factor.Hd is not None) == keep
    Q0, info0 = quantize_weight(W, H, spec, block_size=16, act_order=act_order)
    Q1, info1 = quantize_weight(W, H, spec, block_size=16, act_order=act_order, refine=1,
                                factor=factor)
    Hd = damped(H)
    order = torch.argsort(H.diag(), descending=True) if act_order else torch.arange(48)
    codes, Qref = brute_force_sweep(W, info0.qweight, Hd, order)
    assert torch.equal(info1.qweight.codes().long(), codes)
    assert torch.allclose(Q1, Qref, rtol=0, atol=1e-12)
    # only codes moved: the same scales and zeros, the returned Q is what the packed weight holds
    assert torch.equal(info1.qweight.scale, info0.qweight.scale)
    # (the packed weight dequantizes in float32, this solve ran in float64)
    assert torch.allclose(info1.qweight.dequantize(torch.float64), Q1, rtol=0, atol=1e-7)
    f0, f1 = objective(W, Q0, Hd), objective(W, Q1, Hd)
    assert f1 < f0
    assert info1.refine_gain == pytest.approx((f0 - f1) / f0, rel=1e-9)
    assert info1.refine_sweeps == 1 and info0.refine_gain == 0.0


@settings(max_examples=25, deadline=None)
@example(N=1, K=24, n=9, seed=9, sweeps=1, spec="int4:g8:sym")   # fp32 drift raised f once
@given(N=st.integers(1, 9), K=st.sampled_from([8, 16, 24]), n=st.integers(4, 60),
       seed=st.integers(0, 10_000), sweeps=st.integers(1, 3),
       spec=st.sampled_from(["int4:g8:sym", "int2:g8:asym", "int8:sym", "int4:g8:sym:restricted"]))
def test_refinement_never_raises_the_objective_and_keeps_codes_on_the_grid(N, K, n, seed,
                                                                           sweeps, spec):
    W, H = _layer(N, K, n, seed, spec)
    W = W.float()
    H = H.float()
    Q0, _ = quantize_weight(W, H, spec, block_size=8)
    Q1, info = quantize_weight(W, H, spec, block_size=8, refine=sweeps)
    Hd = damped(H.double(), info.damp_used)         # the damping the solve used
    assert objective(W, Q1, Hd) <= objective(W, Q0, Hd) * (1 + 1e-6)
    qw = info.qweight
    assert torch.equal(qw.dequantize(), Q1)                       # pack -> unpack of the result
    assert int(qw.codes().max()) < qw.spec.levels


def test_sweeps_converge_to_a_coordinate_wise_optimum():
    """After enough sweeps no single entry can move to another level and lower f."""
    W, H = _layer(6, 32, 200, 3, "int3:g8:sym")
    _, info = quantize_weight(W, H, "int3:g8:sym", block_size=8, refine=30)
    codes, _ = brute_force_sweep(W, info.qweight, damped(H), torch.arange(32))
    assert torch.equal(codes, info.qweight.codes().long())


@pytest.mark.parametrize("N", [1, 3])
def test_the_callers_weight_and_hessian_are_never_modified(N):
    """A one-row weight used to be solved in place: W.t().contiguous() is W itself then."""
    W, H = _layer(N, 24, 30, 2, "int4:g8:sym")
    W0, H0 = W.clone(), H.clone()
    quantize_weight(W, H, "int4:g8:sym", block_size=8, refine=1)
    assert torch.equal(W, W0) and torch.equal(H, H0)


def test_dead_inputs_stay_zero_after_refinement():
    W, H = _layer(5, 32, 200, 1, "int4:g8:sym")
    H[3, :] = 0
    H[:, 3] = 0
    Q, info = quantize_weight(W, H, "int4:g8:sym", block_size=8, refine=2)
    assert torch.all(Q[:, 3] == 0) and info.dead == 1


@pytest.mark.parametrize("bad", [-1, 1.5, "two", True])
def test_bad_refine_is_one_clear_error(bad):
    W, H = _layer(4, 16, 40, 0, "int4:g8:sym")
    with pytest.raises(SpecError, match="refine"):
        quantize_weight(W, H, "int4:g8:sym", refine=bad)
    with pytest.raises(SpecError, match="refine"):     # when the pipeline is declared
        P.GPTQ(refine=bad)


def test_auto_refines_only_with_two_tokens_per_input():
    gp = GPTQ()
    assert gp.sweeps_for(2 * 256, 256) == 1 and gp.sweeps_for(2 * 256 - 1, 256) == 0
    assert gp.sweeps_for(None, 256) == 0
    assert GPTQ(refine=0).sweeps_for(10 ** 6, 256) == 0 and GPTQ(refine=3).sweeps_for(1, 256) == 3


def test_pass_reports_refinement_per_layer():
    model = qpass.models.load("tiny-llada")
    calib = CalibrationSet.from_ids(torch.randint(0, 90, (4000,),
                                                  generator=torch.Generator().manual_seed(0)),
                                    mask_id=model.config.mask_token_id, n=4, seq_len=160,
                                    seed=0)
    out = qpass.Pipeline([P.GPTQ()], scheme="int4:g32:sym").run(model, calib, progress=False)
    layers = next(r for r in out.report.passes if r.name == "GPTQ").metrics["layers"]
    for name, st_ in layers.items():
        K = model.get_submodule(name).in_features
        want = int(st_["tokens"] >= 2 * K)
        assert st_["refine_sweeps"] == want, name
        assert (st_["refine_gain"] > 0) == bool(want), name
    assert {s["refine_sweeps"] for s in layers.values()} == {0, 1}   # both sides of the rule

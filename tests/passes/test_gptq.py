"""GPTQ: the single-matrix solver against a float64 textbook GPTQ written here, its damping and
dead-channel rules, and the pass on tiny-llada with real calibration activations."""
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qpass
from qpass import passes as P
from qpass.calibration import CalibrationSet
from qpass.formats import QuantizedWeight
from qpass.ir.qlinear import QuantLinear
from qpass.passes.gptq import quantize_weight, reconstruction_error


def textbook_gptq(W, H, bits, group, symmetric=True, damp=0.01, grid="full"):
    """Column-by-column GPTQ in float64, every update applied at once (no lazy blocks).
    Group parameters from the current weights at each group's first column. Symmetric step:
    2·absmax/(2^b − 1) on the full grid, absmax/(2^(b−1) − 1) on the restricted one."""
    W, H = W.double().clone(), H.double().clone()
    N, K = W.shape
    dead = H.diag() == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * H.diag().mean() * torch.eye(K, dtype=H.dtype)
    U = torch.linalg.cholesky(torch.linalg.inv(H), upper=True)
    Q = torch.zeros_like(W)
    levels = 2 ** bits
    for i in range(K):
        if i % group == 0:
            g = W[:, i:i + group]
            lo, hi = g.min(1).values.clamp(max=0), g.max(1).values.clamp(min=0)
            if symmetric:
                step = 2 / (2 ** bits - 1) if grid == "full" else 1 / (2 ** (bits - 1) - 1)
                s = (torch.maximum(hi, -lo) * step).float().double()
                z = torch.full_like(s, 2 ** (bits - 1))
            else:
                s = ((hi - lo) / (levels - 1)).float().double()
                z = torch.round(-lo / s).clamp(0, levels - 1)
        u = (torch.round(W[:, i] / s) + z).clamp(0, levels - 1)
        Q[:, i] = (u - z) * s
        err = (W[:, i] - Q[:, i]) / U[i, i]
        W[:, i:] -= err[:, None] * U[i, i:][None, :]
    return Q


def correlated_inputs(K, n, seed, outliers=3):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, K, generator=g, dtype=torch.float64)
    X = X @ (torch.eye(K, dtype=torch.float64) + 0.3 * torch.randn(K, K, generator=g,
                                                                     dtype=torch.float64))
    X[:, :outliers] *= 10.0                      # a few outlier channels, as in real LLMs
    return X


def rtn(W, spec):
    return QuantizedWeight.from_float(W, spec).dequantize(torch.float64)


@pytest.mark.parametrize("spec, bits, group, sym, block", [
    ("int4:g32:sym", 4, 32, True, 64),            # groups inside lazy blocks
    ("int4:g32:sym:restricted", 4, 32, True, 64),  # the old grid, still available
    ("int3:g64:asym", 3, 64, False, 48),          # group boundaries inside a block
    ("int3:g16:sym", 3, 16, True, 48),            # groups cut the 32-column sub-blocks
    ("int4:channel", 4, 128, True, 32),            # one group = the whole row
    ("int2:channel:restricted", 2, 128, True, 128),
])
def test_equals_textbook_gptq(spec, bits, group, sym, block):
    X = correlated_inputs(128, 400, seed=1)
    W = torch.randn(24, 128, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    H = 2 * X.T @ X / X.shape[0]
    Wq, info = quantize_weight(W, H, spec, block_size=block)
    ref = textbook_gptq(W, H, bits, group, sym,
                        grid="restricted" if spec.endswith("restricted") else "full")
    assert (Wq - ref).abs().max() < 1e-6
    assert torch.allclose(info.qweight.dequantize(torch.float64), Wq, atol=1e-6)
    e, e_ref = reconstruction_error(W, Wq, H), reconstruction_error(W, ref, H)
    assert abs(e - e_ref) <= 1e-6 * max(e_ref, 1e-12)


@pytest.mark.parametrize("spec, bits, group, sym", [("int4:g32:sym", 4, 32, True),
                                                    ("int3:g64:asym", 3, 64, False)])
def test_group_aware_reordering_is_textbook_gptq_on_the_permuted_problem(spec, bits, group, sym):
    """act_order="group": groups ordered by their largest diag H, columns by diag H inside each
    group; the result is the textbook GPTQ (dynamic groups) of the permuted W and H, permuted
    back, with the packed codes in the original K order."""
    torch.manual_seed(3)
    K, N = 192, 24
    X = correlated_inputs(K, 600, seed=4)
    H = 2 * X.T @ X / X.shape[0]
    W = torch.randn(N, K, dtype=torch.float64)
    d = H.diag().view(-1, group)
    inner = torch.stack([torch.argsort(r, descending=True) for r in d])
    order = sorted(range(d.shape[0]), key=lambda gi: -float(d[gi].max()))
    perm = torch.cat([inner[gi] + gi * group for gi in order])
    assert sorted(perm.tolist()) == list(range(K))
    want = torch.empty_like(W)
    want[:, perm] = textbook_gptq(W[:, perm], H[perm][:, perm], bits, group, sym)
    got, info = quantize_weight(W, H, spec, block_size=64, act_order="group")
    assert not info.static_groups_forced
    assert float((got - want).abs().max()) < 1e-9
    assert torch.allclose(info.qweight.dequantize(torch.float64), got, atol=1e-6)   # packed once, K order


def test_reconstruction_error_matches_explicit_outputs():
    X = correlated_inputs(32, 100, seed=3)
    W = torch.randn(8, 32, dtype=torch.float64)
    Q = W + 0.01 * torch.randn(8, 32, dtype=torch.float64)
    direct = ((X @ W.T - X @ Q.T) ** 2).sum() / ((X @ W.T) ** 2).sum()
    assert abs(reconstruction_error(W, Q, X.T @ X) - direct.item()) < 1e-12


@settings(max_examples=12, deadline=None)
@given(bits=st.integers(2, 8), sym=st.booleans(), act_order=st.booleans(),
       seed=st.integers(0, 1000))
def test_error_at_most_rtn_on_correlated_inputs(bits, sym, act_order, seed):
    spec = f"int{bits}:g32:{'sym' if sym else 'asym'}"
    X = correlated_inputs(64, 256, seed)
    W = torch.randn(16, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    H = 2 * X.T @ X / X.shape[0]
    Wq, info = quantize_weight(W.float(), H.float(), spec, act_order=act_order)
    assert Wq.dtype == torch.float32 and Wq.shape == W.shape
    assert reconstruction_error(W, Wq, H) <= reconstruction_error(W, rtn(W.float(), spec), H) + 1e-9
    # the stored codes are the returned weights, in the standard (original-K) layout
    assert torch.allclose(info.qweight.dequantize(), Wq, atol=1e-6)
    assert info.static_groups_forced == act_order


def test_dead_input_channel_is_zeroed_and_finite():
    X = correlated_inputs(64, 200, seed=4)
    X[:, 5] = 0.0                                  # a dead input channel: H singular
    H = 2 * X.T @ X / X.shape[0]
    assert torch.linalg.matrix_rank(H) < 64
    W = torch.randn(8, 64, dtype=torch.float64)
    Wq, info = quantize_weight(W, H, "int4:g32:sym")
    assert info.dead == 1 and torch.isfinite(Wq).all()
    assert (Wq[:, 5] == 0).all()


def test_non_positive_definite_hessian_escalates_damping():
    K = 32
    H = torch.eye(K, dtype=torch.float64)
    H[0, 0] = -20.0                               # indefinite: 1% damping cannot fix it
    W = torch.randn(4, K, dtype=torch.float64)
    Wq, info = quantize_weight(W, H, "int4:g32:sym", damp=0.01)
    assert info.escalations >= 1 and info.damp_used > 0.01
    assert torch.isfinite(Wq).all()
    with pytest.raises(qpass.CalibrationError, match="NaN"):
        quantize_weight(W, torch.full((K, K), float("nan"), dtype=torch.float64), "int4:g32")


def test_bad_arguments_raise_spec_error():
    W, H = torch.randn(4, 32), torch.eye(32)
    with pytest.raises(qpass.SpecError, match="activation"):
        quantize_weight(W, H, "int8:token:dyn")
    with pytest.raises(qpass.SpecError, match="H"):
        quantize_weight(W, torch.eye(16), "int4:g32")
    with pytest.raises(qpass.SpecError, match="divisible"):
        quantize_weight(W, H, "int4:g24")


def test_info_is_a_frozen_record_with_typed_fields():
    """quantize_weight's info is read by attribute, one type per field, and cannot be changed."""
    import dataclasses

    from qpass.passes._gptq_math import GPTQInfo
    W, H = torch.randn(4, 32), torch.eye(32)
    _, info = quantize_weight(W, H, "int4:g16:sym", act_order=True, refine=1)
    assert isinstance(info, GPTQInfo) and isinstance(info.qweight, QuantizedWeight)
    types = {"damp_used": float, "escalations": int, "loss": float, "dead": int,
             "static_groups_forced": bool, "refine_sweeps": int, "refine_gain": float}
    assert [f.name for f in dataclasses.fields(info)] == ["qweight", *types]
    assert all(type(getattr(info, k)) is t for k, t in types.items())
    assert info.static_groups_forced and info.refine_sweeps == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.loss = 0.0
    with pytest.raises(TypeError):
        info["loss"]

# ---- the pass on tiny-llada ------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_llada_gptq():
    model = qpass.models.load("tiny-llada")
    text = (Path(qpass.__file__).parent / "zoo/tiny-llada/eval/shakespeare_test.txt").read_text()
    calib = CalibrationSet.from_texts([text], model.tokenizer, n=16, seq_len=128, seed=0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)    # tiny matrices: thread fan-out costs more than it saves
    try:
        return qpass.Pipeline([P.FuseNorms(), P.GPTQ("w4a16g128")]).run(model, calib,
                                                                         progress=False)
    finally:
        torch.set_num_threads(threads)


def test_gptq_beats_rtn_on_every_tiny_llada_linear(tiny_llada_gptq):
    rec = next(r for r in tiny_llada_gptq.report.passes if r.name == "GPTQ")
    layers = rec.metrics["layers"]
    assert len(layers) == 6 * 7                   # 6 blocks x (q k v o gate up down); head kept
    for name, m in layers.items():
        assert m["gptq_error"] < m["rtn_error"], name
    assert rec.metrics["better_than_rtn"] == len(layers)


def test_pass_installs_packed_gptq_weights(tiny_llada_gptq):
    q = [m for m in tiny_llada_gptq.modules() if isinstance(m, QuantLinear)]
    assert len(q) == 42 and all(str(m.weight_spec) == "int4:g128:sym" for m in q)
    assert all(m.act_spec is None for m in q)


def test_weight_activation_scheme_sets_dynamic_act_spec():
    model = qpass.models.load("tiny-llada-random")
    calib = CalibrationSet.from_ids(torch.arange(600) % 90, mask_id=96, n=4, seq_len=16)
    out = qpass.Pipeline([P.GPTQ("w4a8", sequential=False)]).run(model, calib, progress=False)
    q = [m for m in out.modules() if isinstance(m, QuantLinear)]
    assert q and all(str(m.act_spec) == "int8:token:dyn" for m in q)


def test_gptq_without_calibration_is_a_clear_error():
    with pytest.raises(qpass.CalibrationError, match="calibration"):
        qpass.Pipeline([P.GPTQ("w4a16g128")]).run(qpass.models.load("tiny-llada-random"),
                                                   None, progress=False)


def test_stage_act_quant_false_takes_in_stage_hessians_from_float_activations():
    """GPTQ(stage_act_quant=False) (QuaRot's order: activation quantizers after the weights):
    block 0 rounds exactly as GPTQ with the weight spec alone (its inputs are the embedding
    either way), every linear still ends with the scheme's activation spec; the default
    (quantized activations inside the stage) rounds block 0's later rounds differently."""
    from qpass.specs import Scheme
    model = qpass.models.load("tiny-llada")
    text = (Path(qpass.__file__).parent / "zoo/tiny-llada/eval/shakespeare_test.txt").read_text()
    calib = CalibrationSet.from_texts([text], model.tokenizer, n=4, seq_len=64, seed=0)
    scheme = Scheme.parse("w4a4")

    def block0(gptq):
        out = qpass.Pipeline([P.FuseNorms(), gptq]).run(model, calib, progress=False)
        q = {n: m for n, m in out.named_modules() if isinstance(m, QuantLinear)}
        return {n: m.quantized_weight().dequantize() for n, m in q.items()
                if ".0." in f".{n}."}, q
    floating, q = block0(P.GPTQ("w4a4", stage_act_quant=False))
    weight_only, _ = block0(P.GPTQ(str(scheme.weight)))
    inside, _ = block0(P.GPTQ("w4a4"))
    assert floating.keys() == weight_only.keys() and len(floating) == 7
    assert all(torch.equal(floating[n], weight_only[n]) for n in floating)
    assert any(not torch.equal(floating[n], inside[n]) for n in floating)
    assert all(str(m.act_spec) == str(scheme.act) for m in q.values())

"""LearnedRotate (SpinQuant-style learned R1/R2): orthogonality, exactness of the fused model,
training lowers the loss, determinism, resume, the Hadamard fallback guard.

References: the untouched float64 model's logits; QᵀQ = I in float64; the formats module's
own fake quantization; Rotate + RTN (the pipeline's real quantized model) for the simulated
forward at the Hadamard start; a closed-form objective for the Cayley step."""
import copy

import pytest
import torch

import qpass
from qpass import hadamard
from qpass import passes as P
from qpass.calibration import CalibrationSet
from qpass.errors import PipelineError
from qpass.formats.codes import fake_quantize
from qpass.ir import capture
from qpass.passes import _cayley
from qpass.passes._rotation_model import RotatedModel, ste_quantize
from qpass.passes._rotation_train import TrainConfig, mean_loss, split_rows, train
from qpass.passes.rotate import _orthonormal_hadamard
from qpass.pipeline import Pipeline
from qpass.specs import QuantSpec, Scheme

# 3-bit weights and activations on tiny-llada: a regime where the quantized loss has signal
# above its rounding-flip noise at this size (at W4A4 the tiny model is within ~2% of FP, and
# one step's change is noise); 7 training rows, all in every step, so the objective is fixed
W3A3 = Scheme("w3a3", "int3:channel", "int3:token:dyn")
CFG = dict(steps=3, lr=0.05, momentum=0.9, batch=8, seed=0, save_every=1, train_r2=True,
           min_gain=0.01)


def _calib(model, n=8, seq_len=32):
    from qpass.data.sources import shakespeare
    text = shakespeare()[0][:20000]
    ids = torch.tensor(model.tokenizer(text)["input_ids"][: n * seq_len])
    return CalibrationSet.from_ids(ids, mask_id=model.config.mask_token_id, n=n, seq_len=seq_len,
                                   masking="none" if model.config.causal else "diffusion",
                                   seed=0, windows="tile")


@pytest.fixture(scope="module")
def llada():
    model = qpass.models.load("tiny-llada")
    return model, _calib(model)


def _rotated_model(model, calib, scheme=W3A3):
    g = capture(copy.deepcopy(model), (calib.input_ids[:1],))
    rot = P.Rotate()
    plan = rot._stream(g)
    rm = RotatedModel(rot, g, plan, scheme if isinstance(scheme, Scheme) else
                      Scheme.parse(scheme), calib)
    R1 = hadamard.random_matrix(plan.hidden_size, 0)
    R2 = [_orthonormal_hadamard(hd, "cpu") for hd in rm.head_dims()]
    return rm, R1, R2


def _ortho_err(R: torch.Tensor) -> float:
    R = R.double()
    return float((R.T @ R - torch.eye(R.shape[0], dtype=torch.float64)).abs().max())


@pytest.mark.parametrize("spec", ["int4:channel", "int4:token:dyn", "int4:g32", "int8:token:dyn",
                                  "int4:token:dyn:clip0.9"])
def test_ste_quantize_equals_the_formats_fake_quantize(spec):
    x = torch.randn(6, 64, generator=torch.Generator().manual_seed(0)) * 3
    s = QuantSpec.parse(spec)
    y = ste_quantize(x.clone().requires_grad_(True), s)
    torch.testing.assert_close(y.detach(), fake_quantize(x, s), rtol=0, atol=1e-5)


def test_cayley_step_stays_orthogonal_and_descends():
    """f(X) = ‖X − T‖²: the Cayley step along its gradient lowers f and keeps XᵀX = I."""
    gen = torch.Generator().manual_seed(0)
    X = torch.linalg.qr(torch.randn(16, 16, generator=gen, dtype=torch.float64))[0]
    T = torch.linalg.qr(torch.randn(16, 16, generator=gen, dtype=torch.float64))[0]
    f0 = float((X - T).pow(2).sum())
    M = None
    for _ in range(30):
        X, M = _cayley.step(X, 2 * (X - T), M, lr=0.05, momentum=0.5)
    assert _ortho_err(X) < 1e-12
    assert float((X - T).pow(2).sum()) < 0.5 * f0


def test_cayley_momentum_keeps_a_tangent_direction():
    """A momentum already tangent at X (X·Ω, Ω skew) is carried over unchanged, not doubled."""
    gen = torch.Generator().manual_seed(1)
    X = torch.linalg.qr(torch.randn(8, 8, generator=gen, dtype=torch.float64))[0]
    W = torch.randn(8, 8, generator=gen, dtype=torch.float64)
    M = X @ (W - W.T)
    _, M2 = _cayley.step(X, torch.zeros_like(M), M, lr=1e-12, momentum=1.0)
    torch.testing.assert_close(M2, M, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("scheme,tol", [("w8a8", 2e-2)])
def test_simulated_forward_at_the_hadamard_equals_rotate_then_rtn(llada, scheme, tol):
    """At R1 = Rotate's Q and R2 = Hₕ, the training forward is the model Rotate + RTN make
    (up to rounding-boundary flips of float32 vs float64 folds)."""
    model, calib = llada
    rm, R1, R2 = _rotated_model(model, calib, scheme)
    ref = Pipeline([P.FuseNorms(), P.Rotate(), P.RTN()], scheme=scheme).run(
        model, calib, progress=False)
    x = calib.input_ids[:2]
    with torch.no_grad():
        a, b = rm.logits(R1.float(), [r.float() for r in R2], x), ref(x)
    assert float((a - b).abs().max() / b.abs().max()) < tol


def test_rotation_is_invariant_for_the_float_model(llada):
    """Without quantization the loss does not depend on R1: its Riemannian gradient is 0."""
    model, calib = llada
    rm, R1, R2 = _rotated_model(model, calib, Scheme(name="none", weight=None))
    r1 = R1.float().requires_grad_(True)
    rm.loss(r1, [r.float() for r in R2], torch.arange(4)).backward()
    A = _cayley.skew_direction(R1, r1.grad.double())
    assert float(A.abs().max()) < 1e-3 * max(1.0, float(r1.grad.abs().max()))


@pytest.fixture(scope="module")
def trained(llada):
    model, calib = llada
    rm, R1, R2 = _rotated_model(model, calib)
    return rm, R1, R2, train(rm, R1, R2, TrainConfig(**CFG), None, "k")


def test_trained_rotations_are_orthogonal_and_lower_the_training_loss(trained):
    rm, R1, R2, t = trained
    assert len(t.losses) == CFG["steps"] and not t.fell_back
    assert (t.R1 - R1).abs().max() > 1e-3                  # it moved
    assert _ortho_err(t.R1) < 1e-5 and all(_ortho_err(r) < 1e-5 for r in t.R2)
    rows = split_rows(rm.rows())[0]
    before = mean_loss(rm, R1.float(), [r.float() for r in R2], rows, 8)
    after = mean_loss(rm, t.R1.float(), [r.float() for r in t.R2], rows, 8)
    assert after <= before
    assert t.held_end < 0.99 * t.held_start                # what the guard kept it for


def test_training_is_deterministic(trained, llada):
    rm, R1, R2, t = trained
    again = train(rm, R1, R2, TrainConfig(**CFG), None, "k")
    assert torch.equal(again.R1, t.R1) and all(torch.equal(a, b) for a, b in zip(again.R2, t.R2))
    assert again.losses == t.losses


def test_resume_repeats_an_uninterrupted_run(trained, tmp_path):
    rm, R1, R2, t = trained
    path = tmp_path / "learned-rotation.pt"

    def stop(step):
        if step == 2:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train(rm, R1, R2, TrainConfig(**CFG), path, "k", on_step=stop)
    assert path.is_file() and torch.load(path, weights_only=True)["step"] == 2
    resumed = train(rm, R1, R2, TrainConfig(**CFG), path, "k")
    assert resumed.resumed_at == 2 and resumed.losses == t.losses
    assert torch.equal(resumed.R1, t.R1) and all(torch.equal(a, b)
                                                for a, b in zip(resumed.R2, t.R2))
    assert not path.exists()                # done: the work folder may go
    other = train(rm, R1, R2, TrainConfig(**{**CFG, "steps": 1}), path, "another key")
    assert other.resumed_at == 0


def test_fused_learned_model_equals_the_float_model(llada):
    """Exactness in float64 of the whole pipeline (the pass manager verifies each stage too),
    with rotations that really differ from the Hadamard start."""
    model, calib = llada
    m64 = copy.deepcopy(model).double()
    out = Pipeline([P.FuseNorms(), P.LearnedRotate(**CFG)], scheme=W3A3).run(
        m64, calib, dtype=torch.float64, progress=False)
    rec = out.report.passes[-1]
    assert rec.name == "LearnedRotate" and rec.verified_rel_change <= 1e-9
    x = calib.input_ids[:2]
    with torch.no_grad():
        y, ref = out(x), m64(x)
    assert float((y - ref).abs().max() / ref.abs().max()) <= 1e-9
    assert rec.metrics["train_steps"] == CFG["steps"]
    assert rec.metrics["fell_back_to_hadamard"] is False


def test_guard_falls_back_to_the_hadamard_when_training_fails(llada, monkeypatch):
    """Training made to fail (every step's rotation turns to NaN): Rotate's Hadamard is fused,
    weight for weight, and the report says so."""
    from qpass.passes import _rotation_train

    def broken(X, G, M, lr, momentum):
        return X * float("nan"), G
    monkeypatch.setattr(_rotation_train._cayley, "step", broken)
    model, calib = llada
    bad = Pipeline([P.FuseNorms(), P.LearnedRotate(**CFG)], scheme=W3A3).run(
        model, calib, progress=False)
    rec = bad.report.passes[-1]
    assert rec.metrics["fell_back_to_hadamard"] is True
    assert any("Hadamard rotation" in n for n in rec.notes)
    quarot = Pipeline([P.FuseNorms(), P.Rotate()], scheme=W3A3).run(model, calib, progress=False)
    for name in ("embed", "blocks.0.v_proj", "blocks.0.o_proj", "blocks.0.down_proj", "head"):
        assert torch.equal(bad.gm.get_submodule(name).weight,
                           quarot.gm.get_submodule(name).weight), name


def test_bad_settings_are_one_clear_error(llada):
    model, calib = llada
    with pytest.raises(PipelineError, match="steps"):
        P.LearnedRotate(steps=-1)
    with pytest.raises(PipelineError, match="lr"):
        P.LearnedRotate(lr=0)
    with pytest.raises(PipelineError, match="scheme"):
        Pipeline([P.FuseNorms(), P.LearnedRotate(steps=1)]).run(model, calib, progress=False)
    plain = CalibrationSet.from_ids(calib.clean_ids.reshape(-1), n=4, seq_len=32, masking="none",
                                    seed=0, windows="tile")
    with pytest.raises(PipelineError, match="masking='diffusion'"):
        Pipeline([P.FuseNorms(), P.LearnedRotate(steps=1)], scheme="w4a4").run(
            model, plain, progress=False)


def test_activation_only_training_leaves_the_weights_unrounded(llada):
    """fake_quant_weights=False (W16A4 training, SpinQuant's recipe before GPTQ) is the same
    forward as a scheme that quantizes activations only."""
    model, calib = llada
    g = capture(copy.deepcopy(model), (calib.input_ids[:1],))
    rot = P.Rotate()
    plan = rot._stream(g)
    a = RotatedModel(rot, g, plan, Scheme.parse("w8a8"), calib, weights=False)
    b = RotatedModel(rot, g, plan, Scheme("a8", None, "int8:token:dyn"), calib)
    full = RotatedModel(rot, g, plan, Scheme.parse("w8a8"), calib)
    assert not a.wspec and a.aspec == b.aspec and full.wspec
    R1 = hadamard.random_matrix(plan.hidden_size, 0).float()
    R2 = [_orthonormal_hadamard(hd, "cpu").float() for hd in a.head_dims()]
    x = calib.input_ids[:2]
    with torch.no_grad():
        assert torch.equal(a.logits(R1, R2, x), b.logits(R1, R2, x))
        assert not torch.equal(a.logits(R1, R2, x), full.logits(R1, R2, x))

"""LearnedAffine (FlatQuant-style learned input transforms, trained block by block): the
transform algebra against dense float64 matrices, exactness of the folded model, training
lowers each block's loss, the guard, determinism, save/load and lowering.

References: torch.kron / torch.linalg.inv in float64 (the transform written densely); the
untouched model's logits (exactness); the identity transform's loss (the guard)."""
import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qpass
from qpass import passes as P
from qpass.errors import PipelineError
from qpass.passes._affine_transform import AffineTransform, kron_factors
from qpass.passes._rotation_model import ste_quantize
from qpass.pipeline import Pipeline
from qpass.runtime.online import channel_transform
from qpass.specs import Scheme

W3A3 = Scheme("w3a3", "int3:channel", "int3:token:dyn")    # signal above noise at tiny size
# the `llada` fixture (tiny-llada, 8x128 calibration windows, probe ids, FP logits): conftest


def _random_transform(n, seed):
    torch.manual_seed(seed)
    tr = AffineTransform(n)
    with torch.no_grad():
        tr.A.add_(0.3 * torch.randn_like(tr.A))
        tr.B.add_(0.3 * torch.randn_like(tr.B))
        tr.log_s.copy_(0.5 * torch.randn_like(tr.log_s))
    return tr


@pytest.mark.parametrize("n,ab", [(576, (24, 24)), (1536, (32, 48)), (64, (8, 8)),
                                  (13, (1, 13)), (96, (8, 12))])
def test_kron_factors(n, ab):
    assert kron_factors(n) == ab


@settings(max_examples=15, deadline=None)
@given(n=st.sampled_from([6, 12, 16, 30, 64]), seed=st.integers(0, 10_000))
def test_transform_matches_dense_float64_and_cancels(n, seed):
    """act(x) = x·M and weight(W) = W·T against the dense float64 matrices; M·Tᵀ = I."""
    tr = _random_transform(n, seed).double()
    M, T = tr.matrices()
    K = torch.kron(tr.A.detach(), tr.B.detach())
    s = torch.exp(tr.log_s.detach())
    assert torch.allclose(M, torch.diag(1 / s) @ K, atol=1e-12)
    assert torch.allclose(T, torch.diag(s) @ torch.linalg.inv(K).T, atol=1e-9)
    assert torch.allclose(M @ T.T, torch.eye(n, dtype=torch.float64), atol=1e-9)
    x, W = torch.randn(5, n, dtype=torch.float64), torch.randn(7, n, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(tr.act(x), x @ M, atol=1e-9)
        assert torch.allclose(tr.weight(W), W @ T, atol=1e-8)
        assert torch.allclose(tr.act(x) @ tr.weight(W).T, x @ W.T, atol=1e-8)


def test_untrained_transform_is_identity():
    tr = AffineTransform(24)
    M, T = tr.matrices()
    assert torch.equal(M, torch.eye(24, dtype=torch.float64))
    assert torch.equal(T, torch.eye(24, dtype=torch.float64))


def test_learned_clip_fake_quant_against_brute_force():
    """Per-token symmetric int4 with a learned clip 0.8: every row's values on its own
    16-level full grid (−8…7, step absmax·0.8/7.5: ±absmax·0.8 land on −8 and, clipped, 7),
    and the clip gets a gradient (its range is learned)."""
    from qpass.specs import QuantSpec
    torch.manual_seed(0)
    x = torch.randn(6, 32)
    spec = QuantSpec.parse("int4:token:dyn")
    q = ste_quantize(x, spec, clip=0.8)
    for r in range(6):
        s = float(x[r].abs().max()) * 0.8 / 7.5
        ref = torch.tensor([max(-8, min(7, round(v / s))) * s for v in x[r].tolist()])
        assert torch.allclose(q[r], ref, atol=1e-6)
    clip = torch.tensor(0.8, requires_grad=True)
    ste_quantize(x, spec, clip=clip).square().sum().backward()
    assert clip.grad is not None and clip.grad != 0


def _run(model, calib, **kw):
    pipe = Pipeline([P.FuseNorms(), P.Rotate(), P.LearnedAffine(**kw)], scheme=W3A3)
    return pipe.run(model, calib, progress=False)


def test_folded_model_is_exact_and_training_lowers_block_loss(llada):
    model, calib, ids, ref = llada
    out = _run(model, calib, epochs=3, lr=0.01, min_gain=0.0)
    rec = next(r for r in out.report.passes if r.name == "LearnedAffine")
    losses = rec.metrics["stage_loss"]
    assert len(losses) == model.config.n_layers
    assert all(v["learned"] < v["identity"] for v in losses.values()), losses
    gm = out.gm
    transforms = [n for n in gm.graph.nodes if n.target is channel_transform]
    assert len(transforms) == 4 * len(losses)           # qkv, o, gate/up, down per block
    with torch.no_grad():
        got = out(ids).double()                          # float weights: nothing rounded yet
    assert (got - ref.double()).abs().max() / ref.abs().max() < 1e-4


def test_guard_keeps_blocks_unchanged_when_nothing_is_gained(llada):
    model, calib, ids, ref = llada
    out = _run(model, calib, epochs=1, lr=1e-9, clip_lr=0.0, min_gain=0.5)
    rec = next(r for r in out.report.passes if r.name == "LearnedAffine")
    assert not rec.nodes_changed
    assert rec.notes and all("kept the block as it was" in n for n in rec.notes)
    gm = out.gm
    assert not any(n.target is channel_transform for n in gm.graph.nodes)


def test_deterministic_with_seed(llada):
    model, calib, ids, ref = llada
    a = _run(model, calib, epochs=1, min_gain=0.0, seed=3).state_dict()
    b = _run(model, calib, epochs=1, min_gain=0.0, seed=3).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_with_gptq_lower_save_load(llada, tmp_path):
    """The transforms survive weight rounding, lowering to the reference backend and a
    save/load round trip with the same logits."""
    model, calib, ids, ref = llada
    pipe = Pipeline([P.FuseNorms(), P.Rotate(), P.LearnedAffine(epochs=1, min_gain=0.0),
                     P.GPTQ(), P.ObserveActivations(), P.Lower()], scheme="w4a4")
    out = pipe.run(model, calib, progress=False)
    out.save(tmp_path / "m")
    back = qpass.load_compiled(tmp_path / "m")
    with torch.no_grad():
        assert torch.allclose(out(ids), back(ids), atol=1e-5)


@pytest.mark.parametrize("kw,msg", [({"epochs": -1}, "epochs"), ({"lr": 0}, "lr"),
                                    ({"min_gain": 1.0}, "min_gain"), ({"target": "fp"}, "target"),
                                    ({"mask_weight": 0.0}, "mask_weight")])
def test_bad_arguments(kw, msg):
    with pytest.raises(PipelineError, match=msg):
        P.LearnedAffine(**kw)


def test_model_target_is_the_float_models_block_output(llada):
    """target="model": every block is trained toward the float model's outputs (its inputs
    the float model's own), so the identity's loss includes what the earlier quantized
    blocks left and grows with depth; block 0 reads the embedding alone, the same inputs
    either way. The fold stays exact (the pipeline verifies it on every block)."""
    model, calib, ids, ref = llada

    def losses(target):
        pipe = Pipeline([P.FuseNorms(), P.Rotate(),
                         P.LearnedAffine(epochs=1, min_gain=0.0, target=target),
                         P.RTN(), P.ObserveActivations()], scheme=W3A3)
        out = pipe.run(model, calib, progress=False)
        rec = next(r for r in out.report.passes if r.name == "LearnedAffine")
        return rec.metrics["stage_loss"]
    block, full = losses("block"), losses("model")
    assert full["block 0"]["identity"] == pytest.approx(block["block 0"]["identity"], rel=1e-6)
    last = f"block {model.config.n_layers - 1}"
    assert full[last]["identity"] > 1.5 * block[last]["identity"]
    assert all(v["learned"] < v["identity"] for v in full.values()), full


def test_mask_weight_weights_masked_token_errors():
    """mask_weight: a [MASK] position's token error counts mask_weight times a visible
    one's, on batches whose ids carry the calibration set's mask id; else a plain mean."""
    from types import SimpleNamespace
    ids = torch.tensor([[5, 9, 9, 3], [9, 1, 2, 9]])
    ctx = SimpleNamespace(calib=SimpleNamespace(mask_id=9))
    w = P.LearnedAffine(mask_weight=4.0)._token_weights(ctx, (ids,), ids.shape)
    assert torch.equal(w, torch.tensor([[1., 4., 4., 1.], [4., 1., 1., 4.]]))
    assert P.LearnedAffine()._token_weights(ctx, (ids,), ids.shape) is None
    no_mask = SimpleNamespace(calib=SimpleNamespace(mask_id=None))
    assert P.LearnedAffine(mask_weight=4.0)._token_weights(no_mask, (ids,), ids.shape) is None
    assert P.LearnedAffine(mask_weight=4.0)._token_weights(ctx, (ids,), (2, 3)) is None


def test_needs_a_scheme(llada):
    model, calib, ids, ref = llada
    with pytest.raises(PipelineError, match="scheme"):
        Pipeline([P.FuseNorms(), P.LearnedAffine()]).run(model, calib, progress=False)


def test_learned_clip_reaches_the_activation_spec(llada):
    """LearnedAffine's clip ratio becomes the linear's act_spec unless ObserveActivations is
    told one; learn_clip=False leaves the spec unclipped."""
    model, calib, ids, ref = llada

    def specs(learn_clip, **obs):
        pipe = Pipeline([P.FuseNorms(), P.Rotate(), P.LearnedAffine(epochs=1, min_gain=0.0,
                                                                    learn_clip=learn_clip),
                         P.ObserveActivations(**obs)], scheme=W3A3)
        out = pipe.run(model, calib, progress=False)
        return {n.target: out.gm.get_submodule(n.target).act_spec.clip_ratio
                for n in out.gm.graph.nodes if "act_clip" in n.meta.get("qpass", {})}, out
    learned, out = specs(True)
    assert learned and all(0 < r < 1 for r in learned.values())
    rec = next(r for r in out.report.passes if r.name == "ObserveActivations")
    assert all(rec.metrics["act_clip"][t]["ratio"] == r for t, r in learned.items())
    told, _ = specs(True, clip_ratio=1.0)
    assert told.keys() == learned.keys() and all(r == 1.0 for r in told.values())
    none, _ = specs(False)
    assert not none


def test_gptq_observer_field_follows_the_pipeline_scheme():
    """GPTQ(observer="mse") (w4a4-learned's weight ranges) keeps the observer whichever
    scheme the pipeline binds, attention spec included."""
    from qpass import presets
    pre = presets.get("w4a4-learned")
    gptq = next(p for p in pre.passes if type(p).__name__ == "GPTQ")
    assert str(gptq.scheme.weight) == "int4:channel:mse"
    kv4 = Pipeline(pre.passes, scheme="w4a4kv4")
    gptq = next(p for p in kv4.passes if type(p).__name__ == "GPTQ")
    assert str(gptq.scheme.weight) == "int4:channel:mse" and gptq.scheme.attn.bits == 4
    assert "observer='mse'" in repr(gptq) and "stage_act_quant=False" in repr(gptq)
    assert gptq.stage_act_quant is False

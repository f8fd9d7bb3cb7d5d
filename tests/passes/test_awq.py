"""AWQ: the Gram-matrix error identity against direct matmuls, the scale search never loses to
RTN and wins on planted salient channels, clipping equals quantizing with a clipped range,
scale folding alone is exact (float64), and AWQ + RTN beats RTN end to end on a model with
planted outliers."""
import pytest
import torch

import qpass
from qpass import passes as P
from qpass.formats import compute_qparams, fake_quantize
from qpass.passes.awq import awq_scale_search, clip_search, output_error
from qpass.pipeline import Pipeline
from qpass.specs import QuantSpec

SPEC = QuantSpec.parse("int3:g16:sym")


def _salient(n_tokens=256, k=64, n=48, seed=0):
    """Inputs with a few large ("salient") channels and weights of ordinary size."""
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(n_tokens, k, generator=gen, dtype=torch.float64)
    X[:, [5, 21, 50]] *= 30.0
    W = torch.randn(n, k, generator=gen, dtype=torch.float64) * 0.1
    return X, W


def test_gram_error_equals_direct_output_error():
    X, W = _salient()
    W2 = fake_quantize(W, SPEC)
    direct = float((X @ W.T - X @ W2.T).pow(2).sum())
    assert output_error(W, W2, X.T @ X) == pytest.approx(direct, rel=1e-10)


def test_scale_search_never_loses_to_rtn_and_wins_on_salient_channels():
    X, W = _salient()
    gram = X.T @ X
    s, alpha, errors = awq_scale_search(X.abs().mean(0), gram, [W], [SPEC], n_grid=10)
    rtn = float((X @ W.T - X @ fake_quantize(W, SPEC).T).pow(2).sum())
    assert errors[0] == pytest.approx(rtn, rel=1e-9)         # α = 0 is plain RTN
    best = float((X @ W.T - (X / s) @ fake_quantize(W * s, SPEC).T).pow(2).sum())
    assert best == pytest.approx(min(errors), rel=1e-9)      # the reported error is real
    assert alpha > 0 and best < 0.8 * rtn


@pytest.mark.parametrize("spec", ["int3:g16:sym", "int4:g16:asym", "int4:channel"])
def test_clipping_clamps_each_group_and_shrinks_its_range(spec):
    """Clipping = clamping each (row, group) to r·range in float (as AWQ does), so the later
    RTN pass derives a quantization scale exactly r times the unclipped one."""
    spec = QuantSpec.parse(spec)
    X, W = _salient(seed=3)
    Wc, ratio, e0, e1 = clip_search(W, spec, X.T @ X, n_grid=20)
    assert e1 <= e0 and ratio.min() >= 0.5 and ratio.max() <= 1.0 and ratio.min() < 1.0
    gs = spec.group_size or W.shape[1]
    Wg, r = W.reshape(W.shape[0], -1, gs), ratio.unsqueeze(-1)
    if spec.symmetric:
        lo, hi = -r * Wg.abs().amax(-1, keepdim=True), r * Wg.abs().amax(-1, keepdim=True)
    else:
        lo, hi = r * Wg.amin(-1, keepdim=True).clamp(max=0), r * Wg.amax(-1, keepdim=True).clamp(min=0)
    ref = torch.where(Wg > hi, hi, torch.where(Wg < lo, lo, Wg))
    torch.testing.assert_close(Wc, ref.reshape(W.shape), rtol=0, atol=1e-15)
    s_clipped, s_plain = compute_qparams(Wc, spec)[0], compute_qparams(W, spec)[0]
    torch.testing.assert_close(s_clipped.double(), (ratio * s_plain.double()), rtol=1e-6, atol=0)


def _ids(vocab, shape=(8, 24), seed=1):
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", ["tiny-llada-random", "tiny-dream-random"])
def test_scale_folding_without_clipping_is_exact(family):
    """AWQ with clip=False only folds scales: the float64 logits must not move, the node
    count must not change, and every found pair gets a recorded scale."""
    model = qpass.models.load(family, dtype=torch.float64)
    probe = _ids(model.config.vocab_size, (2, 12), seed=5)
    n_nodes = len(qpass.capture(model, (probe,)).graph.nodes)
    out = Pipeline([P.AWQ("int4:g16:sym", n_grid=10, clip=False)]).run(
        model, calib=_ids(model.config.vocab_size), progress=False)
    with torch.no_grad():
        ref, got = model(probe), out(probe)
    assert float((got - ref).abs().max() / ref.abs().max()) <= 1e-9
    assert len(out.gm.graph.nodes) == n_nodes
    rec = out.report.passes[0]
    assert rec.metrics["smoothed"] == (8 if family == "tiny-llada-random" else 6)
    assert all(p["error_awq"] <= p["error_rtn"] for p in rec.metrics["pairs"])


def test_awq_then_rtn_beats_rtn_on_planted_outliers():
    model = qpass.models.load("tiny-llada-random")
    with torch.no_grad():                       # salient input channels of q/k/v and down
        for blk in model.blocks:
            blk.attn_norm.weight[[3, 17, 40]] *= 20.0
            blk.up_proj.weight[[7, 90]] *= 20.0
    calib, probe = _ids(model.config.vocab_size), _ids(model.config.vocab_size, (4, 24), seed=9)
    scheme = "int3:g32:sym"
    rtn = Pipeline([P.RTN(scheme)]).run(model, progress=False)
    awq = Pipeline([P.AWQ(scheme, n_grid=10), P.RTN(scheme)]).run(model, calib=calib,
                                                                  progress=False)
    with torch.no_grad():
        ref = model(probe)
        err_rtn = float((rtn(probe) - ref).pow(2).mean())
        err_awq = float((awq(probe) - ref).pow(2).mean())
    assert err_awq < 0.7 * err_rtn, (err_awq, err_rtn)
    assert awq.report.passes[0].metrics["clipped"]          # clipping ran on o/gate/up/down
    assert not any("q_proj" in c["linear"] or "k_proj" in c["linear"]
                   for c in awq.report.passes[0].metrics["clipped"])

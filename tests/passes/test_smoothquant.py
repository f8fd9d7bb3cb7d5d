"""SmoothQuant: exact on all three families (float64 logits of the untouched model as the
reference), scales equal to the formula computed by hand, no extra nodes, flatter inputs of the
smoothed linears when outlier channels are planted, and the order rules with FuseNorms/Rotate."""
import pytest
import torch

import qpass
from qpass import passes as P
from qpass.errors import CalibrationError, PipelineError, SpecError
from qpass.calibration.stats import channel_ratio, collect_input_stats
from qpass.inspect.smoothing import smoothing_rows
from qpass.pipeline import Pipeline

FAMILIES = ["tiny-llada-random", "tiny-dream-random", "tiny-llama-random"]
ALL = ("norm", "linear_rows", "v_rows")


def _ids(vocab, shape=(4, 16), seed=1):
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


def _rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("family", FAMILIES)
def test_smoothquant_is_exact_in_float64(family):
    model = qpass.models.load(family, dtype=torch.float64)
    calib, probe = _ids(model.config.vocab_size), _ids(model.config.vocab_size, (2, 12), seed=7)
    n_nodes = len(qpass.capture(model, (probe,)).graph.nodes)
    out = Pipeline([P.SmoothQuant(0.5, kinds=ALL)], verify=True).run(model, calib=calib,
                                                                  progress=False)
    rec = out.report.passes[0]
    assert rec.name == "SmoothQuant" and rec.verified_rel_change <= 1e-9
    with torch.no_grad():
        assert _rel(out(probe), model(probe)) <= 1e-9
    assert len(out.gm.graph.nodes) == n_nodes              # scales folded: no extra node
    pairs = rec.metrics["pairs"]
    assert pairs and all(p["scale_min"] > 0 for p in pairs)
    # the folding really happened: some scale is far from 1 and the norms are no longer γ
    assert max(p["scale_max"] / p["scale_min"] for p in pairs) > 2
    assert not torch.allclose(out.gm.get_submodule("blocks.0.attn_norm").weight,
                              model.blocks[0].attn_norm.weight)
    # what `qpass inspect --after SmoothQuant` shows: every pair, skipped ones with a reason
    rows = smoothing_rows(out)
    assert sorted(r["producer"] for r in rows if not r["skipped_reason"]) == \
        sorted(p["producer"] for p in pairs)
    skipped = {r["producer"]: r["skipped_reason"] for r in rows if r["skipped_reason"]}
    gqa = model.config.n_kv_heads < model.config.n_heads
    assert {k for k, v in skipped.items() if "GQA" in v} == \
        ({f"blocks.{i}.v_proj" for i in range(model.config.n_layers)} if gqa else set())


def test_scales_follow_the_formula():
    """s_j = max|X_j|^α / max|W_j|^(1−α), X_j from the untouched model's q/k/v input, W over
    q, k and v's columns: the norm weight becomes γ/s and q's columns W·s."""
    alpha = 0.35
    model = qpass.models.load("tiny-llada-random", dtype=torch.float64)
    calib = _ids(model.config.vocab_size)
    g0 = qpass.capture(model, (calib,))
    q_node = next(n for n in g0.graph.nodes if n.target == "blocks.0.q_proj")
    X = collect_input_stats(g0, calib, [q_node])["blocks.0.q_proj"].channel_absmax
    blk = model.blocks[0]
    W = torch.cat([blk.q_proj.weight, blk.k_proj.weight, blk.v_proj.weight]).detach().abs().amax(0)
    s = X ** alpha / W ** (1 - alpha)
    out = Pipeline([P.SmoothQuant(alpha)], verify=False).run(model, calib=calib, progress=False)
    torch.testing.assert_close(out.gm.get_submodule("blocks.0.attn_norm").weight.detach(),
                               blk.attn_norm.weight.detach() / s, rtol=1e-12, atol=0)
    torch.testing.assert_close(out.gm.get_submodule("blocks.0.q_proj").weight.detach(),
                               blk.q_proj.weight.detach() * s[None, :], rtol=1e-12, atol=0)


def _plant_outliers(model, channels=(3, 17, 40), factor=40.0):
    """Outlier channels at the inputs of q/k/v (via the norm weight) and of down (via up's
    rows) — what the study saw in dLLMs."""
    with torch.no_grad():
        for blk in model.blocks:
            blk.attn_norm.weight[list(channels)] *= factor
            blk.up_proj.weight[list(channels)] *= factor
    return model


def test_smoothing_lowers_the_max_median_ratio_of_smoothed_inputs():
    model = _plant_outliers(qpass.models.load("tiny-llada-random", dtype=torch.float64))
    calib = _ids(model.config.vocab_size, (4, 24))
    out = Pipeline([P.SmoothQuant(0.5, kinds=ALL)], verify=True).run(model, calib=calib,
                                                                  progress=False)
    names = ["blocks.0.q_proj", "blocks.1.q_proj", "blocks.0.down_proj", "blocks.1.down_proj"]
    before = _ratios(qpass.capture(model, (calib,)), names, calib)
    after = _ratios(qpass.capture(out.gm, (calib,)), names, calib)
    recs = {r["producer"]: r for r in out.report.passes[-1].metrics["pairs"]}
    for name in names:
        assert before[name] > 10, (name, before[name])     # the plant worked
        assert after[name] < before[name] / 3, (name, before[name], after[name])
        # the pass's own metrics agree with the independent measurement
        producer = name.replace("q_proj", "attn_norm").replace("down_proj", "up_proj")
        assert recs[producer]["ratio_before"] == pytest.approx(before[name], rel=1e-9)
        assert recs[producer]["ratio_after"] == pytest.approx(after[name], rel=1e-6)


def test_fusing_norms_first_gives_the_same_weights():
    """With FuseNorms first, X loses γ and W gains it, so s' = s/γ and the folded result is
    the same model, weight for weight (γ > 0 here)."""
    model = _plant_outliers(qpass.models.load("tiny-llada-random", dtype=torch.float64))
    calib = _ids(model.config.vocab_size, (4, 24))
    a = Pipeline([P.SmoothQuant(0.5)], verify=False).run(model, calib=calib, progress=False)
    b = Pipeline([P.FuseNorms(), P.SmoothQuant(0.5)], verify=False).run(model, calib=calib,
                                                                          progress=False)
    pb = dict(b.gm.named_parameters())
    blocks = [(n, w) for n, w in a.gm.named_parameters() if n.startswith("blocks.")]
    assert len(blocks) == 2 * 9                    # (the final norm → head is FuseNorms' alone)
    for name, wa in blocks:
        torch.testing.assert_close(wa, pb[name], rtol=1e-9, atol=1e-12, msg=name)


def _ratios(g, names, calib):
    nodes = [n for n in g.graph.nodes if n.target in names]
    st = collect_input_stats(g, calib, nodes)
    return {n.target: channel_ratio(st[n.target].channel_absmax) for n in nodes}


def test_alpha_search_stays_exact_and_picks_from_the_grid():
    model = qpass.models.load("tiny-llama-random", dtype=torch.float64)
    out = Pipeline([P.SmoothQuant("search", kinds=ALL)], verify=True).run(
        model, calib=_ids(model.config.vocab_size), progress=False)
    rec = out.report.passes[0]
    assert rec.verified_rel_change <= 1e-9
    alphas = {p["alpha"] for p in rec.metrics["pairs"]}
    assert alphas <= set(P.smoothquant.ALPHA_GRID)


def test_user_mistakes_raise_clear_errors():
    with pytest.raises(SpecError, match="alpha"):
        P.SmoothQuant(alpha=1.5)
    with pytest.raises(SpecError, match="kinds"):
        P.SmoothQuant(kinds=("up_down",))
    model = qpass.models.load("tiny-llada-random")
    with pytest.raises(CalibrationError, match="SmoothQuant"):
        Pipeline([P.SmoothQuant()]).run(model, progress=False)
    # smoothing leaves non-unit norms: Rotate (needs weightless norms) cannot follow it
    with pytest.raises(PipelineError, match="SmoothQuant"):
        Pipeline([P.FuseNorms(), P.SmoothQuant(), P.Rotate()])
    with pytest.raises(PipelineError, match="before weight rounding"):
        Pipeline([P.FuseNorms(), P.RTN("w8a8"), P.SmoothQuant()])

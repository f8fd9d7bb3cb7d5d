"""Rotate (QuaRot): exactness on all three families, online Hadamard nodes, outlier spreading.

References: the untouched float64 model's logits (independent of the pass and the verifier),
the orthogonality identity QᵀQ = I, and max/median channel ratios measured on real inputs."""
import io

import pytest
import torch
from rich.console import Console

import qpass
from qpass import passes as P
from qpass.errors import PipelineError
from qpass.inspect.outliers import outlier_table, per_block, render_outliers
from qpass.ir.structure import role
from qpass.models import ModelConfig, build
from qpass.pipeline import Pipeline

FAMILIES = ["tiny-llada-random", "tiny-dream-random", "tiny-llama-random"]


def _rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _ids(vocab, shape=(2, 12), seed=1):
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=FAMILIES)
def rotated(request):
    model = qpass.models.load(request.param, dtype=torch.float64)
    out = Pipeline([P.FuseNorms(), P.Rotate()], verify=True).run(
        model, dtype=torch.float64, progress=False)
    return model, out


def test_rotate_is_exact_in_float64(rotated):
    model, out = rotated
    rec = out.report.passes[-1]
    assert rec.name == "Rotate" and rec.verified_rel_change <= 1e-9
    x = _ids(model.config.vocab_size)
    with torch.no_grad():
        assert _rel(out(x), model(x)) <= 1e-9


def test_rotation_really_changes_the_weights(rotated):
    """E' = E·Q with Q orthogonal: row norms are kept, the matrix itself is not."""
    model, out = rotated
    E = model.embed.weight.detach()
    E2 = out.gm.get_submodule("embed").weight.detach()
    assert (E2 - E).abs().max() > 1e-3
    torch.testing.assert_close(E2.norm(dim=1), E.norm(dim=1), rtol=1e-12, atol=1e-12)


def test_online_hadamards_are_graph_nodes_and_counted(rotated):
    model, out = rotated
    gm = out.gm
    had = [n for n in gm.graph.nodes if n.meta.get("qpass", {}).get("role") == "hadamard"]
    rec = out.report.passes[-1]
    n_layers = model.config.n_layers
    assert rec.metrics["online_hadamard_down"] == n_layers          # one per down-projection
    assert rec.metrics["online_hadamard_o"] == n_layers             # one per o-projection
    assert rec.metrics["online_hadamards"] == len(had) == 2 * n_layers
    assert rec.metrics["per_head_vo"] == n_layers
    # each Hadamard node feeds exactly one linear, directly
    for h in had:
        users = list(h.users)
        assert len(users) == 1 and role(users[0]) == "linear"


def test_rotate_requires_fused_norms():
    model = qpass.models.load("tiny-llada-random", dtype=torch.float64)
    with pytest.raises(PipelineError, match="NORMS_FUSED"):
        Pipeline([P.Rotate()]).run(model, progress=False)
    g = qpass.capture(model, (_ids(model.config.vocab_size),))
    with pytest.raises(PipelineError, match="FuseNorms"):       # norms with real weights
        Pipeline([P.Rotate()], initial_facts={"norms_fused"}, verify=False).apply(g)


def test_unsupported_sizes_skip_online_or_fail_clearly():
    # MLP hidden 70 = 2·35 has no Hadamard matrix: the online rotation is skipped with a note
    cfg = ModelConfig(d_model=64, n_layers=1, n_heads=4, n_kv_heads=4, mlp_hidden=70,
                      vocab_size=50, mask_token_id=49)
    model = build(cfg, seed=0, dtype=torch.float64)
    out = Pipeline([P.FuseNorms(), P.Rotate()], verify=True).run(model, dtype=torch.float64,
                                                                 progress=False)
    rec = out.report.passes[-1]
    assert rec.metrics["online_hadamard_down"] == 0 and any("70" in n for n in rec.notes)
    assert rec.verified_rel_change <= 1e-9
    # a residual stream of 70 channels cannot be rotated: one clear error
    cfg = cfg.replace(d_model=70, n_heads=5, n_kv_heads=5, mlp_hidden=64)
    with pytest.raises(PipelineError, match="hidden size 70"):
        Pipeline([P.FuseNorms(), P.Rotate()]).run(build(cfg, seed=0), progress=False)


def _planted(model, channels=(3, 17, 40), scale=60.0):
    """Massive residual-stream channels, as in LLaDA/Dream: a few embedding columns blown up."""
    with torch.no_grad():
        model.embed.weight[:, list(channels)] *= scale
    return model


def test_rotation_spreads_planted_outlier_channels(tmp_path):
    model = _planted(qpass.models.load("tiny-llada-random"))
    calib = _ids(model.config.vocab_size, (4, 32), seed=2)
    rows = outlier_table(model, [P.FuseNorms(), P.Rotate()], calib, baseline=[P.FuseNorms()])
    stream_readers = [r for r in rows if r["in_features"] == model.config.d_model
                      and r["ratio_before"] > 10]
    assert stream_readers, "the planted channels must show up as outliers before rotation"
    for r in stream_readers:
        assert r["ratio_after"] < r["ratio_before"] / 4, r
    buf = io.StringIO()
    render_outliers(rows, png=tmp_path / "outliers.png", console=Console(file=buf, width=160))
    assert "max/median" in buf.getvalue() and "blocks.0.q_proj" in buf.getvalue()
    pytest.importorskip("matplotlib")
    assert (tmp_path / "outliers.png").stat().st_size > 1000


def test_rotation_lowers_outlier_ratio_on_tiny_llada():
    model = qpass.models.load("tiny-llada")
    text = "First Citizen: Before we proceed any further, hear me speak. def f(x): return x + 1"
    ids = torch.tensor([model.tokenizer.encode(text)[:64]] * 2)
    rows = outlier_table(model, [P.FuseNorms(), P.Rotate()], ids, baseline=[P.FuseNorms()])
    for b in per_block(rows):
        assert b["ratio_after"] < b["ratio_before"], b

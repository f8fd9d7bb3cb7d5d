"""DuQuant: exactness on all three families, transform nodes, and the pieces it is built from
(greedy block rotation, zig-zag permutation, smoothing) against identities and brute force."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qpass
from qpass import passes as P
from qpass.errors import CalibrationError
from qpass.inspect.outliers import outlier_table
from qpass.passes.duquant import (DuQuant, block_size_for, greedy_block_rotation,
                                  permutation_matrix, zigzag_permutation)
from qpass.pipeline import Pipeline

FAMILIES = ["tiny-llada-random", "tiny-dream-random", "tiny-llama-random"]


def _ids(vocab, shape=(2, 12), seed=1):
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", FAMILIES)
def test_duquant_is_exact_in_float64(name):
    model = qpass.models.load(name, dtype=torch.float64)
    calib = _ids(model.config.vocab_size, (4, 16), seed=3)
    out = Pipeline([P.FuseNorms(), DuQuant(sample_rows=64)], verify=True).run(
        model, calib, dtype=torch.float64, progress=False)
    rec = out.report.passes[-1]
    assert rec.verified_rel_change <= 1e-9
    x = _ids(model.config.vocab_size)
    with torch.no_grad():
        ref, got = model(x), out(x)
    assert float((got - ref).abs().max() / ref.abs().max()) <= 1e-9
    # one transform per distinct linear input: q/k/v, o, gate/up, down in every block
    nodes = [n for n in out.gm.graph.nodes if n.meta.get("qpass", {}).get("role") == "transform"]
    assert len(nodes) == rec.metrics["transforms"] == 4 * model.config.n_layers
    assert rec.metrics["mean_max_median_after"] < rec.metrics["mean_max_median_before"]


def test_duquant_needs_calibration():
    model = qpass.models.load("tiny-llada-random")
    with pytest.raises(CalibrationError):
        Pipeline([P.FuseNorms(), DuQuant()]).run(model, progress=False)


@pytest.mark.parametrize("n,expected", [(768, 128), (256, 128), (112, 112), (224, 112),
                                        (192, 96), (64, 64), (18944, 128), (3584, 128)])
def test_block_size_is_largest_divisor(n, expected):
    assert block_size_for(n, 128) == expected


@settings(max_examples=15, deadline=None)
@given(n_blocks=st.integers(1, 4), block=st.sampled_from([2, 4, 8, 16]),
       outliers=st.lists(st.integers(0, 63), min_size=1, max_size=4), seed=st.integers(0, 99))
def test_greedy_rotation_is_orthogonal_block_diagonal_and_lowers_peaks(n_blocks, block, outliers,
                                                                      seed):
    n = n_blocks * block
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(32, n, generator=g, dtype=torch.float64)
    for ch in outliers:
        X[:, ch % n] *= 50.0
    R, _ = greedy_block_rotation(X, block, max_steps=64)
    torch.testing.assert_close(R @ R.T, torch.eye(n, dtype=torch.float64), rtol=0, atol=1e-12)
    mask = torch.block_diag(*[torch.ones(block, block)] * n_blocks).bool()
    assert R[~mask].abs().max() == 0 if (~mask).any() else True
    for b in range(n_blocks):
        sl = slice(b * block, (b + 1) * block)
        assert (X @ R)[:, sl].abs().max() <= X[:, sl].abs().max() * (1 + 1e-12)


@settings(max_examples=20, deadline=None)
@given(n_blocks=st.integers(1, 6), block=st.integers(1, 8), seed=st.integers(0, 99))
def test_zigzag_is_a_balanced_permutation(n_blocks, block, seed):
    n = n_blocks * block
    peaks = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    perm = zigzag_permutation(peaks, block)
    assert sorted(perm.tolist()) == list(range(n))
    # the n_blocks loudest channels land in distinct blocks
    top = set(torch.argsort(peaks, descending=True)[:n_blocks].tolist())
    where = {ch: pos // block for pos, ch in enumerate(perm.tolist())}
    assert len({where[ch] for ch in top}) == n_blocks
    X = torch.arange(n, dtype=torch.float64)[None]
    assert torch.equal(X @ permutation_matrix(perm), X[:, perm])


def test_activation_and_weight_matrices_cancel():
    """M·Tᵀ = diag(1/s)·O·Oᵀ·diag(s) = I: the folded weights undo the activation transform."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 48, generator=g, dtype=torch.float64)
    X[:, 5] *= 80
    W = torch.randn(20, 48, generator=g, dtype=torch.float64)
    M, T, info = DuQuant(block_size=16).transform_for(X, X.abs().amax(0), [W])
    torch.testing.assert_close(M @ T.T, torch.eye(48, dtype=torch.float64), rtol=0, atol=1e-10)
    torch.testing.assert_close((X @ M) @ (W @ T).T, X @ W.T, rtol=1e-10, atol=1e-10)
    assert info["block"] == 16 and info["ratio_after"] < info["ratio_before"]


def test_duquant_flattens_planted_outlier_channels():
    model = qpass.models.load("tiny-llada-random")
    with torch.no_grad():
        model.embed.weight[:, [3, 17, 40]] *= 60.0
    calib = _ids(model.config.vocab_size, (4, 32), seed=2)
    rows = outlier_table(model, [P.FuseNorms(), DuQuant(sample_rows=128)], calib,
                         baseline=[P.FuseNorms()])
    loud = [r for r in rows if r["ratio_before"] > 10 and r["linear"] != "head"]
    assert loud
    for r in loud:
        assert r["ratio_after"] < r["ratio_before"] / 4, r

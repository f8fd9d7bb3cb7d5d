"""Smoothing-pair discovery from the graph: coverage on the full-size meta graphs against the
model definitions (module names are the independent reference here, never an input to the
discovery), the GQA skip reason, linear → linear rules, and exactness of scale folding."""
import pytest
import torch
import torch.nn as nn

import qpass
from qpass.ir.regions import smoothing_regions
from qpass.passes._smoothing_pairs import fold_scale, smoothing_coverage


def _meta_graph(name):
    model = qpass.models.load(name, device="meta")
    return model, qpass.capture(model, (torch.zeros(1, 16, dtype=torch.long, device="meta"),))


def _expected(n_layers, mha: bool):
    """The pairs every pre-norm SwiGLU block must give, written from the model definition."""
    exp = set()
    for i in range(n_layers):
        b = f"blocks.{i}."
        exp.add(("norm", b + "attn_norm", frozenset(b + x for x in ("q_proj", "k_proj", "v_proj"))))
        exp.add(("norm", b + "mlp_norm", frozenset({b + "gate_proj", b + "up_proj"})))
        exp.add(("linear_rows", b + "up_proj", frozenset({b + "down_proj"})))
        if mha:
            exp.add(("v_rows", b + "v_proj", frozenset({b + "o_proj"})))
    return exp


def _as_set(pairs):
    return {(p.kind, str(p.producer.target), frozenset(str(c.target) for c in p.consumers))
            for p in pairs}


@pytest.mark.parametrize("name,n_layers,mha", [("llada-8b", 32, True), ("dream-7b", 28, False)])
def test_coverage_on_full_size_meta_graphs(name, n_layers, mha):
    model, g = _meta_graph(name)
    cov = smoothing_coverage(g)
    assert _as_set(cov.found) == _expected(n_layers, mha)
    counts = cov.counts()
    assert counts["found norm"] == 2 * n_layers and counts["found linear_rows"] == n_layers
    skipped = {str(p.producer.target): p.reason for p in cov.skipped}
    assert "LM head" in skipped.pop("norm")               # final norm → head: kept, said why
    if mha:
        assert counts["found v_rows"] == n_layers and not skipped
    else:                                                 # Dream: 28 query heads share 4 KV heads
        assert set(skipped) == {f"blocks.{i}.v_proj" for i in range(n_layers)}
        cfg = model.config
        for reason in skipped.values():
            assert "GQA" in reason and str(cfg.n_kv_heads * cfg.head_dim) in reason
        assert all(r["skipped_reason"] for r in cov.rows() if r["kind"] == "v_rows")


class _Chain(nn.Module):
    """x → a → (op) → b → relu → head, plus a side reader c for the 'other reader' case (the
    linear right before the output is the LM head, which is never a smoothing consumer)."""

    def __init__(self, op: str):
        super().__init__()
        self.op = op
        self.a, self.b, self.c = nn.Linear(8, 6), nn.Linear(6, 5), nn.Linear(6, 6)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        return self.head(torch.relu(self.body(x)))

    def body(self, x):
        h = self.a(x)
        if self.op == "view":
            return self.b(h.reshape(x.shape[0], -1, 6))
        if self.op == "transpose":
            return self.b(h.transpose(0, 1).contiguous())
        if self.op == "relu":
            return self.b(torch.relu(h))
        if self.op == "two_readers":
            return self.b(h) + self.c(h).sum(-1, keepdim=True)
        return self.b(h)


@pytest.mark.parametrize("op,found", [("plain", True), ("view", True), ("transpose", False),
                                      ("relu", False), ("two_readers", False)])
def test_linear_to_linear_pairs(op, found):
    torch.manual_seed(0)
    model = _Chain(op).double()
    x = torch.randn(6, 4, 8, dtype=torch.float64)
    g = qpass.capture(model, (x,))
    pairs = [p for p in smoothing_regions(g, include_skipped=False) if str(p.producer.target) == "a"]
    assert bool(pairs) == found
    if found:                                   # folding the pair is exact (float64 identity)
        ref, w_a = model(x), model.a.weight.detach().clone()    # capture shares parameters
        fold_scale(g, pairs[0], torch.linspace(0.1, 10.0, 6, dtype=torch.float64))
        assert torch.allclose(g.gm(x), ref, rtol=1e-12, atol=1e-12)
        assert not torch.allclose(g.gm.get_submodule("a").weight, w_a)


@pytest.mark.parametrize("family", ["tiny-llada-random", "tiny-dream-random", "tiny-llama-random"])
def test_folding_random_scales_into_every_pair_is_exact(family):
    """Arbitrary positive scales (not SmoothQuant's) folded into every found pair, incl.
    Dream's q/k/v biases and norm weights, leave the float64 logits unchanged."""
    model = qpass.models.load(family, dtype=torch.float64)
    ids = torch.randint(0, model.config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(ids)
    g = qpass.capture(qpass.models.load(family, dtype=torch.float64), (ids,))
    n_nodes = len(g.graph.nodes)
    gen = torch.Generator().manual_seed(1)
    for p in smoothing_regions(g, include_skipped=False):
        k = g.module(p.consumers[0]).in_features
        fold_scale(g, p, torch.exp(torch.randn(k, generator=gen, dtype=torch.float64)))
    with torch.no_grad():
        out = g.gm(ids)
    assert float((out - ref).abs().max() / ref.abs().max()) <= 1e-12
    assert len(g.graph.nodes) == n_nodes

"""Mixture-of-experts family: the forward equals a per-token float64 reference, capture is exact,
experts are ordinary linear groups to every pass (FuseNorms/Rotate verified exact, GPTQ's
Hessian from exactly the routed tokens, coverage lists every expert, the router kept), compiled
checkpoints round-trip, and the real sizes are inspectable on meta."""
import json

import pytest
import torch
import torch.nn.functional as F

import qpass
from qpass import passes as P
from qpass.calibration import CalibrationSet
from qpass.errors import CheckpointError
from qpass.models import Denoiser, ModelConfig, init_weights, tiny_moe

X = torch.randint(0, 90, (2, 16), generator=torch.Generator().manual_seed(3))


def _model(**kw):
    return init_weights(Denoiser(tiny_moe().replace(**kw)), seed=1).eval()


def _calib(cfg, n=4):
    return CalibrationSet.from_ids(torch.arange(1024) % 90, mask_id=cfg.mask_token_id, n=n,
                                   seq_len=32)


def _chosen(p: list[float], bias: list[float], k: int, n_group: int, topk_group: int) -> list[int]:
    """Experts a token goes to: groups ranked by their two best biased scores, the best
    topk_group groups eligible, then the k best biased scores among them."""
    size = len(p) // n_group
    c = [p[e] + bias[e] for e in range(len(p))]
    group_score = [sum(sorted(c[g * size:(g + 1) * size])[-2:]) for g in range(n_group)]
    groups = sorted(range(n_group), key=lambda g: -group_score[g])[:topk_group]
    eligible = [e for e in range(len(p)) if e // size in groups]
    return sorted(eligible, key=lambda e: -c[e])[:k]


def reference_moe(moe, h: torch.Tensor) -> torch.Tensor:
    """Token by token in float64: softmax (or sigmoid) scores of the router, the chosen top-k,
    renormalised and scaled, Σ weight · SwiGLU expert, plus the shared expert."""
    W = lambda lin: lin.weight.double()                      # noqa: E731
    mlp = lambda e, x: W(e.down_proj) @ (F.silu(W(e.gate_proj) @ x) * (W(e.up_proj) @ x))  # noqa: E731
    E = len(moe.experts)
    bias = moe.router.expert_bias.tolist() if hasattr(moe.router, "expert_bias") else [0.0] * E
    out = torch.zeros(h.shape, dtype=torch.float64)
    for b in range(h.shape[0]):
        for t in range(h.shape[1]):
            x = h[b, t].double()
            logit = W(moe.router) @ x
            p = (torch.sigmoid(logit) if moe.sigmoid else torch.softmax(logit, dim=0)).tolist()
            top = _chosen(p, bias, moe.top_k, *moe.groups)
            z = sum(p[e] for e in top) if moe.normalize and (moe.top_k > 1 or not moe.sigmoid) \
                else 1.0
            y = sum(p[e] / z * moe.scale * mlp(moe.experts[e], x) for e in top)
            if moe.shared is not None:
                y = y + mlp(moe.shared, x)
            out[b, t] = y
    return out


LLADA2_ROUTING = dict(n_experts=8, router_sigmoid=True, router_bias=True, router_fp32=True,
                      n_expert_groups=4, topk_groups=2, routed_scaling_factor=2.5)


@pytest.mark.parametrize("kw", [dict(norm_topk_prob=True), dict(norm_topk_prob=False,
                                                                 n_shared_experts=0),
                                LLADA2_ROUTING], ids=["softmax", "softmax-raw", "llada2"])
def test_moe_forward_equals_the_per_token_reference(kw):
    m = _model(**kw)
    moe = m.blocks[1].moe
    if hasattr(moe.router, "expert_bias"):
        with torch.no_grad():
            moe.router.expert_bias.copy_(torch.linspace(-0.02, 0.03, 8))
    h = torch.randn(2, 7, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = moe(h).double()
        want = reference_moe(moe, h)
    assert float((got - want).abs().max() / want.abs().max()) < 1e-5


def test_capture_equals_eager_exactly():
    m = _model()
    g = qpass.capture(m)
    assert torch.equal(g(X), m(X))
    experts = [n for n in g.linears() if ".experts." in str(n.target)]
    assert len(experts) == 4 * 3                     # every expert's gate, up, down
    assert [str(n.target) for n in g.nodes("router")] == ["blocks.1.moe.router"]


def test_rotate_through_experts_is_verified_exact_and_coverage_lists_every_expert():
    m = _model()
    c = qpass.Pipeline([P.FuseNorms(), P.Rotate(), P.GPTQ("w4a8")]).run(m, _calib(m.config),
                                                                         progress=False)
    rel = {p.name: p.verified_rel_change for p in c.report.passes}
    assert rel["FuseNorms"] is not None and rel["FuseNorms"] < 1e-4
    assert rel["Rotate"] is not None and rel["Rotate"] < 1e-4
    rows = {r.name: r for r in c.report.coverage}
    for e in range(4):
        for proj in ("gate_proj", "up_proj", "down_proj"):
            assert rows[f"blocks.1.moe.experts.{e}.{proj}"].status == "quantized"
    assert rows["blocks.1.moe.shared.down_proj"].status == "quantized"
    assert rows["blocks.1.moe.router"].status == "kept" and "router" in rows["blocks.1.moe.router"].reason


def test_gptq_takes_each_experts_hessian_from_its_routed_tokens():
    m = _model()
    calib = _calib(m.config)
    routed = torch.zeros(4, dtype=torch.long)           # what the float model routes, per expert

    def count(mod, inp, out):
        top = torch.topk(out.float().softmax(-1), 2, dim=-1).indices.reshape(-1)
        routed.add_(torch.bincount(top, minlength=4))

    hook = m.blocks[1].moe.router.register_forward_hook(count)
    with torch.no_grad():
        for (ids,) in calib.batches(8):
            m(ids)
    hook.remove()
    # sequential=False: every Hessian from the float model, so routing is the float model's
    c = qpass.Pipeline([P.GPTQ("w4a16g128", sequential=False)]).run(m, calib, progress=False)
    layers = next(p for p in c.report.passes if p.name == "GPTQ").metrics["layers"]
    for e in range(4):
        assert layers[f"blocks.1.moe.experts.{e}.up_proj"]["tokens"] == int(routed[e])
        assert layers[f"blocks.1.moe.experts.{e}.down_proj"]["tokens"] == int(routed[e])
    assert layers["blocks.1.moe.shared.up_proj"]["tokens"] == int(routed.sum()) // 2


def test_an_expert_no_token_reaches_is_rounded_to_nearest_with_a_note():
    m = _model(n_experts_per_tok=1)
    with torch.no_grad():   # expert 3's logit is 0 while max(a·x, -a·x) >= 0: it never wins
        r = m.blocks[1].moe.router.weight
        r[1], r[3] = -r[0], 0.0
    c = qpass.Pipeline([P.GPTQ("w4a16g128")]).run(m, _calib(m.config), progress=False)
    rec = next(p for p in c.report.passes if p.name == "GPTQ")
    assert "blocks.1.moe.experts.3.up_proj" in rec.metrics["rtn_fallback"]
    assert any("experts.3.up_proj: no calibration token" in n for n in rec.notes)
    assert torch.isfinite(c(X)).all()


@pytest.mark.parametrize("pipeline,kw", [("w8a8-smoothquant", {}), ("w4a16-awq", {}),
                                         ("w4a4-quarot", {}), ("w4a4-quarot", LLADA2_ROUTING)],
                         ids=["smoothquant", "awq", "quarot", "quarot-llada2-routing"])
def test_presets_run_on_moe_and_save_load_round_trip(tmp_path, pipeline, kw):
    m = _model(**kw)
    c = qpass.presets.get(pipeline).run(m, _calib(m.config), progress=False)
    c.save(tmp_path / "ck")
    d = qpass.load_compiled(tmp_path / "ck")
    with torch.no_grad():
        assert torch.equal(c(X), d(X))
    assert (c(X) - m(X)).abs().max() < 0.5 * m(X).abs().max()


def test_real_moe_sizes_are_inspectable_on_meta():
    for name, experts, total in (("llada-moe-7b", 64, 7.3e9), ("llada2-mini", 256, 16.2e9)):
        m = qpass.models.load(name, device="meta")
        assert sum(p.numel() for p in m.parameters()) > total
        g = qpass.capture(m, shapes=False)
        n_moe = sum(m.config.is_moe_layer(i) for i in range(m.config.n_layers))
        assert len([n for n in g.linears() if ".experts." in str(n.target)]) == n_moe * experts * 3
        assert len(g.nodes("router")) == n_moe


def test_bad_moe_config_is_one_clear_error():
    with pytest.raises(CheckpointError, match="n_experts_per_tok"):
        ModelConfig(d_model=64, n_layers=1, n_heads=4, n_kv_heads=4, mlp_hidden=64,
                    vocab_size=10, n_experts=4, n_experts_per_tok=5, moe_hidden=8)
    with pytest.raises(CheckpointError, match="non-negative"):
        ModelConfig(d_model=64, n_layers=1, n_heads=4, n_kv_heads=4, mlp_hidden=64,
                    vocab_size=10, n_experts=-1)
    json.dumps(tiny_moe().to_dict())                    # configs stay serialisable


def test_llada2_router_keeps_fp32_and_expert_bias_through_save_and_load(tmp_path):
    # the router's fp32 routing and its expert bias are constructor arguments: a checkpoint
    # that dropped them chose other experts after load (bf16 logits, no bias)
    m = _model(**LLADA2_ROUTING).to(torch.bfloat16)
    with torch.no_grad():
        m.blocks[1].moe.router.expert_bias.copy_(torch.linspace(-0.5, 0.5, 8))
    c = qpass.Pipeline([P.RTN("w4a16")]).run(m, progress=False)
    c.save(tmp_path / "ck")
    back = qpass.load_compiled(tmp_path / "ck")
    router = back.gm.get_submodule("blocks.1.moe.router")
    assert router.fp32 and torch.equal(router.expert_bias, c.gm.get_submodule("blocks.1.moe.router").expert_bias)
    assert torch.equal(back(X), c(X))

"""Families captured as they are (issue 27): transformers' own DiffusionGemma, traced,
quantized per linear and per expert, saved, reloaded and generating with its own sampler."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "fixtures"))
import diffusion_gemma as dg  # noqa: E402

import qpass  # noqa: E402
from qpass.errors import CaptureError, CheckpointError, PipelineError  # noqa: E402
from qpass.presets import PRESETS  # noqa: E402

TEXT = open(os.path.join(os.path.dirname(qpass.__file__), "ops.py")).read() * 2


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return dg.build(tmp_path_factory.mktemp("dg") / "tiny")


def _logits(model, seed=0):
    ids, canvas = dg.prompt_and_canvas(seed, batch=2)
    with torch.no_grad():
        return model(input_ids=ids, decoder_input_ids=canvas).logits


def test_load_is_transformers_own_model(tiny_dir):
    from transformers import DiffusionGemmaForBlockDiffusion
    ours = qpass.models.load(tiny_dir)
    ref = DiffusionGemmaForBlockDiffusion.from_pretrained(str(tiny_dir)).eval()
    a, b = _logits(ours), _logits(ref)
    assert type(ours) is DiffusionGemmaForBlockDiffusion
    assert float((a - b).norm() / b.norm()) <= 1e-4
    assert ours.tokenizer.decode(ours.tokenizer.encode("def f(x):")) == "def f(x):"


def test_layers_trace_exactly(tiny_dir):
    """Each layer's own forward, traced with values, recomputes the layer (other lengths too)."""
    from qpass.ir.model_structure import discover
    model = qpass.models.load(tiny_dir)
    ids, canvas = dg.prompt_and_canvas(1)
    s = discover(model, {"input_ids": ids, "decoder_input_ids": canvas})
    assert {k.split(":")[0] for k in s.traces} == {"DiffusionGemmaEncoderTextLayer",
                                                   "DiffusionGemmaDecoderTextLayer"}
    assert len(s.traces) == 4           # sliding layers (with v_proj) and full ones (K = V)
    for gm in s.traces.values():
        roles = [n.target.__name__ for n in gm.graph.nodes if n.op == "call_function"
                 and getattr(n.target, "__name__", "") == "hf_attention"]
        assert roles == ["hf_attention"]
        assert any(n.op == "call_module" and n.target == "experts" for n in gm.graph.nodes)
    layer = model.model.encoder.language_model.layers[0]
    gm = next(g for g in s.traces.values()
              if g.meta["layer"] == "model.encoder.language_model.layers.0")
    for L in (6, 11):                 # shape Python was answered, the shapes stay dynamic
        x = torch.randn(1, L, 32)
        pos = torch.arange(L)[None]
        pe = model.model.encoder.language_model.rotary_emb(x, pos, "sliding_attention")
        with torch.no_grad():
            want = layer(x, position_embeddings=pe, attention_mask=None, position_ids=pos)
            got = gm(hidden_states=x, position_embeddings=pe, position_ids=pos)
        assert torch.allclose(got, want, atol=1e-6)


def test_data_dependent_branch_is_one_capture_error():
    from qpass.ir.value_trace import trace_module

    class Branchy(torch.nn.Module):
        def forward(self, x):
            if (x > 0).any():
                return x * 2
            return x
    with pytest.raises(CaptureError, match="data-dependent.*Branchy|Branchy.*data-dependent"):
        trace_module(Branchy(), (torch.randn(3),))


def test_structure_covers_every_linear_and_expert(tiny_dir):
    from qpass.ir.model_structure import discover
    model = qpass.models.load(tiny_dir)
    ids, canvas = dg.prompt_and_canvas(2)
    s = discover(model, {"input_ids": ids, "decoder_input_ids": canvas}, trace=True)
    assert len(s.stages) == 3 and all(len(st.layers) == 2 for st in s.stages)   # enc i + dec i
    paths = {a for it in s.items for a in it.aliases}
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert linears <= paths
    experts = [it for it in s.items if it.kind == "experts"]
    assert len(experts) == 3 and all(len(it.aliases) == 2 for it in experts)
    routers = [it.path for it in s.items if it.role == "router"]
    assert len(routers) == 3 and all(p.endswith("router.proj") for p in routers)
    assert [it.path for it in s.items if it.role == "head"] == ["lm_head"]
    vision = [it for it in s.items if "vision" in it.path and it.kind == "linear"]
    assert vision and all(it.stage is None and "never called" in it.reason for it in vision)


def test_expert_inputs_are_the_routed_tokens(tiny_dir):
    """The tokens each expert's matrices see are exactly the (token, k) routings of the
    router (brute force from the router's own top-k)."""
    from qpass.pipeline.expert_inputs import ExpertInputs
    model = qpass.models.load(tiny_dir)
    layer = model.model.encoder.language_model.layers[1]
    seen = {}
    hooks = ExpertInputs(layer.experts, lambda name, e, x: seen.setdefault((name, e), []).append(
        x.shape[0])).hooks()
    picks = []
    h2 = layer.router.register_forward_hook(lambda m, a, out: picks.append(out[2]))
    ids, canvas = dg.prompt_and_canvas(3)
    with torch.no_grad():
        model(input_ids=ids, decoder_input_ids=canvas)
    for h in hooks + [h2]:
        h.remove()
    want = torch.zeros(4, dtype=torch.long)
    for idx in picks:
        want += torch.bincount(idx.reshape(-1), minlength=4)
    for name in ("gate_up_proj", "down_proj"):
        got = torch.tensor([sum(seen.get((name, e), [])) for e in range(4)])
        assert torch.equal(got, want)


@pytest.fixture(scope="module")
def quantized(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "w4-gptq"
    gptq = PRESETS["w4a16-gptq"]().run(tiny_dir, calib=TEXT, out=out, progress=False)
    rtn = PRESETS["w4a16-rtn"]().run(tiny_dir, calib=TEXT, progress=False)
    return gptq, rtn, out


def test_gptq_covers_everything_and_beats_rtn(quantized, tiny_dir):
    gptq, rtn, _ = quantized
    rows, kept = gptq.report["items"], gptq.report["kept"]
    fp = qpass.models.load(tiny_dir)
    linears = {n for n, m in fp.named_modules() if isinstance(m, torch.nn.Linear)}
    covered = {r["path"] for r in rows} | {r["path"] for r in kept}
    aliases = {a for it in gptq.structure for a in it["aliases"] if it["path"] in covered}
    assert linears <= aliases
    assert sum(r["kind"] == "experts" for r in rows) == 3
    assert all(r["experts_without_tokens"] == 0 for r in rows if r["kind"] == "experts")
    assert {r["role"] for r in kept} >= {"router", "head"}
    want = _logits(fp)
    e_gptq = float((_logits(gptq) - want).norm() / want.norm())
    e_rtn = float((_logits(rtn) - want).norm() / want.norm())
    assert 0 < e_gptq < e_rtn


def test_saved_model_reloads_and_generates(quantized):
    gptq, _, out = quantized
    back = qpass.load_compiled(out)
    assert torch.allclose(_logits(back), _logits(gptq), atol=1e-5)
    tok = back.tokenizer
    ids = torch.tensor([tok.encode("def f(x):")])
    torch.manual_seed(0)
    res = back.generate(input_ids=ids, max_new_tokens=8, max_denoising_steps=3)
    seq = res.sequences if hasattr(res, "sequences") else res
    assert seq.shape[1] == ids.shape[1] + 8 and torch.equal(seq[0, :ids.shape[1]], ids[0])


def test_tampered_checkpoint_is_refused(quantized, tmp_path):
    import shutil
    _, _, out = quantized
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    with open(bad / "qpass_quantized.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(CheckpointError, match="does not match its hash"):
        qpass.load_compiled(bad)


def test_graph_rewriting_pipeline_is_one_error(tiny_dir):
    with pytest.raises(PipelineError, match="FuseNorms"):
        PRESETS["w4a4-rtn"]().run(tiny_dir, calib=TEXT, progress=False)


def test_presets_that_make_sense_run_and_order_by_bits(tiny_dir):
    """Weight-only and W8A8 (dynamic per-token activations in QuantLinear) presets run on the
    model's own code; more bits, less error."""
    fp = _logits(qpass.models.load(tiny_dir))
    err = {}
    for name in ("w8a8-rtn", "q4_0-rtn", "w3a16-rtn"):
        q = PRESETS[name]().run(tiny_dir, progress=False)
        got = _logits(q)
        assert torch.isfinite(got).all()
        err[name] = float((got - fp).norm() / fp.norm())
    assert 0 < err["w8a8-rtn"] < err["q4_0-rtn"] < err["w3a16-rtn"]

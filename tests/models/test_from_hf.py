"""qpass.models.from_hf: in-memory transformers models onto the traceable family (issue 17).

Acceptance: LlamaForCausalLM and Qwen2ForCausalLM built here go through from_hf -> w4a16-gptq,
and from_hf's FP logits equal transformers' own forward (≤ 1e-5 relative, fp32)."""
import pytest
import torch

import qpass
from qpass.calibration import CalibrationSet

transformers = pytest.importorskip("transformers")


def _randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.dim() == 2:
                p.copy_(0.3 * torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def _llama(tie=False):
    cfg = transformers.LlamaConfig(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
        intermediate_size=96, vocab_size=83, num_hidden_layers=2, max_position_embeddings=64,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8},
        attention_bias=True, tie_word_embeddings=tie)
    return _randomize(transformers.LlamaForCausalLM(cfg))


def _qwen2(tie=True):
    cfg = transformers.Qwen2Config(
        hidden_size=64, num_attention_heads=4, num_key_value_heads=2, intermediate_size=96,
        vocab_size=83, num_hidden_layers=2, max_position_embeddings=64,
        rope_parameters={"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0,
                         "original_max_position_embeddings": 16}, tie_word_embeddings=tie)
    return _randomize(transformers.Qwen2ForCausalLM(cfg), 1)


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


IDS = torch.randint(0, 83, (2, 20), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("make", [_llama, _qwen2, lambda: _llama(tie=True)],
                         ids=["llama-untied", "qwen2-tied", "llama-tied"])
def test_from_hf_logits_equal_transformers(make):
    hf = make()
    with torch.no_grad():
        ref = hf(input_ids=IDS).logits
    model = qpass.models.from_hf(hf)
    assert isinstance(model, qpass.models.Denoiser) and model.config.causal
    with torch.no_grad():
        assert _rel(model(IDS), ref) <= 1e-5
    # Weights are shared with the transformers module, not copied.
    assert model.embed.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    assert model.blocks[1].down_proj.weight.data_ptr() == \
        hf.model.layers[1].mlp.down_proj.weight.data_ptr()
    assert (model.head.weight.data_ptr() == model.embed.weight.data_ptr()) == hf.config.tie_word_embeddings


@pytest.mark.parametrize("make", [_llama, _qwen2], ids=["llama", "qwen2"])
def test_from_hf_runs_w4a16_gptq(make):
    hf = make()
    with torch.no_grad():
        ref = hf(input_ids=IDS).logits
    before = {k: v.clone() for k, v in hf.state_dict().items()}
    calib = CalibrationSet.from_ids(torch.randint(0, 83, (2048,), generator=torch.Generator()
                                                  .manual_seed(0)), n=8, seq_len=32,
                                    masking="none")
    out = qpass.presets.get("w4a16-gptq").run(qpass.models.from_hf(hf), calib, progress=False)
    rows = out.report.coverage
    assert rows and all(r.status != "uncovered" for r in rows)
    with torch.no_grad():
        q = out(IDS)
    err = _rel(q, ref)
    assert 0 < err < 0.25, err          # quantized: close to FP, not equal
    # The transformers module was not modified by the run.
    assert all(torch.equal(before[k], v) for k, v in hf.state_dict().items())
    # capture and Pipeline.run also take the transformers module itself.
    g = qpass.capture(hf, IDS)
    with torch.no_grad():
        assert _rel(g(IDS), ref) <= 1e-5


def test_unsupported_architecture_is_one_error():
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2,
                                                                  vocab_size=50, n_positions=32))
    with pytest.raises(qpass.QpassError, match="GPT2LMHeadModel.*model_type 'gpt2'"):
        qpass.models.from_hf(gpt2)
    base = transformers.LlamaModel(_llama().config)
    with pytest.raises(qpass.QpassError, match="LlamaModel.*missing.*lm_head.weight"):
        qpass.models.from_hf(base)
    with pytest.raises(qpass.QpassError, match="from_hf takes an in-memory transformers model"):
        qpass.models.from_hf(torch.nn.Linear(2, 2))


# LLaDA and Dream ship as remote code (trust_remote_code), which cannot be downloaded here.
# These stand-ins have exactly their module trees and config fields, so from_hf must recognise
# them by config.model_type and map them by the published naming; the logits are checked
# against the independent float64 reference forward of tests/models/reference_forward.py.
def _remote_code_model(family):
    import torch.nn as nn

    from reference_forward import forward as ref_forward
    d, h, layers, mlp, v = 32, 4, 2, 48, 41
    if family == "llada":
        fields = dict(model_type="llada", architectures=["LLaDAModelLM"], d_model=d, n_heads=h,
                      n_kv_heads=h, n_layers=layers, mlp_hidden_size=mlp, vocab_size=v,
                      embedding_size=v, rope_theta=500000.0, rms_norm_eps=1e-5,
                      mask_token_id=v - 1, weight_tying=False, include_bias=False,
                      block_type="llama", activation_type="silu", layer_norm_type="rms")
        parts = {"attn_norm": (d,), "q_proj": (d, d), "k_proj": (d, d), "v_proj": (d, d),
                 "attn_out": (d, d), "ff_norm": (d,), "ff_proj": (mlp, d), "up_proj": (mlp, d),
                 "ff_out": (d, mlp)}
        names = {"embed": "model.transformer.wte.weight", "norm": "model.transformer.ln_f.weight",
                 "head": "model.transformer.ff_out.weight",
                 "block": lambda i, p: f"model.transformer.blocks.{i}." + {
                     "attn_norm": "attn_norm", "q": "q_proj", "k": "k_proj", "v": "v_proj",
                     "o": "attn_out", "mlp_norm": "ff_norm", "gate": "ff_proj", "up": "up_proj",
                     "down": "ff_out"}[p]}
        dims = dict(theta=500000.0, eps=1e-5, causal=False, shift=False, Hk=h)
    else:
        fields = dict(model_type="Dream", architectures=["DreamModel"], hidden_size=d,
                      num_attention_heads=h, num_key_value_heads=2, num_hidden_layers=layers,
                      intermediate_size=mlp, vocab_size=v, rope_theta=1e6, rms_norm_eps=1e-6,
                      mask_token_id=v - 1, hidden_act="silu", max_position_embeddings=64)
        parts = {"input_layernorm": (d,), "self_attn.q_proj": (d, d),
                 "self_attn.k_proj": (d // 2, d), "self_attn.v_proj": (d // 2, d),
                 "self_attn.o_proj": (d, d), "post_attention_layernorm": (d,),
                 "mlp.gate_proj": (mlp, d), "mlp.up_proj": (mlp, d), "mlp.down_proj": (d, mlp)}
        names = {"embed": "model.embed_tokens.weight", "norm": "model.norm.weight",
                 "head": "lm_head.weight",
                 "block": lambda i, p: f"model.layers.{i}." + {
                     "attn_norm": "input_layernorm", "q": "self_attn.q_proj",
                     "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
                     "mlp_norm": "post_attention_layernorm", "gate": "mlp.gate_proj",
                     "up": "mlp.up_proj", "down": "mlp.down_proj"}[p]}
        dims = dict(theta=1e6, eps=1e-6, causal=False, shift=True, Hk=2)
    dims.update(d=d, H=h, layers=layers)

    class RemoteConfig(transformers.PretrainedConfig):
        model_type = fields["model_type"]

    class RemoteModel(transformers.PreTrainedModel):
        config_class = RemoteConfig

        def __init__(self, config):
            super().__init__(config)
            self.params = {}
            g = torch.Generator().manual_seed(7)
            tree = nn.Module()
            for key, shape in self._keys(parts, layers, family, d, v).items():
                t = (1 + 0.2 * torch.randn(shape, generator=g)) if len(shape) == 1 else \
                    0.3 * torch.randn(shape, generator=g) / shape[-1] ** 0.5
                bias = key.endswith(".bias")
                mod_path, leaf = key.rsplit(".", 1)
                node = tree
                for part in mod_path.split("."):
                    if not hasattr(node, part):
                        node.add_module(part, nn.Module())
                    node = getattr(node, part)
                node.register_parameter(leaf, nn.Parameter(0.1 * t if bias else t))
            for name, child in tree.named_children():
                self.add_module(name, child)

        @staticmethod
        def _keys(parts, layers, family, d, v):
            ks = {names["embed"]: (v, d), names["norm"]: (d,), names["head"]: (v, d)}
            pre = "model.transformer.blocks" if family == "llada" else "model.layers"
            for i in range(layers):
                for p, shape in parts.items():
                    ks[f"{pre}.{i}.{p}.weight"] = shape
                    if family == "dream" and p.split(".")[-1] in ("q_proj", "k_proj", "v_proj"):
                        ks[f"{pre}.{i}.{p}.bias"] = (shape[0],)
            return ks

    model = RemoteModel(RemoteConfig(**fields))
    ids = torch.randint(0, v, (2, 9), generator=torch.Generator().manual_seed(2))
    ref = ref_forward(dict(model.state_dict()), names, dims, ids)
    return model, ids, ref


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_remote_code_layouts_recognised_by_config(family):
    hf, ids, ref = _remote_code_model(family)
    model = qpass.models.from_hf(hf)
    assert model.config.family == family and not model.config.causal
    assert model.config.logit_shift == (family == "dream")
    with torch.no_grad():
        assert _rel(model.double()(ids), ref) <= 1e-9

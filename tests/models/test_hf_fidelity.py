"""qpass's loader against transformers' own forward: LlamaForCausalLM / Qwen2ForCausalLM with
random weights, saved by transformers' save_pretrained (config.json as transformers 5 writes
it, rope_parameters and rope scaling types), loaded by qpass, logits compared in fp32.

Both layouts are causal language models; qpass reads their configs with its causal flag set
(ModelConfig.causal), so the comparison is against transformers' ordinary causal forward."""
import json

import pytest
import torch

import qpass

transformers = pytest.importorskip("transformers")

L = 24   # positions 0..23: beyond yarn's original 16, so every scaling type changes the tables


def _randomize(model, seed):
    """Weights well away from init (unit-ish norms, biases nonzero) so every field matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.3 * torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5
                        if p.dim() == 2 else 0.2 * torch.randn(p.shape, generator=g))
    return model


def _hf_model(kind, rope, tie=False, bias=False, head_dim=16, seed=0):
    common = dict(hidden_size=48, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=head_dim, intermediate_size=64, vocab_size=71, num_hidden_layers=2,
                  max_position_embeddings=64, rope_parameters=rope, tie_word_embeddings=tie,
                  rms_norm_eps=1e-5)
    if kind == "llama":
        cfg = transformers.LlamaConfig(attention_bias=bias, mlp_bias=bias, **common)
        model = transformers.LlamaForCausalLM(cfg)
    else:
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    return _randomize(model, seed).eval()


def _hf_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


YARN = {"rope_type": "yarn", "rope_theta": 100000.0, "factor": 4.0,
        "original_max_position_embeddings": 16}
CASES = [
    ("llama", {"rope_type": "default", "rope_theta": 100000.0}, False, True),
    ("llama", {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
               "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8}, True, False),
    ("llama", YARN, False, False),
    ("llama", {"rope_type": "linear", "rope_theta": 10000.0, "factor": 3.0}, True, True),
    ("llama", {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}, False, False),
    ("qwen2", YARN | {"beta_fast": 16.0, "mscale": 1.5, "mscale_all_dim": 0.5}, False, False),
    ("qwen2", {"rope_type": "default", "rope_theta": 1e6}, True, False),
]


@pytest.mark.parametrize("kind,rope,tie,bias", CASES,
                         ids=[f"{k}-{r['rope_type']}-{'tied' if t else 'untied'}"
                              f"{'-bias' if b else ''}" for k, r, t, b in CASES])
def test_loader_matches_transformers_forward(tmp_path, kind, rope, tie, bias):
    hf = _hf_model(kind, dict(rope), tie, bias)
    hf.save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["rope_parameters"]["rope_type"] == rope["rope_type"]   # transformers 5 form
    assert written["head_dim"] == 16 != 48 // 4
    ids = torch.randint(0, 71, (2, L), generator=torch.Generator().manual_seed(3))
    ref = _hf_logits(hf, ids)
    ours = qpass.models.load(tmp_path)
    assert ours.config.causal and ours.config.head_dim == 16
    assert ours.config.tie_embeddings == tie
    with torch.no_grad():
        out = ours(ids)
    assert _rel(out, ref) <= 1e-5, _rel(out, ref)
    if rope["rope_type"] not in ("default", "dynamic"):
        # The scaling is really exercised: plain RoPE of the same theta is far off.
        plain = qpass.models.load(tmp_path)
        plain.config.rope_scaling = None
        plain._build_rope()
        with torch.no_grad():
            assert _rel(plain(ids), ref) > 1e-3


def test_legacy_rope_theta_and_rope_scaling(tmp_path):
    """transformers-4 configs: rope_theta at the top level and a rope_scaling dict with "type"."""
    hf = _hf_model("llama", {"rope_type": "linear", "rope_theta": 50000.0, "factor": 2.0})
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    del cfg["rope_parameters"]
    cfg["rope_theta"], cfg["rope_scaling"] = 50000.0, {"type": "linear", "factor": 2.0}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    reread = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert reread.config.rope_parameters["rope_theta"] == 50000.0
    ids = torch.randint(0, 71, (1, L), generator=torch.Generator().manual_seed(4))
    ours = qpass.models.load(tmp_path)
    assert ours.config.rope_theta == 50000.0 and ours.config.rope_scaling["factor"] == 2.0
    with torch.no_grad():
        assert _rel(ours(ids), _hf_logits(reread, ids)) <= 1e-5


def test_rope_theta_only_under_rope_parameters_is_read(tmp_path):
    """The issue's bug: theta written only under rope_parameters (no top-level rope_theta)."""
    hf = _hf_model("llama", {"rope_type": "default", "rope_theta": 100000.0})
    hf.save_pretrained(tmp_path)
    assert "rope_theta" not in json.loads((tmp_path / "config.json").read_text())
    assert qpass.models.load(tmp_path, device="meta").config.rope_theta == 100000.0


def _edited(tmp_path, **changes):
    hf = _hf_model("qwen2" if changes.pop("qwen", False) else "llama",
                   {"rope_type": "default", "rope_theta": 10000.0})
    hf.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    for k, v in changes.items():
        if k == "rope_type":
            cfg["rope_parameters"] = {"rope_type": v, "rope_theta": 10000.0, "factor": 2.0,
                                      "short_factor": [1.0] * 8, "long_factor": [1.0] * 8}
        else:
            cfg[k] = v
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return tmp_path


@pytest.mark.parametrize("changes,field", [
    ({"rope_type": "longrope"}, "longrope"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"qwen": True, "use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1,
      "layer_types": None}, "sliding_window"),     # derived from max_window_layers
    ({"qwen": True, "sliding_window": 8, "layer_types": ["full_attention", "sliding_attention"]},
     "sliding_window"),
    ({"rope_parameters": dict(YARN, partial_rotary_factor=0.5)}, "partial_rotary_factor"),
    ({"model_type": "gpt2"}, "model_type 'gpt2'"),
    ({"rms_norm_eps": None, "layer_norm_epsilon": 1e-5}, "layer_norm_epsilon"),
])
def test_unsupported_fields_are_named(tmp_path, changes, field):
    d = _edited(tmp_path, **changes)
    if changes.get("rms_norm_eps", 0) is None:
        cfg = json.loads((d / "config.json").read_text())
        del cfg["rms_norm_eps"]
        (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(qpass.CheckpointError, match=field):
        qpass.models.load(d)


def test_sliding_window_wider_than_the_model_is_no_window(tmp_path):
    """Qwen2's window only binds below max_position_embeddings; a wider one changes nothing."""
    d = _edited(tmp_path, qwen=True, use_sliding_window=True, sliding_window=64,
                max_window_layers=0, layer_types=None)
    assert qpass.models.load(d, device="meta").config.max_seq_len == 64


@pytest.mark.parametrize("field,value", [("alibi", True), ("attention_layer_norm", True),
                                         ("block_type", "sequential"), ("include_bias", True),
                                         ("layer_norm_type", "default"), ("scale_logits", True),
                                         ("rope_scaling", {"type": "linear", "factor": 2.0})])
def test_llada_fields_that_change_the_model_are_refused(tmp_path, field, value):
    model = qpass.models.build(qpass.models.tiny_llada())
    qpass.models.save_checkpoint(model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg[field] = value
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(qpass.CheckpointError, match=field):
        qpass.models.load(tmp_path)

"""The remote-code fixtures (tests/fixtures/remote_code): tiny random LLaDA2 (llada2_moe),
LLaDA-MoE (llada) and SDAR (sdar) checkpoints in their real Hugging Face naming load through
transformers' Auto classes with trust_remote_code=True, run, and reload identically."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))
from remote_fixtures import build as fixtures, isolation  # noqa: E402

# family -> (model_type, architecture, the real checkpoint's distinctive state-dict keys)
EXPECTED = {
    "llada2": ("llada2_moe", "LLaDA2MoeModelLM", [
        "model.word_embeddings.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.attention.query_key_value.weight",
        "model.layers.0.attention.query_layernorm.weight",
        "model.layers.0.attention.key_layernorm.weight",
        "model.layers.0.attention.dense.weight",
        "model.layers.0.post_attention_layernorm.weight",
        "model.layers.0.mlp.gate_proj.weight",             # first_k_dense_replace = 1
        "model.layers.1.mlp.gate.weight",
        "model.layers.1.mlp.gate.expert_bias",
        "model.layers.1.mlp.experts.0.gate_proj.weight",
        "model.layers.2.mlp.experts.3.down_proj.weight",
        "model.layers.2.mlp.shared_experts.up_proj.weight",
        "model.norm.weight",
        "lm_head.weight"]),
    "llada_moe": ("llada", "LLaDAMoEModelLM", [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",
        "model.layers.0.self_attn.v_proj.weight",
        "model.layers.0.self_attn.o_proj.weight",
        "model.layers.0.self_attn.q_norm.weight",
        "model.layers.0.self_attn.k_norm.weight",
        "model.layers.0.mlp.gate.weight",
        "model.layers.1.mlp.experts.3.up_proj.weight",
        "model.layers.1.post_attention_layernorm.weight",
        "model.norm.weight",
        "lm_head.weight"]),
    "sdar": ("sdar", "SDARForCausalLM", [
        "model.embed_tokens.weight",
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.0.self_attn.q_norm.weight",
        "model.layers.0.self_attn.k_norm.weight",
        "model.layers.1.self_attn.o_proj.weight",
        "model.layers.1.mlp.gate_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
        "model.norm.weight",
        "lm_head.weight"]),
}
FAMILIES = sorted(EXPECTED)


@pytest.fixture(autouse=True)
def private_modules_cache(tmp_path):
    """Each test imports remote code from its own modules cache (isolation.py)."""
    with isolation.private_modules_cache(tmp_path / "hf_modules"):
        yield


def load(directory, auto="AutoModelForCausalLM"):
    import transformers
    return getattr(transformers, auto).from_pretrained(
        str(directory), trust_remote_code=True, local_files_only=True).eval()


def saved_tensors(directory):
    from safetensors.torch import load_file
    return load_file(str(Path(directory) / "model.safetensors"))


def ids(seed=0, batch=2, length=12):
    return torch.randint(4, fixtures.VOCAB, (batch, length),
                         generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("family", FAMILIES)
def test_fixture_loads_as_remote_code_with_the_real_naming(family, tmp_path):
    model_type, architecture, keys = EXPECTED[family]
    d = fixtures.build(family, tmp_path / family)
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model_type"] == model_type and cfg["architectures"] == [architecture]
    assert cfg["auto_map"] == fixtures.FAMILIES[family]["auto_map"]
    assert cfg["vocab_size"] >= 260
    for name in fixtures.FAMILIES[family]["files"]:
        assert (d / name).is_file()

    model = load(d)
    assert type(model).__name__ == architecture
    assert type(model).__module__.startswith("transformers_modules.")   # the shipped code ran
    state = model.state_dict()
    assert set(keys) <= set(state), sorted(set(keys) - set(state))
    on_disk = saved_tensors(d)
    assert set(on_disk) == set(state)
    assert all(torch.equal(state[k], v) for k, v in on_disk.items())

    x = ids()
    with torch.no_grad():
        logits = model(input_ids=x).logits
    assert logits.shape == (2, 12, cfg["vocab_size"])
    assert torch.isfinite(logits).all() and logits.std() > 0.01

    with torch.no_grad():
        again = load(d)(input_ids=x).logits
    assert torch.equal(logits, again)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_auto_map_class_loads(family, tmp_path):
    import transformers
    d = fixtures.build(family, tmp_path / family)
    auto_map = fixtures.FAMILIES[family]["auto_map"]
    config = transformers.AutoConfig.from_pretrained(str(d), trust_remote_code=True)
    assert type(config).__name__ == auto_map["AutoConfig"].split(".")[1]
    for auto in ("AutoModel", "AutoModelForCausalLM"):
        assert type(load(d, auto)).__name__ == auto_map[auto].split(".")[1]


def test_build_is_deterministic(tmp_path):
    a = saved_tensors(fixtures.build("llada2", tmp_path / "a", seed=1))
    b = saved_tensors(fixtures.build("llada2", tmp_path / "b", seed=1))
    c = saved_tensors(fixtures.build("llada2", tmp_path / "c", seed=2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["lm_head.weight"], c["lm_head.weight"])
    assert a["model.layers.1.mlp.gate.expert_bias"].abs().sum() > 0


@pytest.mark.parametrize("family", ["llada2", "llada_moe"])
def test_llada_families_attend_bidirectionally(family, tmp_path):
    model = load(fixtures.build(family, tmp_path / family))
    x = ids(batch=1)
    y = x.clone()
    y[0, -1] = 4 + (int(x[0, -1]) - 3) % (fixtures.VOCAB - 4)   # another token, last position
    with torch.no_grad():
        a, b = model(input_ids=x).logits, model(input_ids=y).logits
    assert not torch.allclose(a[0, 0], b[0, 0])                 # the first position sees it


def test_sdar_attends_block_causally(tmp_path):
    d = fixtures.build("sdar", tmp_path / "sdar")
    model = load(d)
    block = json.loads((d / "config.json").read_text())["block_size"]
    x = ids(batch=1, length=3 * block)
    y = x.clone()
    y[0, 2 * block + 1] = 4 + (int(x[0, 2 * block + 1]) - 3) % (fixtures.VOCAB - 4)
    with torch.no_grad():
        a, b = model(input_ids=x).logits, model(input_ids=y).logits
    assert torch.equal(a[0, :2 * block], b[0, :2 * block])     # earlier blocks do not see it
    assert not torch.allclose(a[0, 2 * block], b[0, 2 * block])  # its own block does


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_mask_hides_padded_keys(family, tmp_path):
    model = load(fixtures.build(family, tmp_path / family))
    x = ids(batch=1, length=12)
    keep = torch.ones_like(x)
    keep[:, 8:] = 0
    with torch.no_grad():
        padded = model(input_ids=x, attention_mask=keep).logits[:, :8]
        short = model(input_ids=x[:, :8]).logits
        full4d = model(input_ids=x[:, :8],
                       attention_mask=torch.ones(1, 1, 8, 8, dtype=torch.bool)).logits
    torch.testing.assert_close(padded, short, rtol=1e-5, atol=1e-5)
    if family != "sdar":            # a ready 4-D mask replaces SDAR's block mask
        torch.testing.assert_close(full4d, short, rtol=1e-5, atol=1e-5)

"""Loader round trips in the three namings against an independent reference forward."""
import json

import pytest
import torch
from safetensors.torch import save_file

import qpass
from reference_forward import forward as ref_forward

D, H, HK, LAYERS, MLP, V = 32, 4, 2, 2, 48, 61

LLADA_PARTS = {"attn_norm": "attn_norm", "q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "attn_out",
               "mlp_norm": "ff_norm", "gate": "ff_proj", "up": "up_proj", "down": "ff_out"}
QWEN_PARTS = {"attn_norm": "input_layernorm", "q": "self_attn.q_proj", "k": "self_attn.k_proj",
              "v": "self_attn.v_proj", "o": "self_attn.o_proj", "mlp_norm": "post_attention_layernorm",
              "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}


def shapes(part, hk):
    return {"q": (H * (D // H), D), "k": (hk * (D // H), D), "v": (hk * (D // H), D), "o": (D, D),
            "gate": (MLP, D), "up": (MLP, D), "down": (D, MLP)}.get(part, (D,))


def make_checkpoint(family, g):
    """Random tensors with the real names, config keys as the real models write them."""
    t, hk = {}, (H if family == "llada" else HK)
    if family == "llada":
        pre = "model.transformer."
        names = {"embed": pre + "wte.weight", "norm": pre + "ln_f.weight", "head": pre + "ff_out.weight",
                 "block": lambda i, p: f"{pre}blocks.{i}.{LLADA_PARTS[p]}"}
        cfg = {"model_type": "llada", "d_model": D, "n_heads": H, "n_kv_heads": H, "n_layers": LAYERS,
               "mlp_hidden_size": MLP, "vocab_size": V, "embedding_size": V, "rope_theta": 500000.0,
               "rms_norm_eps": 1e-5, "mask_token_id": V - 1, "weight_tying": False, "include_bias": False}
        dims = dict(theta=500000.0, eps=1e-5, causal=False, shift=False)
    else:
        names = {"embed": "model.embed_tokens.weight", "norm": "model.norm.weight",
                 "head": "lm_head.weight" if family == "dream" else None,
                 "block": lambda i, p: f"model.layers.{i}.{QWEN_PARTS[p]}"}
        cfg = {"model_type": "Dream" if family == "dream" else "llama", "hidden_size": D,
               "num_attention_heads": H, "num_key_value_heads": HK, "num_hidden_layers": LAYERS,
               "intermediate_size": MLP, "vocab_size": V, "rope_theta": 1e6, "rms_norm_eps": 1e-6,
               "tie_word_embeddings": family == "llama"}
        if family == "dream":
            cfg["mask_token_id"] = V - 1
        dims = dict(theta=1e6, eps=1e-6, causal=family == "llama", shift=family == "dream")
    dims.update(d=D, H=H, Hk=hk, layers=LAYERS)
    t[names["embed"]] = torch.randn(V, D, generator=g)
    t[names["norm"]] = 1 + 0.1 * torch.randn(D, generator=g)
    if names["head"]:
        t[names["head"]] = 0.2 * torch.randn(V, D, generator=g)
    for i in range(LAYERS):
        for p in LLADA_PARTS:
            s = shapes(p, hk)
            base = 1.0 if len(s) == 1 else 0.0
            t[names["block"](i, p) + ".weight"] = base + 0.15 * torch.randn(*s, generator=g)
            if family == "dream" and p in ("q", "k", "v"):
                t[names["block"](i, p) + ".bias"] = 0.1 * torch.randn(s[0], generator=g)
    return t, names, dims, cfg


def write(tmp_path, t, cfg, shards=1):
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    if shards == 1:
        save_file(t, str(tmp_path / "model.safetensors"))
        return
    keys = sorted(t)
    wm = {}
    for s in range(shards):
        part = {k: t[k] for k in keys[s::shards]}
        fn = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file(part, str(tmp_path / fn))
        wm.update({k: fn for k in part})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wm}))


@pytest.mark.parametrize("family,shards", [("llada", 1), ("dream", 2), ("llama", 1), ("llada", 3)])
def test_roundtrip_matches_reference(tmp_path, family, shards):
    g = torch.Generator().manual_seed(1)
    t, names, dims, cfg = make_checkpoint(family, g)
    write(tmp_path, t, cfg, shards)
    model = qpass.models.load(tmp_path, dtype=torch.float64)
    ids = torch.randint(0, V, (2, 11), generator=g)
    ref = ref_forward(t, names, dims, ids)
    out = model(ids)
    assert torch.allclose(out, ref, rtol=1e-9, atol=1e-9), (out - ref).abs().max()
    assert model.config.causal == (family == "llama")
    assert model.config.logit_shift == (family == "dream")


def test_missing_key_is_named(tmp_path):
    t, _, _, cfg = make_checkpoint("llada", torch.Generator().manual_seed(0))
    del t["model.transformer.blocks.1.up_proj.weight"]
    write(tmp_path, t, cfg)
    with pytest.raises(qpass.CheckpointError, match=r"blocks\.1\.up_proj\.weight"):
        qpass.models.load(tmp_path)


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    t, _, _, cfg = make_checkpoint("dream", torch.Generator().manual_seed(0))
    t["model.layers.0.mlp.up_proj.weight"] = torch.zeros(MLP + 1, D)
    write(tmp_path, t, cfg)
    with pytest.raises(qpass.CheckpointError) as e:
        qpass.models.load(tmp_path)
    msg = str(e.value)
    assert "model.layers.0.mlp.up_proj.weight" in msg and f"({MLP + 1}, {D})" in msg and f"({MLP}, {D})" in msg


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(qpass.CheckpointError, match="config.json"):
        qpass.models.load(tmp_path)
    with pytest.raises(qpass.CheckpointError, match="neither a known model"):
        qpass.models.load("no-such-model-xyz")


def test_meta_device_has_no_weights():
    m = qpass.models.load("llada-8b", device="meta")
    assert all(p.is_meta for p in m.parameters())
    assert sum(p.numel() for p in m.parameters()) == 8_015_581_184


def test_zoo_model_loads_with_tokenizer():
    m = qpass.models.load("tiny-llada")
    assert m.tokenizer is not None and m.config.mask_token_id == m.tokenizer.mask_token_id
    assert m.tokenizer.decode(m.tokenizer.encode("To be, or not")) == "To be, or not"

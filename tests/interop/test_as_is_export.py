"""A model captured as it is, exported as compressed-tensors and loaded by transformers itself
(from_pretrained → its compressed-tensors quantizer, compressed-tensors 0.20): the logits are
the AsIsModel's; quantized linears are pack-quantized at every path (DiffusionGemma's encoder
and decoder share them, so the ties are off and both are written), high-precision linears are
in `ignore`, fused experts stay dense (no compressed-tensors layout transformers loads for
them). A model whose ties touch only dense tensors keeps them (lm_head not written)."""
import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "fixtures"))
import diffusion_gemma as dg  # noqa: E402

import qpass  # noqa: E402
from qpass.cli import main  # noqa: E402
from qpass.interop.as_is_export import export_as_is_compressed_tensors  # noqa: E402
from qpass.presets import PRESETS  # noqa: E402

TEXT = open(os.path.join(os.path.dirname(qpass.__file__), "ops.py")).read()[:20000]


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    tiny = dg.build(tmp_path_factory.mktemp("dg") / "tiny")
    out = tmp_path_factory.mktemp("q") / "w4-gptq"
    q = PRESETS["w4a16-gptq"]().run(tiny, calib=TEXT, out=out, progress=False)
    return q, out


def _hf_load(directory):
    from transformers import DiffusionGemmaForBlockDiffusion
    from transformers.utils import logging as hf_logging
    hf_logging.disable_progress_bar()
    try:
        return DiffusionGemmaForBlockDiffusion.from_pretrained(str(directory),
                                                               dtype=torch.float32).eval()
    finally:
        hf_logging.enable_progress_bar()


def _rel_gap(a_model, b_model):
    worst = 0.0
    for seed in range(2):
        ids, canvas = dg.prompt_and_canvas(seed, batch=2)
        with torch.no_grad():
            a = a_model(input_ids=ids, decoder_input_ids=canvas).logits
            b = b_model(input_ids=ids, decoder_input_ids=canvas).logits
        worst = max(worst, float((a - b).norm() / a.norm()))
    return worst


def test_transformers_loads_the_export(quantized, tmp_path):
    from safetensors import safe_open
    q, _ = quantized
    out = export_as_is_compressed_tensors(q, tmp_path / "ct")
    hf = _hf_load(out)
    assert _rel_gap(q, hf) <= 1e-4

    cfg = json.loads((out / "config.json").read_text())
    qc = cfg["quantization_config"]
    assert qc["format"] == "pack-quantized" and cfg["tie_word_embeddings"] is False
    ignore = set(qc["ignore"])
    assert "lm_head" in ignore
    assert sum(n.endswith("router.proj") for n in ignore) == 6          # encoder and decoder
    assert any("vision_tower" in n for n in ignore)
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
        experts = f.get_tensor("model.decoder.layers.0.experts.gate_up_proj")
    for side in ("model.encoder.language_model.layers.0", "model.decoder.layers.0"):
        assert f"{side}.self_attn.q_proj.weight_packed" in keys
        assert f"{side}.self_attn.q_proj.weight" not in keys
    assert not any(k.startswith("model.encoder.vision") and k.endswith("weight_packed")
                   for k in keys)
    # fused experts: dense, the dequantized codes the AsIsModel computes with
    assert experts.dtype == torch.float32
    assert torch.equal(experts, q.model.model.decoder.layers[0].experts.gate_up_proj.detach())
    assert hf.model.encoder.language_model.layers[0].self_attn.q_proj.quantization_scheme
    # compressed-tensors decompresses on the model's first forward (a hook on the top module,
    # done above); DiffusionGemma's own sampler then draws what the AsIsModel draws
    ids = torch.tensor([q.tokenizer.encode("def f(x):")])
    runs = []
    for model in (q, hf):
        torch.manual_seed(0)
        res = model.generate(input_ids=ids, max_new_tokens=8, max_denoising_steps=3)
        runs.append(res.sequences if hasattr(res, "sequences") else res)
    assert torch.equal(*runs)


def test_cli_exports_an_as_is_directory(quantized, tmp_path, capsys):
    _, saved = quantized
    out = tmp_path / "ct"
    assert main(["export", str(saved), "--format", "compressed-tensors", "--out", str(out)]) == 0
    assert "wrote compressed-tensors export" in capsys.readouterr().out
    assert _rel_gap(qpass.load_compiled(saved), _hf_load(out)) <= 1e-4


def test_cli_refuses_other_formats_and_existing_paths(quantized, tmp_path, capsys):
    _, saved = quantized
    for fmt in ("gptq", "gguf"):
        assert main(["export", str(saved), "--format", fmt, "--out", str(tmp_path / fmt)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "compressed-tensors only" in err[0], err
        assert not (tmp_path / fmt).exists()
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    assert main(["export", str(saved), "--format", "compressed-tensors",
                 "--out", str(theirs)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert [p.name for p in theirs.iterdir()] == ["notes.txt"]


def test_dense_ties_are_kept(tmp_path):
    """A LLaMA whose only tie is the dense lm_head to the embedding: the tie stays, lm_head is
    not written, and transformers ties it back."""
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
    from qpass.ir.qlinear import QuantLinear
    from qpass.runtime.as_is_model import AsIsModel
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).eval()
    for layer in model.model.layers:
        for parent, name in ((layer.self_attn, "q_proj"), (layer.self_attn, "o_proj"),
                             (layer.mlp, "down_proj")):
            setattr(parent, name, QuantLinear.from_linear(getattr(parent, name), "int4:g32:sym"))
    q = AsIsModel(model, [], {}, {}, {})
    out = export_as_is_compressed_tensors(q, tmp_path / "ct")
    cfg_out = json.loads((out / "config.json").read_text())
    assert cfg_out["tie_word_embeddings"] is True
    assert "lm_head" in cfg_out["quantization_config"]["ignore"]
    from safetensors import safe_open
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert "lm_head.weight" not in keys
    assert "model.layers.0.self_attn.q_proj.weight_packed" in keys
    hf = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = q(input_ids=ids).logits, hf(input_ids=ids).logits
    assert float((a - b).norm() / a.norm()) <= 1e-4

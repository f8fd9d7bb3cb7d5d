"""Every pipeline exports (issue 28, item 4): FuseNorms folds the final norm's gain into the head
of a tied-embedding model, so the head no longer is the embedding. Each format then writes the
untied head as llm-compressor does — `lm_head.weight` with `tie_word_embeddings: false`
(compressed-tensors, GPTQ), an `output.weight` tensor (GGUF) — read back by the format's own
reader, and transformers' from_pretrained computes qpass's logits."""
import json
import os
import sys

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from qpass import Pipeline, models, passes
from qpass.calibration import CalibrationSet
from qpass.cli.main import main
from qpass.interop import export_compressed_tensors, export_gguf, export_gptq, read_source

from compressed_tensors.entrypoints.convert.converters.ct_dequantizer import (
    CompressedTensorsDequantizer)

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "fixtures"))
from hf_loading import causal_lm  # noqa: E402


@pytest.fixture(scope="module")
def fused():
    """tiny-llama-random (tied embeddings) after FuseNorms + GPTQ: the head is the embedding
    scaled by the final norm's gain, so it is untied."""
    model = models.load("tiny-llama-random")
    assert model.config.tie_embeddings
    calib = CalibrationSet.from_ids(torch.arange(512) % 88, mask_id=88, n=2, seq_len=32, seed=0)
    c = Pipeline([passes.FuseNorms(), passes.GPTQ("int4:g32:sym:f16scale")]).run(
        model, calib, progress=False, verify=False)
    sd = c.gm.state_dict()
    assert not torch.equal(sd["head.weight"], sd["embed.weight"])
    return model, c


def test_read_source_unties_the_head(fused):
    _, c = fused
    src = read_source(c)
    assert not src.config.tie_embeddings and src.hf_config["tie_word_embeddings"] is False
    assert torch.equal(src.dense["lm_head.weight"], c.gm.state_dict()["head.weight"])
    assert src.kept_linears == ["lm_head"]


def test_compressed_tensors_untied_head_transformers_logits(fused, tmp_path):
    _, c = fused
    out = export_compressed_tensors(read_source(c), tmp_path / "ct")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False
    assert cfg["quantization_config"]["ignore"] == ["lm_head"]
    deq = CompressedTensorsDequantizer(str(out), ignore=["model.embed_tokens", "model.norm"],
                                       dtype=torch.float32)
    got = deq.validate(load_file(str(out / "model.safetensors")))
    sd = c.gm.state_dict()
    assert torch.equal(got["lm_head.weight"], sd["head.weight"])
    assert torch.equal(got["model.embed_tokens.weight"], sd["embed.weight"])
    hf = causal_lm(out)
    assert not torch.equal(hf.lm_head.weight, hf.model.embed_tokens.weight)
    ids = torch.randint(0, 88, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, c(ids), rtol=1e-5, atol=1e-5)


def test_gptq_untied_head(fused, tmp_path):
    _, c = fused
    out = export_gptq(read_source(c), tmp_path / "gptq", scale_dtype="float32")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False
    t = load_file(str(out / "model.safetensors"))
    assert torch.equal(t["lm_head.weight"], c.gm.state_dict()["head.weight"])
    assert "model.layers.0.self_attn.q_proj.qweight" in t


def test_gguf_untied_head(fused, tmp_path):
    _, c = fused
    out = export_gguf(read_source(c), tmp_path / "m.gguf")
    r = gguf.GGUFReader(str(out))
    tensors = {t.name: t for t in r.tensors}
    head = gguf.quants.dequantize(tensors["output.weight"].data, tensors["output.weight"].tensor_type)
    np.testing.assert_array_equal(head, c.gm.state_dict()["head.weight"].numpy())


def test_llada_weight_tying_untied(tmp_path):
    # LLaDA's own flag (weight_tying) and head name (model.transformer.ff_out)
    from qpass.models.config import ModelConfig
    from qpass.models.loading import build
    cfg = ModelConfig(d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, mlp_hidden=128,
                      vocab_size=96, mask_token_id=95, tie_embeddings=True, family="llada",
                      causal=False, name="tied-llada")
    model = build(cfg, seed=0)
    c = Pipeline([passes.FuseNorms(), passes.RTN()], scheme="w4a16:g32").run(
        model, progress=False, verify=False)
    out = export_compressed_tensors(read_source(c), tmp_path / "ct")
    hf = json.loads((out / "config.json").read_text())
    assert hf["weight_tying"] is False
    assert hf["quantization_config"]["ignore"] == ["model.transformer.ff_out"]
    t = load_file(str(out / "model.safetensors"))
    assert torch.equal(t["model.transformer.ff_out.weight"], c.gm.state_dict()["head.weight"])


def test_cli_exports_fused_tied_model(tmp_path):
    # the command that failed with "tensor 'head.weight' of the compiled graph has no place in
    # the llama HF naming"
    assert main(["quantize", "tiny-llama-random", "--pipeline", "w4a4-rtn",
                 "--out", str(tmp_path / "q")]) == 0
    for fmt in ("compressed-tensors", "gptq"):
        code = main(["export", str(tmp_path / "q"), "--format", fmt, "--out",
                     str(tmp_path / fmt)])
        assert code == (0 if fmt == "compressed-tensors" else 2)     # GPTQ: weight-only
    cfg = json.loads((tmp_path / "compressed-tensors" / "config.json").read_text())
    assert cfg["tie_word_embeddings"] is False

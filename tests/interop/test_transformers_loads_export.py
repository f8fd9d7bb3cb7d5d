"""An engine actually loading an export: transformers' own compressed-tensors path
(AutoModelForCausalLM.from_pretrained → CompressedTensorsHfQuantizer, decompressing with the
compressed-tensors package) on a LLaMA-layout model it has a class for; its logits must match
the qpass model that was exported (fp32). Weight-only: the weights are identical, only float
summation order differs. W8A8: one linear given the same input must agree (same activation
codes: compressed-tensors fake-quantizes per token on the same full grid, qpass computes in
integers); through the whole model an input 1 ulp off can flip an activation code, so the
logits must only be much closer to qpass's quantized model than that is to the float one.
LLaDA/Dream need their remote code, which cannot be fetched here."""
import json
import os
import sys

import pytest
import torch

from qpass import Pipeline, models, passes
from qpass.interop import export_compressed_tensors, read_source

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "fixtures"))
from hf_loading import causal_lm  # noqa: E402


@pytest.mark.parametrize("scheme", ["w4a16g128", "w8a8"])
def test_transformers_loads_compressed_tensors(tmp_path, scheme):
    model = models.load("tiny-llama-random")       # tied embeddings: lm_head must be ignored
    c = Pipeline([passes.RTN()], scheme=scheme).run(model, progress=False, verify=False)
    out = export_compressed_tensors(read_source(c), tmp_path / "ct")
    assert json.loads((out / "config.json").read_text())["quantization_config"]["ignore"] == \
        ["lm_head"]
    hf = causal_lm(out)
    ids = torch.randint(0, 88, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs, ours, fp = hf(ids).logits, c(ids), model(ids)
    if scheme == "w4a16g128":
        torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
    else:
        # (batch, tokens, K): compressed-tensors' token strategy keeps dims 0 and 1
        x = torch.randn(1, 8, 64, generator=torch.Generator().manual_seed(1))
        for name in ("q_proj", "o_proj"):
            with torch.no_grad():
                y_hf = getattr(hf.model.layers[1].self_attn, name)(x)
                y_qp = c.gm.get_submodule(f"blocks.1.{name}")(x)
            torch.testing.assert_close(y_hf, y_qp, rtol=1e-5, atol=1e-5)
        engine_gap = (theirs - ours).norm() / ours.norm()
        quant_gap = (ours - fp).norm() / fp.norm()
        assert engine_gap < 0.25 * quant_gap, (float(engine_gap), float(quant_gap))

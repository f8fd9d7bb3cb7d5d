"""nvfp4 siblings share one global scale (passes/_quantize_common.shared_global_scales): the
linears that read one input (q/k/v, gate/up), which engines run as one fused GEMM with one
global scale (vLLM and SGLang keep `weight_global_scale.max()` of the shards), are rounded by
RTN and GPTQ under 448·6 over the largest absmax among them — llm-compressor's rule for fused
layers — and the rest (o, down) under their own. Each weight's codes are then RTN's (or
GPTQ's) under that global scale, and the export carries it."""
import pytest
import torch

from qpass import Pipeline, passes
from qpass.formats import QuantizedWeight
from qpass.formats.floating import nvfp4_global_scale

SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def _float_weights(model, block: int) -> dict[str, torch.Tensor]:
    out = {}
    for n, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and f".{block}." in f".{n}":
            out[n.rpartition(".")[2]] = m.weight.detach().float()
    return out


def _check(c, model, gptq: bool):
    for block in range(model.config.n_layers):
        W = _float_weights(model, block)
        q = {name: c.gm.get_submodule(f"blocks.{block}.{name}") for name in W}
        for group in SIBLINGS:
            want = nvfp4_global_scale(torch.stack([W[n].abs().amax() for n in group])
                                      .amax().reshape(1))
            for n in group:
                assert torch.equal(q[n].global_scale, want), (block, n)
                if not gptq:
                    rtn = QuantizedWeight.from_float(W[n], "nvfp4", want)
                    assert torch.equal(q[n].qweight, rtn.packed), (block, n)
                    assert torch.equal(q[n].scales, rtn.scale), (block, n)
        for n in ("o_proj", "down_proj"):                  # alone on their input
            own = nvfp4_global_scale(W[n].abs().amax().reshape(1))
            assert torch.equal(q[n].global_scale, own), (block, n)


def test_rtn_shares_the_global_scale_of_siblings(llada):
    model, _, ids, ref = llada
    c = Pipeline([passes.RTN()], scheme="w4a16-nvfp4").run(model, progress=False,
                                                           verify=False)
    _check(c, model, gptq=False)


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_shares_the_global_scale_of_siblings(llada, act_order):
    model, calib, ids, ref = llada
    c = Pipeline([passes.GPTQ(act_order=act_order)], scheme="w4a16-nvfp4").run(
        model, calib, progress=False, verify=False)
    _check(c, model, gptq=True)
    rtn = Pipeline([passes.RTN()], scheme="w4a16-nvfp4").run(model, progress=False,
                                                             verify=False)
    with torch.no_grad():
        err_gptq = (c(ids) - ref).pow(2).mean()
        err_rtn = (rtn(ids) - ref).pow(2).mean()
    assert err_gptq < err_rtn


def test_other_formats_keep_their_own_scales(llada):
    model = llada[0]
    c = Pipeline([passes.RTN()], scheme="w4a16-mxfp4").run(model, progress=False,
                                                           verify=False)
    assert "global_scale" not in dict(c.gm.get_submodule("blocks.0.q_proj").named_buffers())

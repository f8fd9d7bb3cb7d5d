"""Lower fuses per-token activation quantization into the producer (RMSNorm, silu·mul) of
integer linears: the fused graph on the reference backend gives bit for bit the logits of the
unfused one, the same tokens as the simulated twin, survives save/load, and the report says
which kernels run."""
import pytest
import torch

import qpass
from qpass import passes as P
from qpass import presets
from qpass.backends import op_schemas as kernel_ops
from qpass.runtime import lowered


def _masked(model, n=40):
    ids = torch.tensor([model.tokenizer.encode("To be, or not to be: that is the")])
    x = torch.full((1, n), model.config.mask_token_id)
    x[0, :ids.shape[1]] = ids[0]
    return x


@pytest.mark.parametrize("preset", ["w8a8-rtn", "w4a4-rtn"])
def test_fused_graph_equals_unfused_and_keeps_the_twins_tokens(model, lower, preset):
    sim = presets.get(preset).run(model, progress=False)
    fused, res = lower(sim)
    plain, _ = lower(sim, fuse_act_quant=False)
    mods = list(fused.gm.modules())
    n_norm = sum(isinstance(m, lowered.NormQuant) for m in mods)
    n_silu = sum(isinstance(m, lowered.SiluMulQuant) for m in mods)
    layers = model.config.n_layers
    assert n_norm >= 2 * layers and n_silu == layers      # attn + mlp norms, every MLP
    rows = {r["node"]: r["op"] for r in res.metrics["kernels"]}
    assert sum(op == "linear_int_codes" for op in rows.values()) >= 5 * layers
    assert any("fused into" in n for n in res.notes)
    x = _masked(model)
    kernel_ops.reset_kernel_calls()
    with torch.no_grad():
        yf, yp, ys = fused(x), plain(x), sim(x)
    ran = {op for op, _, _ in kernel_ops.kernel_calls()}
    assert {"rmsnorm_quant", "silu_mul_quant", "linear_int_codes"} <= ran
    assert torch.equal(yf, yp)                 # the reference kernels are the unfused formulas
    assert torch.equal(yf.argmax(-1), ys.argmax(-1))


def test_fused_checkpoint_round_trips_and_binds(model, tmp_path):
    c = qpass.Pipeline([P.RTN("w8a8"), P.Lower()]).run(model, progress=False)
    c.save(tmp_path / "c")
    back = qpass.load_compiled(tmp_path / "c", device="cpu")
    ops_bound = {r["op"] for r in back.kernels}
    assert {"rmsnorm_quant", "silu_mul_quant", "linear_int_codes"} <= ops_bound
    x = _masked(model)
    with torch.no_grad():
        assert torch.equal(back(x), c(x))


def test_no_fusion_when_a_consumer_is_not_an_integer_linear(model, lower):
    sim = presets.get("w4a16-rtn").run(model, progress=False)
    low, res = lower(sim)
    assert not any(isinstance(m, (lowered.NormQuant, lowered.SiluMulQuant))
                   for m in low.gm.modules())


def test_codes_given_to_a_weight_only_linear_is_a_clear_error():
    m = lowered.LoweredLinear(32, 8, "int4:g32:sym")
    with pytest.raises(qpass.QpassError, match="only integer linears"):
        m(torch.zeros(2, 32, dtype=torch.int8), torch.ones(2, 1), torch.zeros(1))

"""RTN codes and dequantized weights equal an independent float64 reference quantizer
(written here from docs/FORMATS.md), for sym/asym × channel/group × bits 2–8."""
import itertools

import pytest
import torch

import qpass
from qpass import passes as P
from qpass.ir.qlinear import QuantLinear


def reference_rtn(w: torch.Tensor, bits: int, symmetric: bool, group: int | None,
                  grid: str = "full"):
    """(unsigned codes, dequantized weight) by the documented convention, in float64.
    Symmetric step 2·absmax/(2^b − 1) on the full grid, absmax/(2^(b−1) − 1) on the restricted.
    QuantLinear rounds the float32 weight (its packed form has float32 scales), so the input is
    taken through float32 first."""
    N, K = w.shape
    g = group or K
    x = w.float().double().reshape(N, K // g, g)
    if symmetric:
        amax = x.abs().amax(-1, keepdim=True)
        step = amax * 2 / (2 ** bits - 1) if grid == "full" else amax / (2 ** (bits - 1) - 1)
        s = step.float().double()                                      # stored as float32
        s = s.clamp(min=torch.finfo(torch.float32).tiny)
        z = torch.full_like(s, 2 ** (bits - 1))
    else:
        lo = x.amin(-1, keepdim=True).clamp(max=0)
        hi = x.amax(-1, keepdim=True).clamp(min=0)
        s = ((hi - lo) / (2 ** bits - 1)).float().double().clamp(min=torch.finfo(torch.float32).tiny)
        z = torch.round(-lo / s).clamp(0, 2 ** bits - 1)
    # codes are computed in float32 for float32 weights (FORMATS.md): the quotient is rounded
    # to float32 before round-half-even, which decides exact ties like 76.5000033 -> 76.5
    u = (torch.round((x / s).float().double()) + z).clamp(0, 2 ** bits - 1)
    deq = ((u - z) * s).float()                      # dequantization is float32 by convention
    return u.reshape(N, K).to(torch.uint8), deq.reshape(N, K).double()


CASES = [(b, sym, grp, grid) for b, sym, grp in itertools.product(range(2, 9), [True, False],
                                                                  [None, 32])
         for grid in (("full", "restricted") if sym else ("full",))]


@pytest.fixture(scope="module")
def fp_model():
    return qpass.models.load("tiny-llada-random").double()


@pytest.mark.parametrize("bits,symmetric,group,grid", CASES)
def test_rtn_matches_reference(fp_model, bits, symmetric, group, grid):
    spec = f"int{bits}:" + (f"g{group}" if group else "channel") + (":sym" if symmetric else ":asym")
    spec += ":restricted" if grid == "restricted" else ""
    g = qpass.capture(fp_model)            # a private graph; the fp model's weights are the input
    fp_weights = {n.target: g.module(n).weight.detach().clone() for n in g.linears()}
    qpass.Pipeline([P.RTN(spec)], verify=False).apply(g)
    quantized = [n for n in g.linears() if isinstance(g.module(n), QuantLinear)]
    assert len(quantized) == 7 * fp_model.config.n_layers            # every linear but the head
    for n in quantized:
        q = g.module(n)
        codes, deq = reference_rtn(fp_weights[n.target], bits, symmetric, group, grid)
        assert torch.equal(q.quantized_weight().codes(), codes), n.target
        torch.testing.assert_close(q.dequantized_weight(torch.float64), deq, rtol=0, atol=0)


def test_rtn_scheme_forms_and_facts():
    assert qpass.Fact.ACTS_QUANTIZED in P.RTN("w4a4").provides
    assert P.RTN("w4a16g128").provides == {qpass.Fact.WEIGHTS_QUANTIZED}
    assert P.RTN(qpass.Scheme.parse("w8a8")).scheme.act is not None
    assert P.RTN("int4:g128:sym").scheme.act is None


def test_group_not_dividing_k_names_layer_and_changes_nothing():
    """strict_groups refuses before anything changes; by default the group is fitted (g32)."""
    from dataclasses import replace
    g = qpass.capture(qpass.models.load("tiny-llada-random"))
    strict = replace(qpass.Scheme.parse("int4:g48"), strict_groups=True)
    with pytest.raises(qpass.SpecError) as e:
        qpass.Pipeline([P.RTN(strict)], verify=False).apply(g)
    assert "layer 'blocks.0." in str(e.value)
    assert not any(isinstance(m, QuantLinear) for m in g.gm.modules())
    qpass.Pipeline([P.RTN("int4:g48")], verify=False).apply(g)
    assert g.gm.get_submodule("blocks.0.q_proj").weight_spec.group_size == 32


def test_w4a4_fake_quantizes_activations_per_token():
    model = qpass.models.load("tiny-llada-random")
    out = qpass.Pipeline([P.RTN("int4:g32:sym")]).run(model, progress=False)
    act = qpass.Pipeline([P.RTN(qpass.Scheme("t", "int4:g32:sym", "int4:token:dyn"))]).run(
        model, progress=False)
    ids = torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(0))
    ref = model(ids)
    # activation quantization adds error on top of weight quantization
    assert (act(ids) - ref).norm() > (out(ids) - ref).norm()
    lin = act.report.linears[0]
    assert lin.act_spec == "int4:token:dyn" and lin.weight_sqnr_db > 10 and lin.output_sqnr_db > 0

"""GPTQ's round-level sharing: H is factored once per input for the linears that read it, and
the solves of a round run side by side on threads. Neither may change a single bit."""
import pytest
import torch

import qpass
from qpass import passes as P
from qpass.calibration import CalibrationSet
from qpass.passes.gptq import factor_hessian, quantize_weight


def _problem(N=48, K=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    X = torch.randn(256, K, generator=gen) * torch.linspace(0.2, 3.0, K)
    X[:, 5] = 0.0                                     # a dead input on the way
    return torch.randn(N, K, generator=gen), X.t() @ X


@pytest.mark.parametrize("act_order", [False, True, "group"])
@pytest.mark.parametrize("spec", ["int4:g16:sym", "int3:channel:asym"])
def test_a_shared_factor_gives_the_same_bits(act_order, spec):
    W1, H = _problem(seed=1)
    W2, _ = _problem(seed=2)
    factor = factor_hessian(H, spec, act_order)
    for W in (W1, W2):                                # one factor, two linears (q and k)
        alone, info_a = quantize_weight(W, H, spec, act_order=act_order)
        shared, info_s = quantize_weight(W, H, spec, act_order=act_order, factor=factor)
        assert torch.equal(alone, shared)
        assert torch.equal(info_a.qweight.codes(), info_s.qweight.codes())
        assert info_s.dead == 1


def test_a_factor_for_another_setting_is_refused():
    W, H = _problem()
    factor = factor_hessian(H, "int4:g16:sym", act_order=False)
    with pytest.raises(qpass.SpecError, match="HessianFactor was made for"):
        quantize_weight(W, H, "int4:g16:sym", act_order=True, factor=factor)


def test_threads_do_not_change_the_checkpoint():
    model = qpass.models.load("tiny-llada-random")
    calib = CalibrationSet.from_ids(torch.arange(3000) % 90, mask_id=model.config.mask_token_id,
                                    n=8, seq_len=32, seed=0)
    outs = [qpass.Pipeline([P.GPTQ(act_order=True, threads=t)], scheme="int4:g32:sym")
            .run(model, calib, progress=False).gm.state_dict() for t in (1, 4)]
    assert outs[0].keys() == outs[1].keys()
    for k in outs[0]:
        assert torch.equal(outs[0][k], outs[1][k]), k

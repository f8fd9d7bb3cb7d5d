"""FuseNorms is exact on all three families (fp32 and fp64) against the FP model itself, and
verification catches a deliberately broken 'exact' pass, naming it and the first bad node."""
import pytest
import torch

import qpass
from qpass import passes as P
from qpass.pipeline.pass_base import Pass, PassResult

FAMILIES = ["tiny-llada-random", "tiny-dream-random", "tiny-llama-random"]


def _ids(vocab, seed=1):
    return torch.randint(0, vocab, (2, 24), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.float64, 1e-9)])
@pytest.mark.parametrize("family", FAMILIES)
def test_fuse_norms_exact(family, dtype, tol):
    model = qpass.models.load(family).to(dtype)
    ids = _ids(model.config.vocab_size)
    ref = model(ids).double()
    out = qpass.Pipeline([P.FuseNorms()], verify=False).run(model, progress=False)
    got = out(ids).double()
    rel = ((got - ref).abs().max() / ref.abs().max()).item()
    assert rel <= tol, rel
    # the caller's model is untouched; every norm of the compiled graph is weightless
    assert torch.equal(model(ids).double(), ref)
    norms = [m for n, m in out.gm.named_modules() if n.endswith("norm")]
    assert norms and all(torch.all(m.weight == 1) for m in norms)
    assert out.report.coverage is None            # no quantizing pass: no coverage requirement
    assert out.report.passes[0].name == "FuseNorms"


def test_fuse_norms_folds_gamma_into_columns_and_unties_head():
    model = qpass.models.load("tiny-llama-random").double()
    g = qpass.capture(model)
    gamma = model.norm.weight.detach().clone()
    W = model.head.weight.detach().clone()
    res = qpass.Pipeline([P.FuseNorms()], verify=False).apply(g).passes[0]
    head = g.gm.get_submodule("head")
    torch.testing.assert_close(head.weight.detach(), W * gamma[None, :], rtol=0, atol=0)
    assert head.weight is not g.gm.get_submodule("embed").weight
    assert torch.equal(g.gm.get_submodule("embed").weight.detach(), W)   # embedding untouched
    assert any("fused norm" in n for n in res.notes)     # the executor untied the head first


class BrokenExact(Pass):
    """Claims to be exact but scales the last linear of the second block by 1.05."""
    exact = True

    def run(self, g, ctx):
        node = g.blocks()[1].linears[-1]
        self.victim = node.name
        with torch.no_grad():
            g.module(node).weight.mul_(1.05)
        return PassResult([node.name])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_verification_catches_broken_exact_pass(dtype):
    broken = BrokenExact()
    with pytest.raises(qpass.VerificationError) as e:
        qpass.Pipeline([P.FuseNorms(), broken]).run(qpass.models.load("tiny-llada-random"),
                                                     dtype=dtype, progress=False)
    msg = str(e.value)
    assert "BrokenExact" in msg and f"first diverging node: '{broken.victim}'" in msg, msg

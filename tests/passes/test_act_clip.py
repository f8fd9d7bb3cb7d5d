"""Per-linear activation clip search (ObserveActivations(clip_search=...)): its objective
against a float64 per-token int4 quantizer written here, the pass's choice per linear, the
ratios through save/load, the lowering's refusal of clipped activations, bad candidate lists."""
import pytest
import torch

import qpass
from qpass import passes as P
from qpass.calibration import CalibrationSet
from qpass.errors import SpecError
from qpass.ir.qlinear import QuantLinear
from qpass.runtime.lowered import kernel_kind
from qpass.specs import QuantSpec

from passes._act_clip import output_errors

CANDS = (1.0, 0.9, 0.8, 0.7)


def _ref_fq_int4_token(x, r):
    """Symmetric per-token int4 on the full grid: s = r·absmax/7.5, codes in [-8, 7]."""
    s = (r * x.abs().amax(dim=-1, keepdim=True) / 7.5).to(torch.float32).to(torch.float64)
    return torch.round(x / s).clamp(-8, 7) * s


def test_objective_matches_a_float64_reference():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 32, generator=g, dtype=torch.float64)
    x[:, 3] *= 20                                       # an outlier channel makes clipping pay
    w = torch.randn(16, 32, generator=g, dtype=torch.float64)
    errs = output_errors(x, w, QuantSpec.parse("int4:token:dyn"), CANDS)
    for r in CANDS:
        ref = float(((x - _ref_fq_int4_token(x, r)) @ w.T).square().sum())
        assert errs[r] == pytest.approx(ref, rel=1e-6)   # scales stored in float32


@pytest.fixture(scope="module")
def clipped():
    model = qpass.models.load("tiny-llada-random")
    calib = CalibrationSet.from_ids(torch.arange(2000) % 90, mask_id=96, n=4, seq_len=32, seed=1)
    c = qpass.Pipeline([P.FuseNorms(), P.Rotate(), P.RTN(),
                        P.ObserveActivations(clip_search=CANDS)], scheme="w4a4").run(
        model, calib, progress=False)
    return c, calib


def test_search_never_loses_to_unclipped_and_sets_the_spec(clipped):
    c, _ = clipped
    rec = next(r for r in c.report.passes if r.name == "ObserveActivations")
    chosen = rec.metrics["act_clip"]
    assert chosen
    for name, m in chosen.items():
        assert m["ratio"] in CANDS and m["error"] <= m["error_unclipped"]
        assert c.gm.get_submodule(name).act_spec.clip_ratio == m["ratio"]


def test_clip_ratios_survive_save_and_load(clipped, tmp_path):
    c, _ = clipped
    c.save(tmp_path / "c")
    loaded = qpass.load_compiled(tmp_path / "c")
    specs = {n: str(m.act_spec) for n, m in c.gm.named_modules() if isinstance(m, QuantLinear)}
    assert specs == {n: str(m.act_spec) for n, m in loaded.gm.named_modules()
                     if isinstance(m, QuantLinear)}
    ids = torch.arange(32)[None] % 90
    assert any(m.act_spec.clip_ratio < 1.0 for m in loaded.gm.modules()
               if isinstance(m, QuantLinear))
    with torch.no_grad():
        assert torch.equal(loaded(ids), c(ids))


def test_simulation_clips_and_kernels_refuse_clipped_activations():
    torch.manual_seed(0)
    lin = torch.nn.Linear(32, 8, bias=False).double()
    spec = QuantSpec.parse("int4:token:dyn:clip0.8")
    q = QuantLinear.from_linear(lin, None, spec)
    x = torch.randn(5, 32, dtype=torch.float64)
    ref, unclipped = (_ref_fq_int4_token(x, r) @ lin.weight.T for r in (0.8, 1.0))
    with torch.no_grad():                   # dequantization runs in float32: 1e-6 slack
        assert torch.allclose(q(x), ref, atol=1e-6)
        assert not torch.allclose(q(x), unclipped, atol=1e-3)
    kind, why = kernel_kind(QuantSpec.parse("int4:channel"), spec)
    assert kind is None and "clipped" in why


@pytest.mark.parametrize("kw, words", [({"clip_search": ()}, "non-empty"),
                                       ({"clip_search": (1.0, 1.2)}, "out of range"),
                                       ({"clip_search": ("a",)}, "clip ratios"),
                                       ({"clip_search": CANDS, "clip_ratio": 0.9}, "not both")])
def test_bad_clip_options_are_spec_errors(kw, words):
    with pytest.raises(SpecError, match=words):
        P.ObserveActivations(**kw)

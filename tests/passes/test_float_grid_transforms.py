"""AWQ, SmoothQuant, QuaRot and DuQuant on the floating-point grids (issue 28 item 2): each runs
through Pipeline.run on tiny-llada with every linear on the scheme's float format, and each
lands closer to the FP logits than plain RTN on the same scheme — the reason to run it."""

import pytest
import torch

import qpass
from qpass import passes as P
from qpass.ir.qlinear import QuantLinear

CASES = {
    "awq": (lambda: [P.AWQ(), P.RTN()], "w4a16-nvfp4"),
    # at w8a8-fp8 SmoothQuant α 0.5 does not beat RTN (0.0202 vs 0.0196 here): E4M3's
    # exponent already covers the activation outliers that smoothing moves for int8
    "smoothquant": (lambda: [P.SmoothQuant(0.5), P.RTN()], "w4a4-nvfp4"),
    "quarot": (lambda: [P.FuseNorms(), P.Rotate(), P.GPTQ(), P.ObserveActivations()],
               "w4a4-nvfp4"),
    "duquant": (lambda: [P.FuseNorms(), P.DuQuant(), P.RTN()], "w4a4-mxfp4"),
}


def _rel(compiled, ids, ref) -> float:
    with torch.no_grad():
        return float((compiled(ids) - ref).norm() / ref.norm())


@pytest.mark.parametrize("method", sorted(CASES))
def test_method_on_float_grid_beats_rtn(llada, method):
    model, calib, ids, ref = llada
    passes, scheme = CASES[method]
    out = qpass.Pipeline(passes(), scheme=scheme).run(model, calib, progress=False)
    fmt = scheme.split("-")[1]
    linears = [m for m in out.gm.modules() if isinstance(m, QuantLinear)]
    assert len(linears) == 42
    assert all(m.weight_spec.is_float and m.weight_spec.format == fmt for m in linears)
    rtn = qpass.Pipeline([P.RTN()], scheme=scheme).run(model, calib, progress=False)
    assert _rel(out, ids, ref) < _rel(rtn, ids, ref), (method, scheme)

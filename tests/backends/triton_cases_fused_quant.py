"""Producer-fused per-token quantization (backends/triton/fused_quant.py) under
TRITON_INTERPRET=1, run by test_triton_interpret.py in a subprocess: RMSNorm+quant and
silu·mul+quant give exactly the codes and scales of the separate quantizer applied to the
producer's output, and the lowered ops match the reference backend."""
import pytest
import torch

from interpreter_cases import rel, require_interpreter  # noqa: E402,F401

require_interpreter()

import torch.nn.functional as F  # noqa: E402

import qpass  # noqa: E402,F401
import qpass.backends.op_schemas  # noqa: E402,F401
from qpass import formats  # noqa: E402
from qpass.backends.triton import fused_quant  # noqa: E402
from qpass.models.denoiser import rms_norm  # noqa: E402

ops = torch.ops.qpass
GRIDS = [(8, "full"), (8, "restricted"), (4, "full"), (4, "restricted")]


def _inputs(dtype, seed):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(37, 96, generator=g) * 3).to(dtype)
    x[1] = 0.0                                             # all-zero row: the scale floor
    return x, (torch.rand(96, generator=g) + 0.5).to(dtype), g


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("bits,grid", GRIDS)
def test_rmsnorm_quant_codes_equal_the_separate_quantizer(dtype, bits, grid):
    x, w, _ = _inputs(dtype, bits)
    q, s, y = fused_quant.rmsnorm_quant_rows(x, w, 1e-5, bits, grid, want_y=True)
    assert y.dtype == dtype
    # the separate quantizer (torch reference and Triton kernel) on the fused kernel's own norm
    qr, sr = formats.quantize_per_token(y, bits, grid)
    assert torch.equal(q, qr) and torch.equal(s, sr)
    qt, st = ops.quant_per_token(y, bits, False, None, "triton", grid)
    assert torch.equal(q, qt) and torch.equal(s, st)
    # the norm itself: the model's rms_norm to within an ulp or two of its dtype
    ref = rms_norm(x, w, 1e-5)
    tol = 1e-6 if dtype == torch.float32 else 1e-3
    assert torch.allclose(y.float(), ref.float(), rtol=tol, atol=tol)
    # and the op, end to end, against the unfused reference path
    qo, so = ops.rmsnorm_quant(x, w, 1e-5, bits, grid, "triton")
    qe, se = ops.rmsnorm_quant(x, w, 1e-5, bits, grid, "reference")
    assert (qo.int() - qe.int()).abs().max() <= 1 and (qo != qe).float().mean() < 0.01
    assert torch.allclose(so, se, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("bits,grid", GRIDS)
def test_silu_mul_quant_codes_equal_the_separate_quantizer(dtype, bits, grid):
    gate, _, gen = _inputs(dtype, 10 + bits)
    up = torch.randn(gate.shape, generator=gen).to(dtype)
    q, s, y = fused_quant.silu_mul_quant_rows(gate, up, bits, grid, want_y=True)
    qr, sr = formats.quantize_per_token(y, bits, grid)
    assert torch.equal(q, qr) and torch.equal(s, sr)
    ref = F.silu(gate.float()).to(dtype).float() * up.float()
    tol = 1e-6 if dtype == torch.float32 else 1e-3
    assert torch.allclose(y.float(), ref, rtol=tol, atol=tol)
    qo, so = ops.silu_mul_quant(gate, up, bits, grid, "triton")
    qe, se = ops.silu_mul_quant(gate, up, bits, grid, "reference")
    assert (qo.int() - qe.int()).abs().max() <= 1 and (qo != qe).float().mean() < 0.01
    assert torch.allclose(so, se, rtol=1e-5)


@pytest.mark.parametrize("w_bits,act_bits,group", [(8, 8, 0), (4, 8, 32), (4, 4, 0)])
def test_linear_on_producer_codes_bit_exact_vs_reference(w_bits, act_bits, group):
    torch.manual_seed(w_bits + act_bits)
    x, w, bias = torch.randn(2, 11, 64), torch.randn(48, 64), torch.randn(48)
    spec = "int8:channel" if w_bits == 8 else (f"int4:g{group}:sym" if group else "int4:channel")
    qw = formats.QuantizedWeight.from_float(w, spec)
    qweight = formats.to_signed(qw.codes(), 8) if w_bits == 8 else qw.packed
    xq, xs = formats.quantize_per_token(x, act_bits)
    got = ops.linear_int_codes(xq, xs, qweight, qw.scale, bias, w_bits, group, torch.float32,
                               "triton")
    want = ops.linear_int_codes(xq, xs, qweight, qw.scale, bias, w_bits, group, torch.float32,
                                "reference")
    assert got.shape == (2, 11, 48) and torch.equal(got, want)
    # and it is the unfused linear when the codes come from the same quantizer
    op = {8: ops.linear_w8a8}.get(w_bits)
    unfused = op(x, qweight, qw.scale, bias, "reference") if op else \
        (ops.linear_w4a8 if act_bits == 8 else ops.linear_w4a4)(x, qweight, qw.scale, bias,
                                                                  group, "reference")
    assert torch.equal(want, unfused)

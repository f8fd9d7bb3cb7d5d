"""The float kernels (backends/triton/gemm_fp8.py, gemm_fp4a16.py) under TRITON_INTERPRET=1, run
by test_triton_interpret.py in a subprocess. The interpreter runs float8e4nv bitcasts and
tl.dot on float8 operands (products exact, sums in fp32), so the fp8 GEMM is checked here
against the reference's exact sums; its float→fp8 conversion is not the hardware's (ties away
from zero, no saturation), which is why the quant kernel builds E4M3 bit patterns itself —
checked bit for bit on every E4M3 value, the ties between them and saturation. What only a GPU
shows: the tensor cores' own fp8 accumulation, speed, and the sm_89 gate on a real device."""
import pytest
import torch

from interpreter_cases import rel, require_interpreter  # noqa: E402,F401

require_interpreter()

import qpass.backends.op_schemas  # noqa: E402,F401
from qpass import formats  # noqa: E402
from qpass.formats import float_linear as FL  # noqa: E402
from qpass.formats.minifloat import E4M3, encode, round_to, table  # noqa: E402
from qpass.backends.triton.gemm_fp8 import fp8_quant_rows  # noqa: E402

ops = torch.ops.qpass


def test_fp8_quant_kernel_codes_every_value_tie_and_saturation():
    v = table(E4M3)[torch.isfinite(table(E4M3))].unique()
    mids = (v[:-1] + v[1:]) / 2                          # exact ties: half to even
    x = torch.cat([v, mids, v * 1.03, torch.tensor([500.0, -1e6, 1e-9, -0.0, 464.0])])
    x = torch.nn.functional.pad(x, (0, -len(x) % 32)).reshape(4, -1)
    q, s = fp8_quant_rows(x, torch.ones(1, 1))
    assert torch.equal(q, encode(round_to(x, E4M3), E4M3)) and torch.equal(s, torch.ones(1, 1))
    q, s = fp8_quant_rows(x * 3.7, None)                  # dynamic: absmax / 448 per row
    xv, xs = FL.fp8_act_values(x * 3.7, None)
    assert torch.equal(q, encode(xv, E4M3)) and torch.equal(s, xs)


@pytest.mark.parametrize("spec", ["fp8:channel", "fp8:tensor", "fp8:g32", "fp8:b64"])
@pytest.mark.parametrize("static", [False, True])
def test_fp8_gemm_vs_reference_and_float64(spec, static):
    torch.manual_seed(len(spec) + static)
    M, N, K = 5, 40, 96                  # b64: the last K block is 32 wide, the last N block 8
    x, w, bias = torch.randn(M, K) * 2, torch.randn(N, K), torch.randn(N)
    qw = formats.QuantizedWeight.from_float(w, spec)
    sc, g = FL.fp8_kernel_scales(qw.scale, qw.spec, N, K)
    xs = torch.full((1, 1), 0.02) if static else None
    args = (x, qw.codes(), sc, xs, bias, g)
    yt, yr = ops.linear_fp8(*args, "triton"), ops.linear_fp8(*args, "reference")
    assert rel(yt, yr) < 1e-6                             # fp32 sums vs exact sums
    sx = xs if static else x.abs().amax(-1, keepdim=True) / torch.full((M, 1), 448.0)
    xv = (x / sx).clamp(-448, 448).to(torch.float8_e4m3fn).double()
    wv = qw.codes().view(torch.float8_e4m3fn).double() * sc.double().repeat_interleave(
        g or K, 1)[:, :K]
    assert rel(yt, (xv @ wv.T) * sx.double() + bias.double()) < 1e-6
    a16 = (x.half(), qw.codes(), sc, xs, bias.half(), g)    # the same fp16 x: the same codes
    y16 = ops.linear_fp8(*a16, "triton")
    assert y16.dtype == torch.float16 and rel(y16, ops.linear_fp8(*a16, "reference")) < 1e-3


@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp4"])
@pytest.mark.parametrize("M", [3, 70])
def test_fp4a16_gemm_vs_float64_every_scale_code(fmt, M):
    torch.manual_seed(M)
    N, K = 24, 96
    x, w, bias = torch.randn(M, K), torch.randn(N, K), torch.randn(N)
    qw = formats.QuantizedWeight.from_float(w, fmt)
    scale, block = FL.FP4_WEIGHT_FORMATS[fmt]
    # every finite scale code (E4M3 0..126, E8M0 a window around 2^0 with code 0's 2^-127)
    hi = 127 if fmt == "nvfp4" else 140
    codes = torch.randint(0 if fmt == "nvfp4" else 110, hi, qw.scale.shape, dtype=torch.uint8)
    codes.view(-1)[: hi - (0 if fmt == "nvfp4" else 110)] = torch.arange(
        0 if fmt == "nvfp4" else 110, hi, dtype=torch.uint8)
    if fmt == "mxfp4":
        codes[0, 0] = 0
    args = (qw.packed, codes, qw.global_scale, bias, block, scale)
    tile = FL.fp4_weight_tile(qw.packed, codes, K, block, scale).double()
    g = 1.0 if qw.global_scale is None else qw.global_scale.double()
    exact = (x.double() @ tile.T) / g + bias.double()
    y = ops.linear_fp4a16(x, *args, "triton")
    assert rel(y, exact) < 1e-5
    assert rel(y, ops.linear_fp4a16(x, *args, "reference")) < 1e-5
    y16 = ops.linear_fp4a16(x.half(), qw.packed, qw.scale, qw.global_scale, bias.half(),
                            block, scale, "triton")
    ref = ops.linear_fp4a16(x, qw.packed, qw.scale, qw.global_scale, bias, block, scale,
                            "reference")
    assert y16.dtype == torch.float16 and rel(y16, ref) < 2e-3

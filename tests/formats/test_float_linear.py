"""The float linear kernels' arithmetic (qpass/formats/float_linear.py) against independent
references: fp8 W8A8 against PyTorch's own float8_e4m3fn casts and float64, its accumulation
against exact integer arithmetic; fp4 weight-only against float64 of qpass's dequantized
weights (issue 28 item 6)."""
import pytest
import torch

from qpass import formats
from qpass.formats import float_linear as FL
from qpass.formats.minifloat import E4M3, encode, table


def _torch_fp8(codes: torch.Tensor) -> torch.Tensor:
    """float64 values of E4M3 codes by PyTorch's own float8_e4m3fn (not qpass's decoder)."""
    return codes.view(torch.float8_e4m3fn).to(torch.float64)


@pytest.mark.parametrize("spec", ["fp8:channel", "fp8:tensor", "fp8:g32", "fp8:b32"])
@pytest.mark.parametrize("static", [False, True])
def test_fp8_linear_against_torch_float8_and_float64(spec, static):
    torch.manual_seed(3)
    M, N, K = 6, 40, 96            # 40 rows: b32 blocks have a short last row block
    x, w, bias = torch.randn(M, K) * 2, torch.randn(N, K), torch.randn(N)
    x[0, 5] = 30.0                 # an outlier row
    qw = formats.QuantizedWeight.from_float(w, spec)
    scales, group = FL.fp8_kernel_scales(qw.scale, qw.spec, N, K)
    x_scale = torch.full((1, 1), 0.07) if static else None
    y = FL.fp8_linear(x, qw.codes(), scales, x_scale, bias, group)
    # independent: torch's RTNE cast of x / s (per token s = absmax / 448 in float32)
    sx = x_scale if static else x.abs().amax(-1, keepdim=True) / torch.full((M, 1), 448.0)
    xv = (x / sx).clamp(-448, 448).to(torch.float8_e4m3fn).to(torch.float64)
    wv = _torch_fp8(qw.codes())
    g = group or K
    exact = sum((xv[:, k:k + g] @ wv[:, k:k + g].T) * scales[:, k // g].double()
                for k in range(0, K, g)) * sx.double() + bias.double()
    assert torch.allclose(y.double(), exact, rtol=1e-6, atol=1e-5)
    # and the weight side is what qpass dequantizes
    ref_w = (wv * scales.double().repeat_interleave(g, 1)[:, :K]).float()
    assert torch.equal(ref_w, qw.dequantize(torch.float32))


def test_fp8_products_are_summed_exactly():
    """Sums of E4M3 products over K = 4096 spanning the format's whole range (2^-9 .. 448)
    equal exact integer arithmetic (values · 2^9 are integers) rounded once to float32;
    a float32 matmul of the same values does not."""
    torch.manual_seed(0)
    vals = table(E4M3)[torch.isfinite(table(E4M3))]
    M, N, K = 4, 8, 4096
    xc = encode(vals[torch.randint(0, len(vals), (M, K))], E4M3)
    wc = encode(vals[torch.randint(0, len(vals), (N, K))], E4M3)
    ones = torch.ones(N, 1)
    y = FL.fp8_linear(_torch_fp8(xc).float(), wc, ones, torch.ones(1, 1), None, 0)
    xi = (_torch_fp8(xc) * 512).to(torch.int64)
    wi = (_torch_fp8(wc) * 512).to(torch.int64)
    exact = [[sum(int(a) * int(b) for a, b in zip(xi[m].tolist(), wi[n].tolist()))
              for n in range(N)] for m in range(M)]
    want = torch.tensor([[float(v) / 2 ** 18 for v in row] for row in exact]).float()
    assert torch.equal(y, want)
    fp32 = _torch_fp8(xc).float() @ _torch_fp8(wc).float().T
    assert not torch.equal(fp32, want)       # the test can tell exact sums from fp32 ones


@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp4"])
def test_fp4_weight_linear_against_float64(fmt):
    torch.manual_seed(1)
    M, N, K = 5, 24, 64
    x, w, bias = torch.randn(M, K), torch.randn(N, K), torch.randn(N)
    qw = formats.QuantizedWeight.from_float(w, fmt)
    scale, block = FL.FP4_WEIGHT_FORMATS[fmt]
    y = FL.fp4_weight_linear(x, qw.packed, qw.scale, qw.global_scale, bias, block, scale)
    exact = torch.nn.functional.linear(x.double(), qw.dequantize(torch.float64), bias.double())
    bound = (x.double().abs() @ qw.dequantize(torch.float64).abs().T) * 2 ** -22
    assert ((y.double() - exact).abs() <= bound + 1e-6).all()
    # the tile is exactly decode(e2m1) · decode(scale): equal to qpass's weight times G
    tile = FL.fp4_weight_tile(qw.packed, qw.scale, K, block, scale)
    g = 1.0 if qw.global_scale is None else qw.global_scale.double()
    assert torch.allclose(tile.double() / g, qw.dequantize(torch.float64), rtol=2 ** -23, atol=0)
    if fmt == "mxfp4":          # powers of two: the same matrix as the simulation's
        assert torch.equal(tile, qw.dequantize(torch.float32))


@pytest.mark.parametrize("w, a, static, ok", [
    ("fp8:channel", "fp8:token:dyn", False, True),
    ("fp8:b128", "fp8:token:dyn", False, True),
    ("fp8:channel", "fp8:tensor", True, True),
    ("fp8:channel", "fp8:tensor", False, False),          # not calibrated yet
    ("fp8:channel", "fp8:token:dyn:clip0.9", False, False),
    ("fp8:channel", "fp8:tensor:dyn", False, False),
    ("nvfp4", "nvfp4:token:dyn", False, False),
    ("fp8:channel", None, False, False),
])
def test_which_fp8_linears_the_kernels_run(w, a, static, ok):
    from qpass.specs import QuantSpec
    spec = lambda s: None if s is None else QuantSpec.parse(s)  # noqa: E731
    assert (FL.fp8_w8a8_why_not(spec(w), spec(a), static) is None) == ok

"""The repacked W4A16 kernel (backends/triton/gemm_w4a16_mma.py) under TRITON_INTERPRET=1, run
by test_triton_interpret.py in a subprocess. fp32 within 1e-5 of float64, fp16 within fp16
tolerance; both regimes (small M: split-K, large M); K not a multiple of the 128-row tile."""
import pytest
import torch

from interpreter_cases import rel, require_interpreter  # noqa: E402,F401

require_interpreter()

import qpass  # noqa: E402
import qpass.backends.op_schemas  # noqa: E402,F401
from qpass import formats  # noqa: E402
from qpass.backends.triton import gemm_w4a16_mma, w4_layout  # noqa: E402

ops = torch.ops.qpass


# (spec, K): group sizes 32/64/128 and per channel, sym and asym; 160/192/96 are not multiples
# of the tile, so the padded tail is exercised
CASES = [("int4:g32:sym", 160), ("int4:g64:asym", 192), ("int4:g128:sym", 256),
         ("int4:g128:asym", 128), ("int4:channel", 96), ("int4:channel:asym", 256)]


@pytest.mark.parametrize("spec,K", CASES)
@pytest.mark.parametrize("M", [5, 40])
def test_repacked_w4a16_vs_float64_and_reference(spec, K, M):
    torch.manual_seed(K + M)
    N = 40                                              # not a multiple of BLOCK_N
    x, w, bias = torch.randn(M, K), torch.randn(N, K), torch.randn(N)
    qw = formats.QuantizedWeight.from_float(w, spec)
    gs = qw.spec.group_size or K
    scales = qw.scale.expand(N, -1).contiguous()
    zeros = None if qw.zero is None else qw.zero.expand(N, -1).contiguous()
    exact = torch.nn.functional.linear(x.double(), qw.dequantize(torch.float64), bias.double())
    before = w4_layout.repack_count()
    y32 = ops.linear_w4a16(x, qw.packed, scales, zeros, 4, gs, bias, "triton")
    assert w4_layout.repack_count() == before + 1       # the repacked kernel ran
    assert y32.shape == (M, N) and rel(y32, exact) < 1e-5
    ref = ops.linear_w4a16(x, qw.packed, scales, zeros, 4, gs, bias, "reference")
    assert rel(y32, ref) < 1e-5
    y16 = ops.linear_w4a16(x.half(), qw.packed, scales, zeros, 4, gs, bias, "triton")
    assert w4_layout.repack_count() == before + 1       # same weight: no second repack
    assert y16.dtype == torch.float16 and rel(y16, exact) < 2e-3


def test_regime_follows_m():
    assert [gemm_w4a16_mma.regime(m) for m in (1, 16, 32, 33, 512)] == \
        ["small", "small", "small", "large", "large"]


def test_strided_rows_and_batched_input():
    torch.manual_seed(3)
    qw = formats.QuantizedWeight.from_float(torch.randn(24, 128), "int4:g64:sym")
    scales = qw.scale.contiguous()
    x = torch.randn(2, 3, 256)[..., :128]               # row stride 256, unit column stride
    y = ops.linear_w4a16(x, qw.packed, scales, None, 4, 64, None, "triton")
    exact = x.double() @ qw.dequantize(torch.float64).t()
    assert y.shape == (2, 3, 24) and rel(y, exact) < 1e-5


def test_load_compiled_repacks_once_at_bind_not_per_call(tmp_path):
    from qpass import passes as P
    from qpass.models import Denoiser, init_weights, tiny_llada
    m = init_weights(Denoiser(tiny_llada()), seed=5).eval()
    twin = qpass.Pipeline([P.RTN("int4:g32:sym")]).run(m, progress=False)
    qpass.Pipeline([P.RTN("int4:g32:sym"), P.Lower()]).run(m, progress=False).save(tmp_path / "c")
    before = w4_layout.repack_count()
    c = qpass.load_compiled(tmp_path / "c", device="cpu")
    w4 = [r for r in c.kernels if r["op"] == "linear_w4a16"]
    assert w4 and all(r["backend"] == "triton" and "repacked" in r["prepared"] for r in w4)
    assert w4_layout.repack_count() == before + len(w4)
    x = torch.randint(0, 90, (1, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want = c(x), twin(x)
        c(x)
    assert w4_layout.repack_count() == before + len(w4)  # forwards reuse the bound layout
    assert rel(got, want) < 1e-4

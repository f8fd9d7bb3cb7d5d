"""The reference backend against independent math: int64 matmuls, qpass.formats, float64."""
import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qpass.backends.op_schemas  # noqa: F401
from qpass import formats
from qpass.formats import integer as I

ops = torch.ops.qpass


def _int8(shape, gen, extreme=False):
    if extreme:   # worst case for fp32 accumulation: every product is +-127*127 or 128*127
        return torch.where(torch.rand(shape, generator=gen) < 0.5, -128, 127).to(torch.int8)
    return torch.randint(-128, 128, shape, generator=gen, dtype=torch.int8)


@settings(max_examples=20, deadline=None)
@given(M=st.integers(1, 6), N=st.integers(1, 6), K=st.integers(1, 3000), seed=st.integers(0, 99),
       extreme=st.booleans())
def test_int_matmul_is_exact_int64(M, N, K, seed, extreme):
    g = torch.Generator().manual_seed(seed)
    a, b = _int8((M, K), g, extreme), _int8((N, K), g, extreme)
    want = a.long() @ b.long().T
    assert torch.equal(I.int_matmul(a, b).long(), want)


def test_int_matmul_exact_where_plain_fp32_is_not():
    # K = 4096 products of 127*127 sum to 66 060 288 > 2^24: one fp32 matmul rounds it
    a = torch.full((1, 4096), 127, dtype=torch.int8)
    b = torch.full((1, 4096), 127, dtype=torch.int8)
    b[0, ::3] = -128
    want = int((a.long() @ b.long().T).item())
    assert int(I.int_matmul(a, b).item()) == want


@settings(max_examples=25, deadline=None)
@given(bits=st.integers(1, 8), N=st.integers(1, 4), K=st.integers(1, 100), seed=st.integers(0, 99))
def test_unpack_matches_formats(bits, N, K, seed):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1 << bits, (N, K), generator=g).to(torch.uint8)
    packed = formats.pack(codes, bits)
    assert torch.equal(I.unpack_codes(packed, bits, K), codes)


def test_dequant_matches_formats_bit_for_bit():
    torch.manual_seed(0)
    w = torch.randn(24, 256)
    for spec in ("int4:g64:sym", "int3:g128:asym", "int4:channel", "int8:tensor", "int2:g32:asym"):
        qw = formats.QuantizedWeight.from_float(w, spec)
        s = qw.scale.expand(24, -1) if qw.scale.shape[0] == 1 else qw.scale
        got = I.dequant_weight(qw.packed, s, qw.zero, qw.spec.bits, qw.spec.group_size or 256, 256)
        assert torch.equal(got, qw.dequantize()), spec


def _epilogue_f64_check(x, codes_w, sw, bias, act_bits, group):
    """Independent: int64 accumulation per group, the documented fp32 epilogue."""
    xq, xs = formats.quantize_per_token(x, act_bits)
    K = x.shape[-1]
    G = sw.shape[1]
    facc = None
    for i in range(G):
        sl = slice(i * (K // G), (i + 1) * (K // G))
        acc = (xq[:, sl].long() @ codes_w[:, sl].long().T).to(torch.float32)
        part = acc * sw[:, i]
        facc = part if facc is None else facc + part
    return facc * xs + bias


def test_integer_linears_bit_exact():
    torch.manual_seed(1)
    x, w, bias = torch.randn(9, 1536), torch.randn(40, 1536), torch.randn(40)
    q8 = formats.QuantizedWeight.from_float(w, "int8:channel")
    w8 = formats.to_signed(q8.codes(), 8)
    assert torch.equal(ops.linear_w8a8(x, w8, q8.scale, bias, "reference"),
                       _epilogue_f64_check(x, w8, q8.scale, bias, 8, 0))
    for spec, gs in (("int4:channel", 0), ("int4:g128:sym", 128)):
        q4 = formats.QuantizedWeight.from_float(w, spec)
        w4 = formats.to_signed(q4.codes(), 4)
        for op, abits in ((ops.linear_w4a8, 8), (ops.linear_w4a4, 4)):
            got = op(x, q4.packed, q4.scale, bias, gs, "reference")
            assert torch.equal(got, _epilogue_f64_check(x, w4, q4.scale, bias, abits, gs)), spec


def test_w4a16_close_to_float64():
    torch.manual_seed(2)
    x, w = torch.randn(5, 7, 256), torch.randn(48, 256)
    qw = formats.QuantizedWeight.from_float(w, "int3:g64:asym")
    y = ops.linear_w4a16(x, qw.packed, qw.scale, qw.zero, 3, 64, None, "reference")
    ref = x.double() @ qw.dequantize(torch.float64).T
    assert y.shape == (5, 7, 48)
    assert ((y.double() - ref).norm() / ref.norm()) < 1e-6


def _attention_f64(q, k, v, key_mask, causal):
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1).double(), v.repeat_interleave(rep, 1).double()
    s = q.double() @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    L = q.shape[2]
    allowed = torch.ones(L, L, dtype=torch.bool)
    if causal:
        allowed = allowed.tril()
    allowed = allowed & key_mask[:, None, None, :]
    p = torch.softmax(s.masked_fill(~allowed, float("-inf")), -1).nan_to_num(0.0)
    return p @ v   # a query row with no visible key gives zeros


def test_attention_gqa_mask_causal_vs_float64():
    torch.manual_seed(3)
    q, k, v = torch.randn(2, 4, 10, 16), torch.randn(2, 2, 10, 16), torch.randn(2, 2, 10, 16)
    km = torch.ones(2, 10, dtype=torch.bool)
    km[0, :3] = False
    for causal in (False, True):
        ref = _attention_f64(q, k, v, km, causal)
        got = ops.attention(q, k, v, km, causal, False, "reference")
        assert ((got.double() - ref).norm() / ref.norm()) < 1e-5
        got8 = ops.attention(q, k, v, km, causal, True, "reference")
        assert ((got8.double() - ref).norm() / ref.norm()) < 3e-2


def test_quant_per_token_with_hadamard_is_transform_then_quant():
    from qpass import hadamard
    x = torch.randn(6, 64)
    s = hadamard.random_signs(64, 0)
    q, sc = ops.quant_per_token(x, 4, True, s, "reference")
    q2, sc2 = formats.quantize_per_token(hadamard.transform(x, signs=s), 4)
    assert torch.equal(q, q2) and torch.equal(sc, sc2)
    assert q.abs().max() <= 8

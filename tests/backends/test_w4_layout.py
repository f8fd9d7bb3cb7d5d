"""The Triton backend's private int4 layout (backends/triton/w4_layout.py): repack -> unpack
is the identity on codes, the layout puts each code where the kernel reads it, and the
repack happens once per weight tensor. Pure torch: no Triton needed."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qpass import formats
from qpass.errors import BackendError
from qpass.formats import integer

from backends.triton import w4_layout


@settings(max_examples=40, deadline=None)
@given(N=st.integers(1, 40), K32=st.integers(1, 12), gs_pow=st.integers(5, 7),
       per_channel=st.booleans(), asym=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_repack_then_unpack_is_the_identity(N, K32, gs_pow, per_channel, asym, seed):
    gs = 1 << gs_pow
    K = K32 * 32 if per_channel else max(1, K32 // (gs // 32)) * gs
    torch.manual_seed(seed)
    spec = f"int4:channel{':asym' if asym else ''}" if per_channel else \
        f"int4:g{gs}:{'asym' if asym else 'sym'}"
    qw = formats.QuantizedWeight.from_float(torch.randn(N, K), spec)
    scales = qw.scale.expand(N, -1).contiguous()
    zeros = None if qw.zero is None else qw.zero.expand(N, -1).contiguous()
    r = w4_layout.repack(qw.packed, scales, zeros, K)
    codes = integer.unpack_codes(qw.packed, 4, K)
    assert torch.equal(w4_layout.unpack_codes(r.packed, K), codes)
    # back to the canonical stream, bit for bit
    assert torch.equal(formats.pack(w4_layout.unpack_codes(r.packed, K).to(torch.uint8), 4), qw.packed)
    assert r.packed.shape == (-(-K // w4_layout.TILE_K) * w4_layout.TILE_K // 8, N)
    assert torch.equal(r.scales, scales.t()) and r.group_size == (K if per_channel else gs)
    assert (r.zeros is None) == (zeros is None)
    if zeros is not None:
        assert torch.equal(r.zeros, zeros.t())


def test_each_code_sits_where_the_kernel_reads_it():
    # brute force over every (n, k): word (t·S + r, n), nibble j holds row t·T + j·S + r
    N, K, T = 3, 256, w4_layout.TILE_K
    S = T // 8
    codes = torch.randint(0, 16, (N, K), dtype=torch.int32)
    packed = w4_layout.repack_codes(codes)
    for n in range(N):
        for k in range(K):
            t, rem = divmod(k, T)
            j, r = divmod(rem, S)
            word = int(packed[t * S + r, n]) & 0xFFFFFFFF
            assert (word >> (4 * j)) & 0xF == int(codes[n, k])


def test_repacked_once_per_tensor_and_again_after_a_change():
    qw = formats.QuantizedWeight.from_float(torch.randn(8, 128), "int4:g32:sym")
    qweight, scales = qw.packed.clone(), qw.scale.contiguous()
    before = w4_layout.repack_count()
    r1 = w4_layout.repacked(qweight, scales, None, 128)
    assert w4_layout.repacked(qweight, scales, None, 128) is r1
    assert w4_layout.repack_count() == before + 1
    scales.mul_(2)                                  # in-place change: stale layout
    r2 = w4_layout.repacked(qweight, scales, None, 128)
    assert r2 is not r1 and torch.equal(r2.scales, scales.t())
    assert w4_layout.repack_count() == before + 2


def test_bad_tile_is_a_clear_error():
    with pytest.raises(BackendError, match="multiple of 128"):
        w4_layout.repack_codes(torch.zeros(2, 64, dtype=torch.int32), tile_k=64)

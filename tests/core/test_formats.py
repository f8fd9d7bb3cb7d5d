"""formats: RTN codes against an independent float64 reference, packing, QuantizedWeight."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qpass import formats as F
from qpass.errors import CheckpointError, SpecError
from qpass.specs import QuantSpec

TINY = float(np.finfo(np.float32).tiny)


# ----- independent reference (plain numpy, one group at a time) -------------------------------
def ref_quantize(w, bits, symmetric, group, grid="full", div=np.float32):
    """Codes u, scales, zeros, dequantized weights of w (N, K) per docs/FORMATS.md, in float64
    with the scale rounded to float32 storage. np.rint rounds half to even, like torch.round.
    Symmetric step: 2·absmax/(2^b − 1) (full grid) or absmax/(2^(b−1) − 1) (restricted).
    w/s is an IEEE division in `div` (float32 for float32 weights, as qpass computes it): on
    the full grid ±absmax/s is a .5 tie by design, which only the same division resolves alike."""
    w = np.asarray(w, dtype=np.float64)
    N, K = w.shape
    gs = K if group is None else group
    G = K // gs
    L = 2 ** bits - 1
    u = np.zeros((N, K), np.int64)
    s_out = np.zeros((N, G), np.float32)
    z_out = np.zeros((N, G), np.int64)
    deq = np.zeros((N, K), np.float32)
    for n in range(N):
        for gi in range(G):
            seg = w[n, gi * gs:(gi + 1) * gs]
            if symmetric:
                amax = np.abs(seg).max()
                s = np.float32(2 * amax / L if grid == "full" else amax / (2 ** (bits - 1) - 1))
                s = max(float(s), TINY)
                z = 2 ** (bits - 1)
                q = np.clip(np.rint(seg.astype(div) / div(s)), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
                codes = q + z
            else:
                lo, hi = min(seg.min(), 0.0), max(seg.max(), 0.0)
                s = max(float(np.float32((hi - lo) / L)), TINY)
                z = int(np.clip(np.rint(-lo / s), 0, L))
                codes = np.clip(np.rint(seg.astype(div) / div(s)) + z, 0, L)
            u[n, gi * gs:(gi + 1) * gs] = codes
            s_out[n, gi], z_out[n, gi] = s, z
            deq[n, gi * gs:(gi + 1) * gs] = ((codes - z) * s).astype(np.float32)
    return u, s_out, z_out, deq


def remove_ties(w, bits, symmetric, group, grid="full"):
    """Zero the entries whose w/s is within 1e-3 of a .5 tie (float32 vs float64 division could
    round them differently). Group extremes are kept, so scales and zeros do not change."""
    w = w.copy()
    N, K = w.shape
    gs = K if group is None else group
    _, s, _, _ = ref_quantize(w, bits, symmetric, group, grid)
    t = w.astype(np.float64) / np.repeat(s.astype(np.float64), gs, axis=1)
    frac = np.abs(t - np.floor(t) - 0.5)
    seg = w.reshape(N, K // gs, gs)
    extreme = (seg == seg.max(-1, keepdims=True)) | (seg == seg.min(-1, keepdims=True))
    w[(frac < 1e-3) & ~extreme.reshape(N, K)] = 0.0
    return w


def weight(N, K, seed):
    g = np.random.default_rng(seed)
    w = g.standard_normal((N, K)).astype(np.float32) * g.uniform(0.01, 2.0, (N, 1)).astype(np.float32)
    w[0, 3] *= 20.0                 # an outlier, as real weights have
    w[1, :] = np.abs(w[1, :])       # an all-positive row: asym min is clamped to 0
    return w


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("symmetric, grid", [(True, "full"), (True, "restricted"), (False, "full")])
@pytest.mark.parametrize("group", [None, 32, 64, 128])
def test_rtn_matches_float64_reference(bits, symmetric, grid, group):
    gran = f"g{group}" if group else "channel"
    spec = QuantSpec.parse(f"int{bits}:{gran}:{'sym' if symmetric else 'asym'}"
                           + (":restricted" if grid == "restricted" else ""))
    w = remove_ties(weight(8, 256, seed=bits * 10 + (group or 0)), bits, symmetric, group, grid)
    u_ref, s_ref, z_ref, deq_ref = ref_quantize(w, bits, symmetric, group, grid)

    scale, zero = F.compute_qparams(torch.from_numpy(w), spec)
    assert scale.dtype == torch.float32 and zero.dtype == torch.int32
    assert tuple(scale.shape) == (8, 256 // group if group else 1) == tuple(zero.shape)
    np.testing.assert_array_equal(scale.numpy(), s_ref)
    np.testing.assert_array_equal(zero.numpy(), z_ref)
    codes = F.quantize(torch.from_numpy(w), spec, scale, zero)
    assert codes.dtype == torch.uint8
    np.testing.assert_array_equal(codes.numpy().astype(np.int64), u_ref)
    deq = F.dequantize(codes, scale, zero, spec)
    np.testing.assert_array_equal(deq.numpy(), deq_ref)
    qw = F.QuantizedWeight.from_float(torch.from_numpy(w), spec)
    np.testing.assert_array_equal(qw.dequantize().numpy(), deq_ref)
    np.testing.assert_array_equal(F.fake_quantize(torch.from_numpy(w), spec).numpy(), deq_ref)


@settings(max_examples=80, deadline=None)
@given(bits=st.integers(2, 8), group=st.sampled_from([None, 8, 32]), N=st.integers(1, 6),
       seed=st.integers(0, 2 ** 31 - 1), tail=st.floats(1.0, 6.0))
def test_full_grid_against_float64_definition(bits, group, N, seed, tail):
    """The full-range symmetric grid as the peers define it, computed here without qpass:
    s = fp32(2·absmax/(2^b − 1)) (absmax/scale in float64), q = clamp(rint(w/s)) in
    [−2^(b−1), 2^(b−1) − 1] with IEEE float32 division; every weight within s/2 of its value
    (up to float32 rounding of s); +absmax on the highest code (clipped from 2^(b−1)), −absmax
    on the lowest (or the next, where fp32 rounding of s puts absmax/s just under the tie)."""
    K = 64
    rng = np.random.default_rng(seed)
    w = (rng.standard_t(tail, (N, K)) * rng.uniform(1e-3, 10.0, (N, 1))).astype(np.float32)
    gs = group or K
    spec = QuantSpec.parse(f"int{bits}:{f'g{group}' if group else 'channel'}:sym")
    qw = F.QuantizedWeight.from_float(torch.from_numpy(w), spec)
    seg = w.reshape(N, K // gs, gs).astype(np.float64)
    amax = np.abs(seg).max(-1)
    s_ref = np.maximum((2.0 * amax / (2 ** bits - 1)).astype(np.float32), np.float32(TINY))
    np.testing.assert_array_equal(qw.scale.numpy(), s_ref)
    s32 = np.repeat(s_ref, gs, axis=1)
    q_ref = np.clip(np.rint(w / s32), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    codes = qw.codes().numpy().astype(np.int64)
    np.testing.assert_array_equal(codes, q_ref + 2 ** (bits - 1))
    deq = qw.dequantize().numpy()
    np.testing.assert_array_equal(deq, (q_ref * s32).astype(np.float32))
    assert (np.abs(w.astype(np.float64) - deq) <= s32.astype(np.float64) * 0.5 * (1 + 1e-4)).all()
    idx = np.abs(seg).argmax(-1)
    ext = np.take_along_axis(seg, idx[..., None], -1)[..., 0]
    ext_codes = np.take_along_axis(codes.reshape(N, K // gs, gs), idx[..., None], -1)[..., 0]
    live = amax > 0
    assert (ext_codes[live & (ext < 0)] <= 1).all()
    assert (ext_codes[live & (ext > 0)] == 2 ** bits - 1).all()


def test_restricted_grid_leaves_the_lowest_code_unused():
    w = torch.randn(16, 128, generator=torch.Generator().manual_seed(3))
    full = F.QuantizedWeight.from_float(w, "int4:g32:sym").codes()
    restricted = F.QuantizedWeight.from_float(w, "int4:g32:sym:restricted").codes()
    assert int(restricted.min()) >= 1 and int(full.min()) == 0 and int(full.max()) == 15


def test_tensor_granularity_and_float64_input():
    w = remove_ties(weight(4, 64, seed=7).reshape(1, 256), 4, True, None).reshape(4, 64)
    u_ref, s_ref, _, deq_ref = ref_quantize(w.reshape(1, 256), 4, True, None, div=np.float64)
    spec = QuantSpec.parse("int4:tensor")
    scale, zero = F.compute_qparams(torch.from_numpy(w).double(), spec)
    assert tuple(scale.shape) == (1, 1) and float(scale) == float(s_ref[0, 0])
    codes = F.quantize(torch.from_numpy(w).double(), spec, scale, zero)
    np.testing.assert_array_equal(codes.numpy().reshape(1, 256), u_ref)
    np.testing.assert_array_equal(F.dequantize(codes, scale, zero, spec).numpy(),
                                  deq_ref.reshape(4, 64))


def test_round_half_to_even():
    spec = QuantSpec.parse("int4:tensor:restricted")
    w = torch.tensor([[7.0, 2.5, 3.5, -2.5, 0.5, -0.5]])   # absmax 7 -> scale exactly 1
    codes = F.quantize(w, spec, *F.compute_qparams(w, spec))
    assert (codes.to(torch.int64) - 8).tolist() == [[7, 2, 4, -2, 0, 0]]
    # full grid: absmax 7.5 -> scale 2·7.5/15 = 1; -absmax lands on -8, +absmax clips to 7
    w = torch.tensor([[7.5, 2.5, 3.5, -2.5, 0.5, -0.5, -7.5]])
    spec = QuantSpec.parse("int4:tensor")
    scale, zero = F.compute_qparams(w, spec)
    assert float(scale) == 1.0
    assert (F.quantize(w, spec, scale, zero).to(torch.int64) - 8).tolist() == [[7, 2, 4, -2, 0, 0, -8]]


@pytest.mark.parametrize("spec", ["int4:g32:sym", "int4:g32:asym", "int8:channel", "int3:tensor:asym"])
def test_all_zero_rows_dequantize_to_exact_zeros(spec):
    w = torch.zeros(3, 64)
    w[1] = torch.linspace(-1, 2, 64)
    qw = F.QuantizedWeight.from_float(w, spec)
    out = qw.dequantize()
    assert torch.isfinite(qw.scale).all()
    assert torch.equal(out[0], torch.zeros(64)) and torch.equal(out[2], torch.zeros(64))


def test_group_not_dividing_k_raises():
    with pytest.raises(SpecError, match="K=100"):
        F.compute_qparams(torch.randn(4, 100), "int4:g128")


@pytest.mark.parametrize("grid", ["full", "restricted"])
def test_per_token_activations(grid):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 48, generator=g) * torch.rand(2, 5, 1, generator=g) * 3
    x[0, 1] = 0.0
    for bits in (4, 8):
        q, s = F.quantize_per_token(x, bits, grid)
        assert q.dtype == torch.int8 and s.dtype == torch.float32 and s.shape == (2, 5, 1)
        x64 = x.double().numpy()
        amax = np.abs(x64).max(-1, keepdims=True)
        step = amax * 2 / (2 ** bits - 1) if grid == "full" else amax / (2 ** (bits - 1) - 1)
        s_ref = np.maximum(step.astype(np.float32), TINY)
        # IEEE float32 division, as for weights: the row extremes are ties on the full grid
        q_ref = np.clip(np.rint(x.numpy() / s_ref), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        np.testing.assert_array_equal(s.numpy(), s_ref)
        np.testing.assert_array_equal(q.numpy(), q_ref)
        # the same codes as the generic path with a token spec, seen as signed
        spec = QuantSpec(bits, granularity="token", grid=grid)
        u = F.quantize(x, spec, *F.compute_qparams(x, spec))
        assert torch.equal(F.to_signed(u, bits), q)
        fq = F.fake_quantize(x, spec)
        assert fq.shape == x.shape and torch.equal(fq, q.float() * s)
        assert torch.equal(fq[0, 1], torch.zeros(48))


def test_to_signed_int8():
    u = torch.tensor([0, 1, 127, 128, 255], dtype=torch.uint8)
    assert F.to_signed(u, 8).tolist() == [-128, -127, -1, 0, 127]
    assert F.to_signed(torch.tensor([0, 8, 15], dtype=torch.uint8), 4).tolist() == [-8, 0, 7]


def test_observers_percentile_and_mse():
    g = torch.Generator().manual_seed(1)
    w = torch.randn(16, 4096, generator=g)
    w[:, 0] = 40.0          # one huge outlier per row: beyond the 99.9th percentile of 4096
    s_mm, _ = F.compute_qparams(w, "int4:channel")
    s_pc, _ = F.compute_qparams(w, "int4:channel:percentile")
    assert (s_pc < s_mm / 4).all()
    for spec in ("int4:g128:asym", "int3:channel"):
        err = lambda sp: float((F.fake_quantize(w, sp) - w).pow(2).sum())  # noqa: E731
        assert err(spec + ":mse") <= err(spec) + 1e-6
    clipped, _ = F.compute_qparams(w, "int4:channel:clip0.5")
    torch.testing.assert_close(clipped, s_mm * 0.5, rtol=1e-6, atol=0)


# ----- packing --------------------------------------------------------------------------------
def ref_pack(codes, bits):
    """Python big-int bit stream: code i of each 32-run at bit bits*i; word j = bits 32j.."""
    N, K = codes.shape
    runs = -(-K // 32)
    out = np.zeros((N, runs * bits), np.int64)
    for n in range(N):
        for r in range(runs):
            stream = 0
            for i in range(32):
                k = r * 32 + i
                if k < K:
                    stream |= int(codes[n, k]) << (bits * i)
            for j in range(bits):
                word = (stream >> (32 * j)) & 0xFFFFFFFF
                out[n, r * bits + j] = word - (1 << 32) if word >= 1 << 31 else word
    return out


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 8), N=st.integers(1, 4), K=st.integers(1, 100),
       seed=st.integers(0, 2 ** 31 - 1))
def test_pack_unpack_identity(bits, N, K, seed):
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 1 << bits, (N, K), generator=gen, dtype=torch.int64).to(torch.uint8)
    packed = F.pack(codes, bits)
    assert packed.dtype == torch.int32 and packed.shape == (N, -(-K // 32) * bits)
    np.testing.assert_array_equal(packed.numpy().astype(np.int64), ref_pack(codes.numpy(), bits))
    assert torch.equal(F.unpack(packed, bits, K), codes)


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_power_of_two_bits_use_shift_layout(bits):
    per = 32 // bits
    codes = torch.randint(0, 1 << bits, (3, 70), generator=torch.Generator().manual_seed(bits),
                          dtype=torch.int64).to(torch.uint8)
    packed = F.pack(codes, bits).numpy().astype(np.int64) & 0xFFFFFFFF
    for n in range(3):
        for k in range(70):
            assert (packed[n, k // per] >> (bits * (k % per))) & ((1 << bits) - 1) == codes[n, k]


def test_int4_hand_example():
    codes = torch.arange(8, dtype=torch.uint8).repeat(5)[None, :40]
    packed = F.pack(codes, 4)
    assert packed.shape == (1, 8)
    assert packed[0, 0].item() == 0x76543210 and packed[0, 4].item() == 0x76543210
    assert packed[0, 5].item() == 0 and packed[0, 1].item() == 0x76543210


def test_int3_hand_example():
    codes = torch.zeros(1, 32, dtype=torch.uint8)
    codes[0, 10], codes[0, 11] = 5, 3        # code 10 straddles words 0 and 1
    assert F.pack(codes, 3).tolist() == [[0x40000000, 0x00000007, 0]]
    codes = torch.zeros(1, 32, dtype=torch.uint8)
    codes[0, 31] = 7                          # last code: top 3 bits of word 2, sign bit set
    assert F.pack(codes, 3).tolist() == [[0, 0, 0xE0000000 - (1 << 32)]]  # int32 view


def test_pack_rejects_bad_input():
    with pytest.raises(SpecError, match="exceeds 3 bits"):
        F.pack(torch.tensor([[8]], dtype=torch.uint8), 3)
    with pytest.raises(SpecError, match="1 to 8"):
        F.pack(torch.zeros(1, 4, dtype=torch.uint8), 9)
    with pytest.raises(SpecError, match="int32"):
        F.unpack(torch.zeros(1, 3, dtype=torch.int32), 4, 32)


# ----- QuantizedWeight ------------------------------------------------------------------------
def test_w4_g128_storage_ratio():
    w = torch.randn(256, 768, generator=torch.Generator().manual_seed(0))
    qw = F.QuantizedWeight.from_float(w, "int4:g128:sym")
    ratio = qw.nbytes() / (w.numel() * 4)
    print(f"\nW4 g128 (256, 768): {qw.nbytes()} bytes = {ratio:.4f} x fp32 ({w.numel() * 4} bytes)")
    assert ratio <= 0.14
    assert qw.packed.shape == (256, 96) and qw.scale.shape == (256, 6) and qw.zero is None


@pytest.mark.parametrize("spec", ["int4:g128:sym", "int3:g64:asym", "int8:channel"])
def test_state_dict_round_trip(spec):
    w = torch.randn(64, 200 if "g" not in spec else 256)
    qw = F.QuantizedWeight.from_float(w, spec)
    sd = qw.state_dict("layers.0.q_proj")
    assert set(sd) == {"layers.0.q_proj.qweight", "layers.0.q_proj.scales"} | (
        {"layers.0.q_proj.zeros"} if "asym" in spec else set())
    again = F.QuantizedWeight.from_state_dict(sd, "layers.0.q_proj.", str(qw.spec), list(qw.shape))
    assert torch.equal(again.dequantize(), qw.dequantize())
    assert torch.equal(again.codes(), F.quantize(w, spec, *F.compute_qparams(w, spec)))


def test_from_state_dict_reports_bad_tensors():
    qw = F.QuantizedWeight.from_float(torch.randn(8, 64), "int4:g32:asym")
    sd = qw.state_dict("m")
    with pytest.raises(CheckpointError, match="m.zeros"):
        F.QuantizedWeight.from_state_dict({k: v for k, v in sd.items() if k != "m.zeros"},
                                          "m", "int4:g32:asym", (8, 64))
    with pytest.raises(CheckpointError, match="m.scales"):
        F.QuantizedWeight.from_state_dict({**sd, "m.scales": sd["m.scales"].half()},
                                          "m", "int4:g32:asym", (8, 64))
    with pytest.raises(SpecError, match="activation"):
        F.QuantizedWeight.from_float(torch.randn(8, 64), "int8:token:dyn")

"""The signed grid (`:signed`, the default of the `q4_0` scheme) against llama.cpp's own Q4_0
quantizer, quantize_row_q4_0_ref (ggml-quants.c), written here from its C code: per 32-weight
block, max = the first element of largest |x| (a strict '<' scan), d = max / −8, id = 1/d,
nibble = min(15, (int8_t)(x·id + 8.5)), all in float32 as the C code rounds. qpass's codes and
scales must be llama.cpp's, and its weight error no larger, on the same weights; a float64
exact-arithmetic version checks that the float32 roundings only ever decide exact ties."""
import numpy as np
import pytest
import torch

from qpass import models
from qpass.errors import SpecError
from qpass.formats import QuantizedWeight, compute_qparams
from qpass.passes.gptq import quantize_weight
from qpass.specs import QuantSpec, Scheme

F32 = np.float32


def llama_q4_0(x) -> tuple[np.ndarray, np.ndarray]:
    """(d float32 (blocks,), nibbles int64 (blocks, 32)) of quantize_row_q4_0_ref on x (…, K)."""
    x = np.asarray(x, F32).reshape(-1, 32)
    d = np.zeros(len(x), F32)
    q = np.zeros(x.shape, np.int64)
    for i, block in enumerate(x):
        amax = mx = F32(0)
        for v in block:
            if amax < abs(v):
                amax, mx = abs(v), v
        d[i] = mx / F32(-8)
        inv = F32(1) / d[i] if d[i] else F32(0)
        for j, v in enumerate(block):
            q[i, j] = min(15, int(F32(F32(v * inv) + F32(8.5))))
    return d, q


def llama_q4_0_fast(x) -> tuple[np.ndarray, np.ndarray]:
    """llama_q4_0 vectorized (the same float32 operations, checked equal on _weights())."""
    x = np.asarray(x, F32).reshape(-1, 32)
    d = (x[np.arange(len(x)), np.abs(x).argmax(axis=1)] / F32(-8)).astype(F32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, F32(1) / d, F32(0)).astype(F32)
    t = ((x * inv[:, None]).astype(F32) + F32(8.5)).astype(F32)
    return d, np.minimum(15, np.trunc(t)).astype(np.int64)


def exact_q4_0(x) -> tuple[np.ndarray, np.ndarray]:
    """The same in exact arithmetic (float64 division, no reciprocal): round half up."""
    x = np.asarray(x, np.float64).reshape(-1, 32)
    d = x[np.arange(len(x)), np.abs(x).argmax(axis=1)] / -8
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.where(d[:, None] != 0, x / d[:, None], 0.0)
    return d, np.minimum(15, np.floor(y + 8.5)).astype(np.int64)


def _special_blocks() -> torch.Tensor:
    """Blocks llama.cpp decides by its own rules: ties x/d = k + ½ (rounded up), +a and −a both
    extreme (the first wins, so d's sign differs), an all-zero block (d = 0)."""
    halves = torch.tensor([(2 * k + 1) / 16 for k in range(-8, 8)], dtype=torch.float32)
    b1 = torch.cat([torch.tensor([1.0]), halves, halves[:15]])          # +1 first: d < 0
    b2 = torch.cat([torch.tensor([-1.0]), halves, halves[:14], torch.tensor([1.0])])
    b3 = torch.cat([torch.tensor([1.0]), halves, halves[:14], torch.tensor([-1.0])])
    return torch.stack([b1, b2, b3, torch.zeros(32)]).reshape(2, 64)


def _weights() -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(64, 256, generator=gen) * torch.rand(64, 1, generator=gen)
    w[:8] = w[:8].half().float()              # what llama-quantize reads from an F16 file
    w[8:10, :64] = _special_blocks()
    return w


def test_signed_grid_spec():
    s = QuantSpec.parse("int4:g32:sym:signed:f16scale")
    assert s.grid == "signed" and str(s) == "int4:g32:sym:signed:f16scale"
    assert QuantSpec.parse(str(s)) == s and s.sym_divisor == 8.0
    assert Scheme.parse("q4_0").weight == s
    assert Scheme.parse("q4_0:full").weight == QuantSpec.parse("int4:g32:sym:f16scale")
    for bad in ("int4:g32:asym:signed", "int8:token:dyn:signed"):
        with pytest.raises(SpecError):
            QuantSpec.parse(bad)


def test_rtn_codes_and_scales_are_llama_cpps():
    # float32 scales: exactly quantize_row_q4_0's d and nibbles, ties and sign rules included
    w = _weights()
    q = QuantizedWeight.from_float(w, "int4:g32:sym:signed")
    d, nib = llama_q4_0(w.numpy())
    zero_block = d == 0
    np.testing.assert_array_equal(q.codes().numpy().reshape(-1, 32), nib)
    np.testing.assert_array_equal(q.scale.numpy().reshape(-1)[~zero_block], d[~zero_block])
    # the special blocks did exercise every rule
    blocks = w.double().numpy().reshape(-1, 32)
    y = blocks[~zero_block] / d[~zero_block, None]
    assert (y - np.floor(y) == 0.5).sum() >= 40                 # ties
    assert (d < 0).any() and (d > 0).any() and zero_block.sum() == 1
    assert d[8 * 8 + 1] > 0 and d[9 * 8] < 0                  # b2: −1 first; b3: +1 first
    np.testing.assert_array_equal(q.dequantize().numpy().reshape(-1, 32)[zero_block], 0.0)
    # in exact arithmetic every tie rounds up; llama.cpp's float32 reciprocal sends some down,
    # and qpass with it: they differ only on exact ties, at equal error
    _, up = exact_q4_0(w.numpy())
    y_all = blocks / np.where(d == 0, 1, d)[:, None]
    assert ((nib != up) <= (y_all - np.floor(y_all) == 0.5)).all()


def test_q4_0_scheme_equals_llama_quantize_on_f16_weights_and_never_loses():
    w = _weights()
    q = QuantizedWeight.from_float(w, Scheme.parse("q4_0").weight)
    d, nib = llama_q4_0(w.numpy())
    d16 = d.astype(np.float16).astype(np.float64)             # what a GGUF block stores
    codes = q.codes().numpy().reshape(-1, 32).astype(np.int64)
    # fp16-valued weights (an F16 file, as llama-quantize reads it): d = max/−8 is a float16
    # number, so the fp16 scale chosen first changes nothing: the same codes and scales
    f16 = np.zeros(len(d), bool)
    f16[: 8 * 8] = True
    np.testing.assert_array_equal(codes[f16], nib[f16])
    np.testing.assert_array_equal(q.scale.double().numpy().reshape(-1)[f16 & (d != 0)],
                                  d16[f16 & (d != 0)])
    # float32 weights: llama.cpp picks codes with the float32 d and stores fp16(d); qpass
    # picks them with the stored fp16 d, so where they differ its code is the nearer one
    x = w.double().numpy().reshape(-1, 32)
    err_q = np.abs(x - q.dequantize().double().numpy().reshape(-1, 32))
    err_l = np.abs(x - d16[:, None] * (nib - 8))
    assert (err_q <= err_l + 1e-7 * np.abs(d16)[:, None]).all()
    assert (codes != nib).any() and (err_q ** 2).sum() < (err_l ** 2).sum()


def test_vectorized_reference_is_the_loop():
    w = _weights()[:12]
    for a, b in zip(llama_q4_0(w.numpy()), llama_q4_0_fast(w.numpy())):
        np.testing.assert_array_equal(a, b)


def test_tiny_llada_weight_error_equals_llama_and_beats_the_full_grid():
    # every linear of the zoo model: same codes as llama.cpp, and the full grid (what q4_0
    # meant before) has more error on the same weights
    model = models.load("tiny-llada")
    err = {"llama": 0.0, "q4_0": 0.0, "full": 0.0}
    for name, p in model.named_parameters():
        if p.dim() != 2 or name.startswith(("embed", "head")):
            continue
        w = p.detach().float()
        x = w.double().numpy()
        d, nib = llama_q4_0_fast(w.numpy())
        d16 = d.astype(np.float16).astype(np.float64)
        err["llama"] += ((x.reshape(-1, 32) - d16[:, None] * (nib - 8)) ** 2).sum()
        q = QuantizedWeight.from_float(w, "int4:g32:sym:signed:f16scale")
        np.testing.assert_array_equal(q.codes().numpy().reshape(-1, 32), nib, err_msg=name)
        err["q4_0"] += ((x - q.dequantize().double().numpy()) ** 2).sum()
        full = QuantizedWeight.from_float(w, "int4:g32:sym:f16scale")
        err["full"] += ((x - full.dequantize().double().numpy()) ** 2).sum()
    assert err["q4_0"] == err["llama"]
    assert err["full"] > 1.1 * err["llama"]          # measured 1.218x (2026-12-07)


def test_gptq_groups_take_the_signed_grid():
    # GPTQ's per-group parameters come from the same owner: with static groups (the q4_0-gptq
    # preset's act-order) they are RTN's, signs included; GPTQ then lowers the layer error
    gen = torch.Generator().manual_seed(1)
    W = torch.randn(32, 128, generator=gen)
    X = torch.randn(128, 512, generator=gen)
    spec = Scheme.parse("q4_0").weight
    Wq, info = quantize_weight(W, X @ X.T, spec, act_order=True)
    s, _ = compute_qparams(W, spec)
    assert torch.equal(info.qweight.scale, s) and (s < 0).any() and (s > 0).any()
    rtn = QuantizedWeight.from_float(W, spec).dequantize()
    err = lambda Q: float(((W - Q) @ X).pow(2).sum())  # noqa: E731
    assert err(Wq) < err(rtn)


def llama_q8_0(x) -> tuple[np.ndarray, np.ndarray]:
    """(d float32 (blocks,), q int64 (blocks, 32)) of quantize_row_q8_0_ref: d = amax/127,
    q = roundf(x·(1/d)) (half away from zero), in float32 as the C code rounds."""
    x = np.asarray(x, F32).reshape(-1, 32)
    d = (np.abs(x).max(axis=1) / F32(127)).astype(F32)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, F32(1) / d, F32(0)).astype(F32)
    y = (x * inv[:, None]).astype(F32)
    return d, (np.sign(y) * np.floor(np.abs(y) + F32(0.5))).astype(np.int64)


def test_q8_0_scheme_is_llama_cpps_grid_and_never_loses():
    # q8_0 = llama.cpp's Q8_0 scale (absmax/127): the same fp16 block scales as
    # quantize_row_q8_0 on the same weights; codes chosen with the stored fp16 scale, so the
    # error is never larger. The full grid (what q8_0 meant before) loses 8% in 32-blocks.
    w = _weights()[:32].half().float()
    d, q = llama_q8_0(w.numpy())
    x = w.double().numpy().reshape(-1, 32)
    d16 = d.astype(np.float16).astype(np.float64)
    err_l = np.abs(x - d16[:, None] * q)
    ours = QuantizedWeight.from_float(w, Scheme.parse("q8_0").weight)
    assert Scheme.parse("q8_0").weight == QuantSpec.parse("int8:g32:sym:restricted:f16scale")
    live = d != 0                                     # an all-zero block: qpass's floor scale
    np.testing.assert_array_equal(ours.scale.double().numpy().reshape(-1)[live], d16[live])
    err_q = np.abs(x - ours.dequantize().double().numpy().reshape(-1, 32))
    assert (err_q <= err_l + 1e-7 * d16[:, None]).all()
    full = QuantizedWeight.from_float(w, "int8:g32:sym:f16scale").dequantize().double().numpy()
    assert ((full.reshape(-1, 32) - x) ** 2).sum() > 1.05 * (err_l ** 2).sum()

"""llama.cpp's K-quants as qpass grids (q4_k, q6_k; qpass/specs/kquant_spec.py, formats/kquant.py)
and their GGUF blocks (interop/gguf_blocks.py): gguf-py's own dequantization of the bytes qpass
writes equals qpass's weights exactly; pack/unpack are inverse; RTN's weight error is no larger
than llama.cpp's reference quantizer's (quantize_row_q4_K_ref / q6_K_ref, written here from its C
code; checked byte for byte against ggml itself when QPASS_LLAMA_CPP_BIN holds its build); GPTQ
into super-blocks lowers the calibration error below RTN's; exports import back with equal
logits; llama.cpp's fallback for K not a multiple of 256 (q5_0 / q8_0) and its Q4_K_M rule."""
import ctypes
import os
from pathlib import Path

import gguf          # the interop extra: gguf-py, llama.cpp's own Python package
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qpass import models, presets
from qpass.errors import CheckpointError, SpecError
from qpass.formats import QuantizedWeight, kquant
from qpass.interop import export_gguf, read_source
from qpass.interop import gguf_blocks as gb
from qpass.interop.gguf import gguf_name, rope_permutation
from qpass.interop.import_gguf import load_gguf
from qpass.ir.qlinear import QuantLinear
from qpass.passes.gptq import quantize_weight
from qpass.passes._gptq_math import reconstruction_errors
from qpass.specs import QuantSpec, Scheme
from qpass.specs.kquant_spec import use_more_bits

F = np.float32
KIND = {"q4_k": gb.GGML_Q4_K, "q6_k": gb.GGML_Q6_K}


# ----- llama.cpp's reference quantizers (ggml-quants.c), float32 as the C code rounds ------------
def _seq(a):
    """Σ over the last axis in order (the C loops' sums), float32."""
    return np.cumsum(a, axis=-1, dtype=F)[..., -1]


def _ni(x):
    return np.rint(x).astype(np.int64)          # nearest_int: round half to even


def _make_qkx2(x, w, nmax, rmin, rdelta, nstep):
    """make_qkx2_quants over the last axis: (scale, −min, L); a better candidate's min is where
    the later candidates start from, as in C."""
    mn, mx = np.minimum(x.min(-1), F(0)), x.max(-1)
    sum_w, sum_x = _seq(w), _seq(w * x)
    flat = mx == mn
    safe = np.where(flat, F(1), (mx - mn).astype(F))
    iscale = (F(nmax) / safe).astype(F)
    scale = (F(1) / iscale).astype(F)
    L = np.clip(_ni(iscale[..., None] * (x - mn[..., None])), 0, nmax)
    diff = (scale[..., None] * L.astype(F) + mn[..., None] - x).astype(F)
    best = _seq(w * (diff * diff))
    for i in range(nstep + 1):
        safe = np.where(flat, F(1), (mx - mn).astype(F))
        isc = ((F(rmin) + F(rdelta) * F(i) + F(nmax)) / safe).astype(F)
        La = np.clip(_ni(isc[..., None] * (x - mn[..., None])), 0, nmax)
        Lf = La.astype(F)
        sl, sl2, sxl = _seq(w * Lf), _seq((w * Lf) * Lf), _seq((w * Lf) * x)
        D = (sum_w * sl2 - sl * sl).astype(F)
        ok = D > 0
        Ds = np.where(ok, D, F(1))
        ts = ((sum_w * sxl - sum_x * sl) / Ds).astype(F)
        tm = ((sl2 * sum_x - sl * sxl) / Ds).astype(F)
        pos = tm > 0
        ts = np.where(pos, (sxl / np.where(sl2 > 0, sl2, F(1))).astype(F), ts)
        tm = np.where(pos, F(0), tm)
        d2 = (ts[..., None] * Lf + tm[..., None] - x).astype(F)
        cur = _seq(w * (d2 * d2))
        better = ok & (cur < best) & ~flat
        L = np.where(better[..., None], La, L)
        best, scale, mn = (np.where(better, cur, best), np.where(better, ts, scale),
                           np.where(better, tm, mn))
    return np.where(flat, F(0), scale).astype(F), (-mn).astype(F), np.where(flat[..., None], 0, L)


def llama_q4_k(x) -> bytes:
    """quantize_row_q4_K_ref of x (N, K) as GGUF bytes."""
    x = np.asarray(x, F)
    N, K = x.shape
    xs = x.reshape(N, K // 256, 8, 32)
    av = np.sqrt(_seq(xs * xs) / F(32)).astype(F)
    scales, mins, L = _make_qkx2(xs, (av[..., None] + np.abs(xs)).astype(F), 15, -1.0, 0.1, 20)
    ms, mm = np.maximum(scales.max(-1), F(0)), np.maximum(mins.max(-1), F(0))
    inv_s = np.where(ms > 0, F(63) / np.where(ms > 0, ms, F(1)), F(0)).astype(F)
    inv_m = np.where(mm > 0, F(63) / np.where(mm > 0, mm, F(1)), F(0)).astype(F)
    ls = np.minimum(63, _ni(inv_s[..., None] * scales) & 0xFF)
    lm = np.minimum(63, _ni(inv_m[..., None] * mins) & 0xFF)
    d, dmin = (ms / F(63)).astype(np.float16), (mm / F(63)).astype(np.float16)
    dd = (d.astype(F)[..., None] * ls.astype(F)).astype(F)
    dm = (dmin.astype(F)[..., None] * lm.astype(F)).astype(F)
    nz = dd != 0
    l2 = np.clip(_ni((xs + dm[..., None]) / np.where(nz, dd, F(1))[..., None]), 0, 15)
    L = np.where(nz[..., None], l2, L)
    return gb.pack(gb.GGML_Q4_K, gb.Blocks(L.reshape(N, K).astype(np.uint8), d, dmin,
                                           ls.reshape(N, -1).astype(np.uint8),
                                           lm.reshape(N, -1).astype(np.uint8)))


def _make_qx(x, nmax):
    """make_qx_quants(n, nmax, x, L, rmse_type=1, NULL) over the last axis: (scale, L + nmax)."""
    mx = np.take_along_axis(x, np.abs(x).argmax(-1)[..., None], -1)[..., 0]
    zero = np.abs(mx) < F(1e-15)
    safe = np.where(zero, F(1), mx)
    w = (x * x).astype(F)

    def trial(isc):
        lv = np.clip(_ni(isc[..., None] * x), -nmax, nmax - 1)
        lf = lv.astype(F)
        return lv, _seq((w * x) * lf), _seq((w * lf) * lf)
    lv, slx, sl2 = trial((F(-nmax) / safe).astype(F))
    scale = np.where(sl2 != 0, (slx / np.where(sl2 != 0, sl2, F(1))).astype(F), F(0))
    best = (scale * slx).astype(F)
    for i in [i for i in range(-9, 10) if i]:
        li, sx, s2 = trial((-(F(nmax) + F(0.1) * F(i)) / safe).astype(F))
        better = (s2 > 0) & ((sx * sx).astype(F) > (best * s2).astype(F))
        lv = np.where(better[..., None], li, lv)
        scale = np.where(better, (sx / np.where(s2 > 0, s2, F(1))).astype(F), scale)
        best = np.where(better, (scale * sx).astype(F), best)
    return np.where(zero, F(0), scale), np.where(zero[..., None], 0, lv + nmax)


def llama_q6_k(x) -> bytes:
    """quantize_row_q6_K_ref of x (N, K) as GGUF bytes."""
    x = np.asarray(x, F)
    N, K = x.shape
    xs = x.reshape(N, K // 256, 16, 16)
    scales, L = _make_qx(xs, 32)
    ms = np.take_along_axis(scales, np.abs(scales).argmax(-1)[..., None], -1)[..., 0]
    zero = np.abs(ms) < F(1e-15)
    iscale = (F(-128) / np.where(zero, F(1), ms)).astype(F)
    d = (F(1) / iscale).astype(np.float16)
    sc = np.minimum(127, _ni(iscale[..., None] * scales))
    dd = (d.astype(F)[..., None] * sc.astype(F)).astype(F)
    nz = dd != 0
    l2 = np.clip(_ni(xs / np.where(nz, dd, F(1))[..., None]), -32, 31) + 32
    L = np.where(zero[..., None, None], 0, np.where(nz[..., None], l2, L))
    d = np.where(zero, np.float16(0), d)
    sc = np.where(zero[..., None], 0, sc).astype(np.int8)
    return gb.pack(gb.GGML_Q6_K, gb.Blocks(L.reshape(N, K).astype(np.uint8), d, None,
                                           sc.reshape(N, -1)))


LLAMA = {"q4_k": llama_q4_k, "q6_k": llama_q6_k}


def gguf_py(kind: int, raw: bytes, N: int) -> np.ndarray:
    return gguf.quants.dequantize(np.frombuffer(raw, np.uint8).reshape(N, -1),
                                  gguf.GGMLQuantizationType(kind))


def qpass_bytes(qw: QuantizedWeight) -> bytes:
    sup = qw.super_scale.numpy()
    return gb.pack(KIND[qw.spec.format], gb.Blocks(
        qw.codes().numpy(), sup[..., 0].astype(np.float16),
        sup[..., 1].astype(np.float16) if sup.shape[-1] == 2 else None, qw.scale.numpy(),
        None if qw.zero is None else qw.zero.numpy()))


def _weights(seed: int, N: int = 16, K: int = 512) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(N, K, generator=g) * torch.rand(N, 1, generator=g) * 0.1
    w[0, :256] = 0.0                            # an all-zero super-block
    w[1, :32] = -0.25                           # a constant negative sub-block
    w[2, 300] = 3.0                             # an outlier
    return w.half().float()                     # what llama-quantize reads from an F16 file


# ----- specs and schemes ---------------------------------------------------------------------
def test_spec_grammar_and_refusals():
    for text, bits, sub, sym in (("q4_k", 4, 32, False), ("q6_k", 6, 16, True)):
        s = QuantSpec.parse(text)
        assert (s.is_kquant, s.is_float, s.bits, s.group_size, s.symmetric) == \
            (True, False, bits, sub, sym)
        assert str(s) == text and QuantSpec.parse(str(s)) == s
        assert Scheme.parse(text).weight == s
    for bad, words in (("q4_k:g64", "takes no tokens"), ("q6_k:asym", "takes no tokens"),
                       ("q5_k", "must start with")):
        with pytest.raises(SpecError, match=words):
            QuantSpec.parse(bad)
    with pytest.raises(SpecError, match="bits"):
        QuantSpec(bits=5, format="q4_k")
    with pytest.raises(SpecError, match=r"layer 'blocks.0.q_proj'.*K=576.*q5_0"):
        QuantSpec.parse("q4_k").check_shape(576, "blocks.0.q_proj")
    mix = Scheme.parse("q4_k_m")
    assert mix.mix == "q4_k_m" and mix.weight == QuantSpec.parse("q4_k")
    assert Scheme.from_dict(mix.to_dict()) == mix
    for name in ("q4_k-rtn", "q4_k-gptq", "q6_k-rtn", "q4_k_m-rtn", "q4_k_m-gptq"):
        assert name in presets.PRESETS and name in presets.ABOUT


def test_fallback_as_llama_cpp():
    """llama-quantize's tensor_type_fallback: Q4_K -> Q5_0, Q6_K -> Q8_0 where K % 256 != 0,
    F16 where K % 32 != 0; a strict scheme refuses, naming the layer."""
    q4, q6 = Scheme.parse("q4_k"), Scheme.parse("q6_k")
    assert q4.specs_for("x", "linear", 512)[0] == QuantSpec.parse("q4_k")
    w, _, why = q4.specs_for("blocks.0.q_proj", "linear", 576)
    assert w == QuantSpec.parse(Scheme.parse("q5_0").weight) and "q5_0" in why
    assert q6.specs_for("x", "linear", 576)[0] == Scheme.parse("q8_0").weight
    w, _, why = q4.specs_for("x", "linear", 100)
    assert w is None and "high precision" in why
    strict = Scheme("s", "q4_k", strict_groups=True)
    with pytest.raises(SpecError, match="blocks.3.up_proj"):
        strict.specs_for("blocks.3.up_proj", "linear", 576)


def test_q4_k_m_rule(tmp_path):
    # llama.cpp's picks for a 30-layer model (SmolLM2: 14 attn_v and 14 ffn_down tensors more)
    assert [i for i in range(30) if use_more_bits(i, 30)] == \
        [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]
    c = presets.get("q4_k_m-rtn").run(models.load("tiny-llada"), progress=False, verify=False)
    specs = {r.name: r.weight_spec for r in c.report.coverage if r.weight_spec}
    more = sorted(n for n, s in specs.items() if s == "q6_k")
    assert more == ["blocks.2.down_proj", "blocks.2.v_proj", "blocks.5.down_proj",
                    "blocks.5.v_proj", "head"]            # 6 layers: 2 and 5; untied head
    assert set(specs.values()) == {"q4_k", "q6_k"}
    # a tied head is the embedding (llama.cpp: token_embd takes the output's type; qpass keeps
    # it in float), also in a streamed run, which holds one copy of it per stage
    tied = models.load("tiny-llama-random")
    assert tied.config.tie_embeddings
    for kw in ({}, {"out": tmp_path / "streamed"}):
        c = presets.get("q4_k_m-rtn").run(tied, progress=False, verify=False, **kw)
        assert [r.weight_spec for r in c.report.coverage if r.name == "head"] == [None]


# ----- bytes ------------------------------------------------------------------------------------
@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(gb.SIZES)), st.integers(1, 3), st.integers(1, 2),
       st.integers(0, 2 ** 31))
def test_pack_unpack_identity(kind, N, nsup, seed):
    rng = np.random.default_rng(seed)
    K = 256 * nsup
    per, size = gb.SIZES[kind]
    bits = gb.SIMPLE.get(kind, {gb.GGML_Q4_K: 4, gb.GGML_Q6_K: 6}.get(kind))
    codes = rng.integers(0, 1 << bits, (N, K), dtype=np.uint8)
    d = rng.integers(0, 1 << 16, (N, K // per), dtype=np.uint16).view(np.float16)
    b = gb.Blocks(codes, d)
    if kind == gb.GGML_Q4_K:
        b.dmin = rng.integers(0, 1 << 16, (N, K // per), dtype=np.uint16).view(np.float16)
        b.sc = rng.integers(0, 64, (N, K // 32), dtype=np.uint8)
        b.m = rng.integers(0, 64, (N, K // 32), dtype=np.uint8)
    elif kind == gb.GGML_Q6_K:
        b.sc = rng.integers(-128, 128, (N, K // 16), dtype=np.int8)
    raw = gb.pack(kind, b)
    assert len(raw) == N * K // per * size
    back = gb.unpack(kind, np.frombuffer(raw, np.uint8), N, K)
    for f in ("codes", "sc", "m"):
        assert (getattr(b, f) is None) == (getattr(back, f) is None)
        if getattr(b, f) is not None:
            np.testing.assert_array_equal(getattr(back, f), getattr(b, f), err_msg=f)
    for f in ("d", "dmin"):
        if getattr(b, f) is not None:
            np.testing.assert_array_equal(getattr(back, f).view(np.uint16),
                                          getattr(b, f).view(np.uint16), err_msg=f)
    assert gb.pack(kind, back) == raw


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(["q4_k", "q6_k"]), st.integers(1, 4), st.integers(1, 2),
       st.sampled_from([1e-4, 0.02, 1.0, 300.0]), st.integers(0, 2 ** 31))
def test_gguf_py_dequantizes_qpass_bytes_exactly(spec, N, nsup, scale, seed):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(N, 256 * nsup, generator=g) * scale)
    w[0, :32] = 0.0
    if N > 1:
        w[1, 256 * nsup - 16:] = -scale
    qw = QuantizedWeight.from_float(w.half().float(), spec)
    ref = gguf_py(KIND[spec], qpass_bytes(qw), N)
    got = qw.dequantize().numpy()
    assert ref.dtype == np.float32
    np.testing.assert_array_equal(ref, got)
    # and qpass's codes under its own scales are the nearest ones (RTN)
    s, mn = kquant.effective(qw.scale, qw.zero, qw.super_scale, spec)
    assert torch.equal(kquant.kquant_codes(w.half().float(), spec, s, mn), qw.codes())


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(["q4_k", "q6_k"]), st.integers(0, 2 ** 31))
def test_any_stored_scales_dequantize_as_gguf_py(spec, seed):
    """Codes and scales not made by qpass (a foreign file): zero and negative d, sc = 0."""
    rng = np.random.default_rng(seed)
    N, K = 3, 512
    fmt = kquant.kformat(QuantSpec.parse(spec))
    codes = torch.from_numpy(rng.integers(0, 1 << fmt.bits, (N, K), dtype=np.uint8))
    if fmt.with_min:
        sc = torch.from_numpy(rng.integers(0, 64, (N, K // 32), dtype=np.uint8))
        m = torch.from_numpy(rng.integers(0, 64, (N, K // 32), dtype=np.uint8))
    else:
        sc, m = torch.from_numpy(rng.integers(-128, 128, (N, K // 16), dtype=np.int8)), None
    sup = torch.from_numpy(rng.normal(0, 1e-2, (N, K // 256, fmt.super_parts))
                           .astype(np.float16).astype(np.float32))
    sup[0, 0] = 0.0
    qw = QuantizedWeight.from_codes(codes, sc, m, spec, super_scale=sup)
    np.testing.assert_array_equal(gguf_py(KIND[spec], qpass_bytes(qw), N), qw.dequantize().numpy())
    with pytest.raises(SpecError, match="float16"):
        QuantizedWeight.from_codes(codes, sc, m, spec, super_scale=sup + 1e-9)


# ----- round to nearest against llama.cpp's quantizer -------------------------------------------
@pytest.mark.parametrize("spec", ["q4_k", "q6_k"])
def test_rtn_error_at_most_llama_quantize(spec):
    """On F16 weights, per tensor: tiny-llada's first block, Gaussian and heavy-tailed ones."""
    tensors = [p.detach().half().float() for n, p in models.load("tiny-llada").named_parameters()
               if n.startswith("blocks.0.") and n.endswith("_proj.weight")]
    torch.manual_seed(0)
    heavy = torch.distributions.StudentT(3).sample((16, 512))
    tensors += [_weights(1), (_weights(2) * heavy).half().float(), heavy.half().float()]
    for w in tensors:
        qw = QuantizedWeight.from_float(w, spec)
        mine = float(((qw.dequantize() - w) ** 2).sum())
        ref = gguf_py(KIND[spec], LLAMA[spec](w.numpy()), w.shape[0])
        theirs = float(((torch.from_numpy(ref) - w) ** 2).sum())
        assert mine <= theirs, (tuple(w.shape), mine / theirs)


def _ggml():
    d = os.environ.get("QPASS_LLAMA_CPP_BIN")
    lib = Path(d) / "libggml-base.so" if d else None
    return ctypes.CDLL(str(lib)) if lib and lib.exists() else None


@pytest.mark.skipif(_ggml() is None, reason="needs llama.cpp's libggml-base.so in "
                                            "$QPASS_LLAMA_CPP_BIN")
@pytest.mark.parametrize("spec", ["q4_k", "q6_k"])
def test_reference_port_is_ggml(spec):
    lib = _ggml()
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                        ctypes.c_void_p]
    for w in (_weights(3), torch.randn(8, 512).half().float()):
        x = np.ascontiguousarray(w.numpy())
        out = np.zeros(len(LLAMA[spec](x)), np.uint8)
        lib.ggml_quantize_chunk(KIND[spec], x.ctypes.data, out.ctypes.data, 0, x.shape[0],
                                x.shape[1], None)
        assert out.tobytes() == LLAMA[spec](x)


# ----- GPTQ into super-blocks -------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["q4_k", "q6_k"])
def test_gptq_into_superblocks_beats_rtn(spec):
    g = torch.Generator().manual_seed(0)
    K, N, T = 512, 48, 1024
    X = torch.randn(T, K, generator=g) @ (torch.eye(K) + 0.1 * torch.randn(K, K, generator=g))
    X = X * (torch.rand(K, generator=g) * 3)
    H = X.T @ X / T
    W = torch.randn(N, K, generator=g) * 0.05
    rtn = QuantizedWeight.from_float(W, spec).dequantize()
    for act_order in (False, True, "group"):
        Wq, info = quantize_weight(W, H, spec, act_order=act_order)
        packed = info.qweight.dequantize()
        assert (packed - Wq).abs().max() < 1e-6          # the codes GPTQ decided, as stored
        err, err_rtn = reconstruction_errors(W, [packed, rtn], H)
        assert err < 0.75 * err_rtn, (act_order, err / err_rtn)
    # static groups (act-order): every super-block's scales are the scale search's on the
    # original weights (weighted by diag H), fixed before the walk; GPTQ only moves codes
    _, info = quantize_weight(W, H, spec, act_order=True)
    _, parts = kquant.kquant_rtn(W, spec, torch.diagonal(H))
    qw = info.qweight
    assert torch.equal(qw.scale, parts.sc) and torch.equal(qw.super_scale, parts.sup)
    assert qw.zero is None and parts.m is None or torch.equal(qw.zero, parts.m)


def test_gptq_preset_on_calibration():
    """q4_k_m-gptq on tiny-llada: every linear's calibration error below RTN's."""
    from qpass.calibration import CalibrationSet
    model = models.load("tiny-llada")
    calib = CalibrationSet.from_ids(torch.arange(2048) % 250, mask_id=model.config.mask_token_id,
                                    n=4, seq_len=64, seed=0)
    c = presets.get("q4_k_m-gptq").run(model, calib, progress=False, verify=False)
    layers = next(p.metrics["layers"] for p in c.report.passes if p.name == "GPTQ")
    assert len(layers) == 6 * 7 + 1
    assert all(v["gptq_error"] < v["rtn_error"] for v in layers.values()), layers


# ----- export, import ---------------------------------------------------------------------------
def _logits(model, ids):
    out = model(ids)
    return (out.logits if hasattr(out, "logits") else out).detach()


@pytest.mark.parametrize("zoo,preset,types", [
    ("tiny-llada", "q4_k_m-rtn", {"Q4_K", "Q6_K"}),
    ("tiny-llada", "q6_k-rtn", {"Q6_K"}),
    ("tiny-dream", "q4_k-rtn", {"Q5_0"}),        # K = 128, 384: llama.cpp's fallback
    ("tiny-dream", "q6_k-rtn", {"Q8_0"}),
])
def test_export_import_round_trip(tmp_path, zoo, preset, types):
    model = models.load(zoo)
    c = presets.get(preset).run(model, progress=False, verify=False)
    out = export_gguf(read_source(c), tmp_path / "m.gguf")
    r = gguf.GGUFReader(str(out))
    tensors = {t.name: t for t in r.tensors}
    quant = {t.tensor_type.name for t in r.tensors if t.name.startswith("blk.")
             and t.tensor_type.name not in ("F32", "F16")}
    assert quant == types
    cfg = c.config
    heads = {"q_proj": cfg.n_heads, "k_proj": cfg.n_kv_heads}
    permute = cfg.family in ("llada", "llama")
    for name, m in c.gm.named_modules():
        if not isinstance(m, QuantLinear) or m.weight_spec is None:
            continue
        want = m.dequantized_weight(torch.float32)
        role = name.split(".")[-1]
        if permute and role in heads:
            want = want[rope_permutation(want.shape[0], heads[role])]
        t = tensors[gguf_name(name + ".weight")]
        np.testing.assert_array_equal(gguf.quants.dequantize(t.data, t.tensor_type),
                                      want.numpy(), err_msg=name)
    if preset == "q4_k_m-rtn":
        assert tensors["blk.2.attn_v.weight"].tensor_type.name == "Q6_K"
        assert tensors["blk.1.attn_v.weight"].tensor_type.name == "Q4_K"
        assert tensors["output.weight"].tensor_type.name == "Q6_K"
        assert r.fields["general.file_type"].contents() == 15          # MOSTLY_Q4_K_M
    imp = load_gguf(out)
    ids = torch.randint(0, cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    assert torch.equal(_logits(imp, ids), _logits(c, ids))
    # codes kept: the import's linears are the same K-quants (the 32-block fallbacks come back
    # as int<b>:g32 on whichever grid holds their scales: same weights), and export again byte
    # for byte
    def specs(m):
        return {n: (str(q.weight_spec) if q.weight_spec.is_kquant else q.weight_spec.bits)
                for n, q in m.gm.named_modules() if isinstance(q, QuantLinear)}
    assert specs(imp) == specs(c)
    again = gguf.GGUFReader(str(export_gguf(read_source(imp), tmp_path / "again.gguf")))
    for t in again.tensors:
        assert np.array_equal(np.asarray(t.data), np.asarray(tensors[t.name].data)), t.name


def test_checkpoint_save_load_and_tamper(tmp_path):
    import qpass
    from safetensors.torch import load_file, save_file
    c = presets.get("q4_k_m-rtn").run(models.load("tiny-llada"), progress=False, verify=False)
    c.save(tmp_path / "ck")
    back = qpass.load_compiled(tmp_path / "ck")
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(1))
    assert torch.equal(_logits(back, ids), _logits(c, ids))
    f = tmp_path / "ck" / "model.safetensors"
    sd = load_file(f)
    key = next(k for k in sd if k.endswith("super_scales"))
    sd[key] = sd[key] + 1e-9
    save_file(sd, f)
    with pytest.raises(CheckpointError):
        qpass.load_compiled(tmp_path / "ck")


def test_other_exports_refuse_k_quants(tmp_path):
    from qpass.interop import export_compressed_tensors, export_gptq
    c = presets.get("q4_k-rtn").run(models.load("tiny-llada"), progress=False, verify=False)
    for export, fmt in ((export_compressed_tensors, "compressed-tensors"), (export_gptq, "GPTQ")):
        with pytest.raises(CheckpointError, match=f"K-quant.*gguf|{fmt}.*K-quant"):
            export(read_source(c), tmp_path / fmt)
        assert not (tmp_path / fmt).exists()


def test_llama_cpp_k_quant_file_imports(tmp_path):
    """A file whose Q4_K / Q6_K bytes are llama.cpp's reference quantizer's (sc = 0 sub-blocks,
    d = 0 super-blocks allowed) imports with every weight gguf-py's dequantization."""
    from qpass.interop.gguf import gguf_metadata, gguf_tensors
    from qpass.interop.gguf_file import Tensor, write_file
    model = models.load("tiny-llada")
    c = presets.get("q4_k-rtn").run(model, progress=False, verify=False)
    src = read_source(c)
    ts = gguf_tensors(src)
    sd = model.state_dict()
    gen = {gguf_name(n): n for n in sd}
    heads = {"q_proj": model.config.n_heads, "k_proj": model.config.n_kv_heads}
    out = []
    for t in ts:
        g = gen.get(t.name, "")
        if g.endswith("_proj.weight"):
            w = sd[g].float()
            role = g.split(".")[2]
            if role in heads:
                w = w[rope_permutation(w.shape[0], heads[role])]
            w = w.clone()
            w[0, :256] = 0.0
            spec = "q6_k" if role == "v_proj" else "q4_k"
            t = Tensor(t.name, KIND[spec], t.dims, LLAMA[spec](w.numpy()))
        out.append(t)
    path = write_file(tmp_path / "llama.gguf", gguf_metadata(src, out), out)
    imp = load_gguf(path)
    r = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    n = 0
    for name, m in imp.gm.named_modules():
        if isinstance(m, QuantLinear) and m.weight_spec is not None:
            got = m.dequantized_weight(torch.float32)
            role = name.split(".")[-1]
            if role in heads:
                got = got[rope_permutation(got.shape[0], heads[role])]
            t = r[gguf_name(name + ".weight")]
            np.testing.assert_array_equal(gguf.quants.dequantize(t.data, t.tensor_type),
                                          got.numpy(), err_msg=name)
            n += 1
    assert n == 6 * 7


# ----- llama.cpp's own tools, where they are -----------------------------------------------------
def _tool(name: str) -> str | None:
    d = os.environ.get("QPASS_LLAMA_CPP_BIN")
    p = Path(d) / name if d else None
    return str(p) if p and p.exists() else None


@pytest.mark.skipif(_tool("llama-quantize") is None or _tool("llama-diffusion-cli") is None,
                    reason="needs llama.cpp's tools in $QPASS_LLAMA_CPP_BIN")
def test_llama_cpp_tools(tmp_path):
    import subprocess
    from qpass.interop.gguf import export_gguf as export, model_source
    f16 = export(model_source("tiny-llada"), tmp_path / "f16.gguf", gguf_type="f16")
    r = subprocess.run([_tool("llama-quantize"), str(f16), str(tmp_path / "ll.gguf"), "Q4_K_M"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    theirs = {t.name: t for t in gguf.GGUFReader(str(tmp_path / "ll.gguf")).tensors}
    ref = {t.name: t for t in gguf.GGUFReader(str(f16)).tensors}
    c = presets.get("q4_k_m-rtn").run(models.load("tiny-llada", dtype=torch.float16),
                                      progress=False, verify=False)     # llama.cpp's F16 weights
    ours = {t.name: t for t in gguf.GGUFReader(str(export_gguf(read_source(c),
                                                                tmp_path / "q.gguf"))).tensors}
    err = {"ours": 0.0, "theirs": 0.0}
    for name, t in ours.items():
        if not name.startswith("blk.") or t.tensor_type.name == "F32":
            continue
        assert t.tensor_type == theirs[name].tensor_type, name      # the same mix
        w = gguf.quants.dequantize(ref[name].data, ref[name].tensor_type).astype(np.float64)
        for k, x in (("ours", t), ("theirs", theirs[name])):
            err[k] += float(((gguf.quants.dequantize(x.data, x.tensor_type) - w) ** 2).sum())
    assert err["ours"] <= err["theirs"]
    r = subprocess.run([_tool("llama-diffusion-cli"), "-m", str(tmp_path / "q.gguf"), "-p",
                        "ROMEO:", "-c", "256", "-ub", "64", "-b", "64", "--diffusion-steps", "4",
                        "--diffusion-block-length", "32", "-t", "1"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]

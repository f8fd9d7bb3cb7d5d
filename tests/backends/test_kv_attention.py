"""Quantized K/V attention (kv8 / kv4): the integer products are exact (against int64
arithmetic), the error against float attention is small, simulated and lowered graphs agree
bit for bit, and the K/V cache stores codes and scales."""
import math

import pytest
import torch

import qpass
from qpass import passes as P
from qpass.errors import SpecError
from qpass.formats import kv_attention, quantize_kv, quantize_per_token
from qpass.kvcache import KVCache
from qpass.models import Denoiser, init_weights, tiny_dream, tiny_llada
from qpass.sampling import generate_llada


def brute_force(q, kc, ks, vc, vs, key_mask):
    """The formula of qpass.formats.attention with int64 integer products (float ops in the
    same order), GQA by explicit head mapping."""
    B, H, Lq, D = q.shape
    rep = H // kc.shape[1]
    out = torch.zeros_like(q)
    for b in range(B):
        for h in range(H):
            hk = h // rep
            vis = key_mask[b] if key_mask is not None else torch.ones(kc.shape[2], dtype=torch.bool)
            sp = (vs[b, hk, :, 0] * vis).max() / 127.0
            q8, sq = quantize_per_token(q[b, h], 8, "restricted")   # Q: int8 attention grid
            acc = q8.long() @ kc[b, hk].long().T                     # exact in int64
            s = acc.to(torch.float32) * sq * ks[b, hk, :, 0][None, :] * (1.0 / math.sqrt(D))
            s = s.masked_fill(~vis[None, :], float("-inf"))
            e = torch.exp(s - s.amax(dim=-1, keepdim=True))
            l = e.sum(dim=-1, keepdim=True)
            p = torch.round(e * vs[b, hk, :, 0][None, :] / sp).clamp(0, 127)
            o = (p.long() @ vc[b, hk].long()).to(torch.float32)
            out[b, h] = o * (sp / l)
    return out


@pytest.mark.parametrize("bits", [8, 4])
def test_integer_products_are_exact(bits):
    torch.manual_seed(0)
    # 1500 keys: the P·V sum crosses the exact fp32 chunk of 1024 tokens
    q, k, v = torch.randn(1, 4, 6, 32), torch.randn(1, 2, 1500, 32), 3 * torch.randn(1, 2, 1500, 32)
    km = torch.ones(1, 1500, dtype=torch.bool)
    km[0, :7] = False
    kc, ks = quantize_kv(k, bits)
    vc, vs = quantize_kv(v, bits)
    assert kc.dtype == torch.int8 and int(kc.abs().max()) <= 2 ** (bits - 1)
    got = kv_attention(q, kc, ks, vc, vs, km)
    assert torch.equal(got, brute_force(q, kc, ks, vc, vs, km))


@pytest.mark.parametrize("bits,tol", [(8, 2e-2), (4, 2e-1)])
def test_error_against_float_attention(bits, tol):
    torch.manual_seed(1)
    q, k, v = torch.randn(2, 4, 10, 16), torch.randn(2, 4, 40, 16), torch.randn(2, 4, 40, 16)
    exact = qpass.ops.attention(q.double(), k.double(), v.double())
    kc, ks = quantize_kv(k, bits)
    vc, vs = quantize_kv(v, bits)
    err = float((kv_attention(q, kc, ks, vc, vs).double() - exact).norm() / exact.norm())
    assert err < tol
    if bits == 8:
        assert err > 1e-5       # really quantized


def _model(cfg, seed=0):
    return init_weights(Denoiser(cfg), seed=seed).eval()


@pytest.mark.parametrize("cfg", [tiny_llada(), tiny_dream()], ids=["llada", "dream-gqa"])
@pytest.mark.parametrize("scheme", ["w8a8kv8", "w4a4kv4"])
def test_simulated_and_lowered_agree_and_cache_stores_codes(cfg, scheme):
    m = _model(cfg)
    sim = qpass.Pipeline([P.RTN(scheme)]).run(m, progress=False)
    low = qpass.Pipeline([P.RTN(scheme), P.Lower(backend="reference")]).run(m, progress=False)
    assert {r["op"] for r in low.bind_kernels()} >= {"attention_kv"}
    x = torch.randint(0, 90, (2, 14), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(sim(x), low(x))
        for model in (sim, low):
            cache = KVCache()
            with cache.refresh():
                full = model(x)
            with cache.window(5, 14):
                win = model(x[:, 5:])
            # row 0 of a Dream window is its logit shift's filler; the rest are exact rows
            assert torch.allclose(win[:, 1:], full[:, 6:], atol=1e-5, rtol=1e-5)
            kc, ks, vc, vs = cache.layers[0]
            assert kc.dtype == vc.dtype == torch.int8 and ks.shape[-1] == 1
            # codes 1 byte + one fp32 scale per token and head, vs 4 bytes per element
            assert cache.nbytes() == 2 * 2 * 2 * cfg.n_kv_heads * 14 * (cfg.head_dim + 4)


def test_kv_sampler_refresh_every_step_is_uncached():
    m = _model(tiny_llada(), seed=5)
    low = qpass.Pipeline([P.RTN("w8a8kv8"), P.Lower(backend="reference")]).run(m, progress=False)
    prompt = torch.randint(0, 90, (2, 5), generator=torch.Generator().manual_seed(3))
    kw = dict(gen_length=16, steps=8, block_length=8, mask_id=96)
    assert torch.equal(generate_llada(low, prompt, cache="dual", refresh_every=1, **kw),
                       generate_llada(low, prompt, **kw))


def test_kv_spec_errors():
    causal = _model(tiny_llada().replace(causal=True, name="causal"))
    with pytest.raises(SpecError, match="causal"):
        qpass.Pipeline([P.RTN("w8a8kv8")]).run(causal, progress=False)
    with pytest.raises(SpecError, match="kv8/kv4"):
        qpass.Pipeline([P.RTN("w8a8kv3")]).run(_model(tiny_llada()), progress=False)

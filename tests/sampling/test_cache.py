"""K/V cache (qpass.kvcache) and the samplers' cache policies (qpass.sampling.cache).

The cached forward is checked against an independent float64 implementation of Fast-dLLM's
semantics written here from the weights (K/V outside the window taken from the last full
forward, RoPE at absolute positions); the samplers with a refresh every step against the
uncached samplers, on FP, captured, simulated and lowered models."""
import math

import pytest
import torch

import qpass
from qpass import passes as P
from qpass.errors import QpassError
from qpass.kvcache import KVCache
from qpass.models import Denoiser, init_weights, tiny_dream, tiny_llada
from qpass.sampling import StepStats, generate_dream, generate_llada
from qpass.sampling.cache import threshold_commit


def _model(cfg, dtype=torch.float64, seed=0):
    return init_weights(Denoiser(cfg), seed=seed).to(dtype).eval()


# ----- an independent float64 reference of the cached forward -------------------------------
def _rms(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def _rope(x, pos, theta):
    """Rotate-half RoPE written out per (i, i + D/2) pair at absolute positions `pos`."""
    D = x.shape[-1]
    half = D // 2
    freq = theta ** (-torch.arange(half, dtype=torch.float64) * 2 / D)
    ang = pos.double()[:, None] * freq[None, :]
    c, s = ang.cos(), ang.sin()
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


def reference_forward(m, x, window=None, cached=None):
    """(logits of the window rows, per-layer full-length (K, V)) for Denoiser m in float64.
    With `cached`, K/V outside the window are the cached ones (Fast-dLLM's approximation)."""
    cfg = m.config
    B, L = x.shape
    a, b = window or (0, L)
    H, Hk, D = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    pos = torch.arange(a, b)
    h = m.embed.weight.double()[x[:, a:b]]
    kvs = []
    for li, blk in enumerate(m.blocks):
        n = _rms(h, blk.attn_norm.weight.double(), cfg.norm_eps)

        def proj(lin, heads):
            y = n @ lin.weight.double().T + (lin.bias.double() if lin.bias is not None else 0)
            return y.view(B, b - a, heads, D).transpose(1, 2)
        q = _rope(proj(blk.q_proj, H), pos, cfg.rope_theta)
        k = _rope(proj(blk.k_proj, Hk), pos, cfg.rope_theta)
        v = proj(blk.v_proj, Hk)
        if cached is not None:
            K, V = cached[li][0].clone(), cached[li][1].clone()
            K[:, :, a:b], V[:, :, a:b] = k, v
        else:
            K, V = k, v
        kvs.append((K, V))
        rep = H // Hk
        Kr, Vr = K.repeat_interleave(rep, 1), V.repeat_interleave(rep, 1)
        att = torch.softmax(q @ Kr.transpose(-1, -2) / math.sqrt(D), dim=-1) @ Vr
        h = h + att.transpose(1, 2).reshape(B, b - a, H * D) @ blk.o_proj.weight.double().T
        n = _rms(h, blk.mlp_norm.weight.double(), cfg.norm_eps)
        g = torch.nn.functional.silu(n @ blk.gate_proj.weight.double().T)
        h = h + (g * (n @ blk.up_proj.weight.double().T)) @ blk.down_proj.weight.double().T
    logits = _rms(h, m.norm.weight.double(), cfg.norm_eps) @ m.head.weight.double().T
    if cfg.logit_shift:
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
    return logits, kvs


@pytest.mark.parametrize("cfg", [tiny_llada(), tiny_dream()], ids=["llada", "dream-gqa"])
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "captured"])
def test_cached_window_matches_reference(cfg, graph):
    m = _model(cfg)
    run = qpass.capture(m).gm if graph else m
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, cfg.vocab_size - 2, (2, 24), generator=gen)
    cache = KVCache()
    with torch.no_grad(), cache.refresh():
        full = run(x)
    ref_full, kvs = reference_forward(m, x)
    assert torch.allclose(full, ref_full, atol=1e-10, rtol=0)
    # commit new tokens inside the window: the cache still holds the old K/V elsewhere
    x2 = x.clone()
    x2[:, 10:14] = torch.randint(0, cfg.vocab_size - 2, (2, 4), generator=gen)
    for a, b in ((9, 24), (9, 16), (0, 24)):
        with torch.no_grad(), cache.window(a, b):
            got = run(x2[:, a:b])
        want, _ = reference_forward(m, x2, (a, b), kvs)
        assert torch.allclose(got, want, atol=1e-10, rtol=0), (a, b)
    # a window over everything recomputes every K/V: the full forward of the new canvas
    assert torch.allclose(got, reference_forward(m, x2)[0], atol=1e-10, rtol=0)
    # and the stale prefix really is stale (the approximation is not the identity)
    with torch.no_grad(), cache.window(14, 24):
        stale = run(x2[:, 14:])
    assert not torch.allclose(stale, reference_forward(m, x2)[0][:, 14:], atol=1e-6)


def _compiled(model, lowered: bool, scheme="w4a4"):
    passes = [P.FuseNorms(), P.RTN(scheme)] + ([P.Lower(backend="reference")] if lowered else [])
    return qpass.Pipeline(passes).run(model, progress=False)


@pytest.mark.parametrize("lowered", [False, True], ids=["simulated", "lowered"])
def test_cached_window_on_compiled_models(lowered):
    m = _model(tiny_llada(), torch.float32)
    c = _compiled(m, lowered)
    x = torch.randint(0, 90, (2, 20), generator=torch.Generator().manual_seed(1))
    cache = KVCache()
    with torch.no_grad():
        with cache.refresh():
            full = c(x)
        # nothing changed since the refresh: the window rows are the full forward's rows
        with cache.window(8, 20):
            win = c(x[:, 8:])
    assert torch.allclose(win, full[:, 8:], atol=1e-4, rtol=1e-4)
    assert cache.nbytes() == 2 * 2 * (2 * 4 * 20 * 16) * 4     # 2 layers × (K, V), fp32


def _two_calls(q, kv1, kv2):
    """One forward with two attention calls (two 'layers') whose K/V differ."""
    return qpass.ops.attention(q, *kv1), qpass.ops.attention(q, *kv2)


def test_two_attention_calls_in_one_forward_are_keyed_apart():
    """Call order is the key (qpass.kvcache): the i-th call of a window must get the i-th
    call's cached K/V. A cache that handed call 0 layer 1's tensors (or the last ones stored)
    changes both outputs."""
    g = torch.Generator().manual_seed(3)
    B, H, L, D = 1, 2, 12, 8
    q = torch.randn(B, H, L, D, generator=g, dtype=torch.float64)
    kv1 = tuple(torch.randn(B, H, L, D, generator=g, dtype=torch.float64) for _ in range(2))
    kv2 = tuple(10 * torch.randn(B, H, L, D, generator=g, dtype=torch.float64) for _ in range(2))
    cache = KVCache()
    with cache.refresh():
        full1, full2 = _two_calls(q, kv1, kv2)
    lo, hi = 4, 9
    rows = lambda kv: tuple(t[..., lo:hi, :] for t in kv)   # noqa: E731
    with cache.window(lo, hi):
        win1, win2 = _two_calls(q[..., lo:hi, :], rows(kv1), rows(kv2))
    assert torch.allclose(win1, full1[..., lo:hi, :], atol=1e-12, rtol=0)
    assert torch.allclose(win2, full2[..., lo:hi, :], atol=1e-12, rtol=0)
    assert not torch.allclose(full1, full2)
    # a second 'layer' of another shape, called first in the window: refused, not mixed up
    kv3 = tuple(torch.randn(B, 1, L, D, generator=g, dtype=torch.float64) for _ in range(2))
    with cache.refresh():
        _two_calls(q, kv1, kv3)
    with pytest.raises(QpassError, match="another order"):
        with cache.window(lo, hi):
            _two_calls(q[..., lo:hi, :], rows(kv3), rows(kv1))
    # one forward at a time: the cache cannot be entered while it is active
    with pytest.raises(QpassError, match="already active"):
        with cache.refresh(), cache.refresh():
            pass


# ----- samplers -------------------------------------------------------------------------------
KINDS = ("fp", "captured", "simulated", "lowered")


@pytest.fixture(scope="module")
def models():
    fp = _model(tiny_llada(), torch.float32, seed=3)
    return {"fp": fp, "captured": qpass.capture(fp).gm, "simulated": _compiled(fp, False),
            "lowered": _compiled(fp, True)}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("threshold", [None, 0.2])
def test_llada_refresh_every_step_is_the_uncached_sampler(models, kind, cache, threshold):
    model = models[kind]
    prompt = torch.randint(0, 90, (2, 5), generator=torch.Generator().manual_seed(2))
    kw = dict(gen_length=16, steps=8, block_length=8, threshold=threshold, mask_id=96)
    plain, s0 = StepStats(), StepStats()
    want = generate_llada(model, prompt, stats=s0, **kw)
    got = generate_llada(model, prompt, cache=cache, refresh_every=1, stats=plain, **kw)
    assert torch.equal(got, want)
    assert plain.refreshes == plain.nfe == s0.nfe


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_dream_refresh_every_step_is_the_uncached_sampler(cache):
    m = _model(tiny_dream(), torch.float32, seed=4)
    prompt = torch.randint(0, 95, (2, 4), generator=torch.Generator().manual_seed(3))
    for kw in (dict(alg="entropy", block_length=8, steps=8),
               dict(alg="origin", steps=16), dict(threshold=0.1, block_length=4)):
        want = generate_dream(m, prompt, gen_length=16, **kw)
        got = generate_dream(m, prompt, gen_length=16, cache=cache, refresh_every=1, **kw)
        assert torch.equal(got, want), kw


def test_cached_steps_compute_fewer_rows_and_fill_the_canvas(models):
    model = models["lowered"]
    prompt = torch.randint(0, 90, (1, 6), generator=torch.Generator().manual_seed(5))
    kw = dict(gen_length=16, steps=16, block_length=8, mask_id=96)
    rows = {}
    for cache in ("none", "prefix", "dual"):
        st = StepStats()
        out = generate_llada(model, prompt, cache=cache, stats=st, **kw)
        assert not (out == 96).any() and torch.equal(out[:, :6], prompt)
        assert st.nfe == 16 and st.refreshes == (0 if cache == "none" else 2)
        rows[cache] = st.rows
    L = 22
    assert rows["none"] == 16 * L
    # prefix: refresh at each block start, then block + suffix rows (16 then 8)
    assert rows["prefix"] == 2 * L + 7 * 16 + 7 * 8
    assert rows["dual"] == 2 * L + 14 * 8


def test_threshold_commits_at_least_one_per_step(models):
    model = models["fp"]
    prompt = torch.randint(0, 90, (3, 5), generator=torch.Generator().manual_seed(6))
    for threshold in (0.99, 0.5, 0.05):
        st = StepStats()
        out = generate_llada(model, prompt, gen_length=16, block_length=8, threshold=threshold,
                             cache="dual", stats=st, mask_id=96)
        assert not (out == 96).any()
        assert st.to_dict()["min_committed_per_step"] >= 1
        assert 2 <= st.steps <= 16
    # a top-1 probability is at least 1/V (V = 96 proposable ids), so a threshold below it
    # commits the whole block in one step; 0.99 on this near-uniform random model one a step
    lo, hi = StepStats(), StepStats()
    generate_llada(model, prompt, gen_length=16, block_length=8, threshold=1 / 97, stats=lo,
                   mask_id=96)
    generate_llada(model, prompt, gen_length=16, block_length=8, threshold=0.99, stats=hi,
                   mask_id=96)
    assert lo.steps == 2 and lo.committed_per_step == [8, 8] and hi.steps == 16


def test_threshold_commit_rule():
    conf = torch.tensor([[0.95, 0.2, 0.91, 0.5], [0.1, 0.3, 0.2, 0.4], [0.99, 0.98, 0.1, 0.0]],
                        dtype=torch.float64)
    masked = torch.tensor([[True, True, True, True], [True, True, False, False],
                           [False, False, False, False]])
    got = threshold_commit(conf, masked, 0.9)
    want = torch.tensor([[True, False, True, False], [False, True, False, False],
                         [False, False, False, False]])
    assert torch.equal(got, want)


class _NoAttention(torch.nn.Module):
    """A denoiser that never calls a qpass attention op."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(97))

    def forward(self, x, mask=None):
        return self.w.expand(x.shape[0], x.shape[1], 97)


def test_cache_errors_are_clear(models):
    m = models["fp"]
    prompt = torch.tensor([[1, 2, 3]])
    with pytest.raises(QpassError, match="cache must be one of"):
        generate_llada(m, prompt, gen_length=8, steps=8, block_length=8, cache="full")
    with pytest.raises(QpassError, match="threshold must be in"):
        generate_llada(m, prompt, gen_length=8, steps=8, block_length=8, threshold=1.5)
    with pytest.raises(QpassError, match="low_confidence"):
        generate_llada(m, prompt, gen_length=8, block_length=8, threshold=0.9, remasking="random")
    causal = _model(tiny_llada().replace(causal=True, name="causal"), torch.float32)
    with pytest.raises(QpassError, match="causal"):
        generate_llada(causal, prompt, gen_length=8, steps=8, block_length=8, cache="prefix",
                       mask_id=96)
    with pytest.raises(QpassError, match="no qpass attention"):
        generate_llada(_NoAttention(), prompt,
                       gen_length=8, steps=8, block_length=8, cache="prefix", mask_id=96)
    cache = KVCache()
    with pytest.raises(QpassError, match="before any refresh"):
        with cache.window(0, 4):
            pass

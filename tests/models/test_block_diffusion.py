"""Block diffusion (SDAR-style): block-causal attention against an explicit loop, capture is
exact, no position sees a later block, the sampler equals LLaDA's on the full canvas (so its
truncated canvas loses nothing), threshold decoding, passes verified exact, lowered round trip."""
import math

import pytest
import torch

import qpass
from qpass import passes as P
from qpass.calibration import CalibrationSet
from qpass.errors import CheckpointError, QpassError
from qpass.models import Denoiser, ModelConfig, init_weights, tiny_sdar
from qpass.ops import attention
from qpass.sampling import StepStats, generate, generate_block_diffusion, generate_llada

BS = tiny_sdar().attn_block_size


def _model():
    return init_weights(Denoiser(tiny_sdar()), seed=2).eval()


def loop_attention(q, k, v, key_mask, bs):
    """Softmax attention by hand in float64: query i over keys j with j // bs <= i // bs."""
    B, H, L, D = q.shape
    rep = H // k.shape[1]
    out = torch.zeros(B, H, L, D, dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            for i in range(L):
                js = [j for j in range(L) if j // bs <= i // bs and (key_mask is None or key_mask[b, j])]
                s = torch.stack([q[b, h, i].double() @ k[b, h // rep, j].double() for j in js]) / math.sqrt(D)
                p = torch.softmax(s, dim=0)
                out[b, h, i] = sum(p[n] * v[b, h // rep, j].double() for n, j in enumerate(js))
    return out


def test_block_causal_attention_equals_the_loop():
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(2, 4, 10, 8, generator=g), torch.randn(2, 2, 10, 8, generator=g), \
        torch.randn(2, 2, 10, 8, generator=g)
    km = torch.ones(2, 10, dtype=torch.bool)
    km[1, :2] = False
    for mask in (None, km):
        got = attention(q, k, v, mask, False, block_size=3)
        want = loop_attention(q, k, v, mask, 3)
        assert float((got.double() - want).abs().max()) < 1e-5


def test_capture_is_exact_and_no_position_sees_a_later_block():
    m = _model()
    x = torch.randint(0, 90, (2, 12), generator=torch.Generator().manual_seed(1))
    assert torch.equal(qpass.capture(m)(x), m(x))
    y = x.clone()
    y[:, 8:] = 95                                   # change the third block only
    with torch.no_grad():
        assert torch.equal(m(x)[:, :8], m(y)[:, :8])
        assert not torch.equal(m(x)[:, 8:], m(y)[:, 8:])


@pytest.mark.parametrize("prompt_len", [8, 6])
def test_sampler_equals_llada_on_the_full_canvas(prompt_len):
    m = _model()
    prompt = torch.randint(0, 90, (2, prompt_len), generator=torch.Generator().manual_seed(4))
    stats = StepStats()
    ours = generate_block_diffusion(m, prompt, gen_length=8, stats=stats)
    if prompt_len % BS == 0:   # blocks aligned: LLaDA with block_length = BS sees the same
        want = generate_llada(m, prompt, gen_length=8, steps=8, block_length=BS)
        assert torch.equal(ours, want)
    assert stats.nfe == 8 and stats.committed_per_step == [1] * 8
    assert not (ours[:, prompt_len:] == m.config.mask_token_id).any()
    assert torch.equal(generate(m, prompt, gen_length=8), ours)          # auto picks it


def test_threshold_decoding_commits_at_least_one_per_step():
    m = _model()
    prompt = torch.randint(0, 90, (1, 4), generator=torch.Generator().manual_seed(5))
    stats = StepStats()
    out = generate_block_diffusion(m, prompt, gen_length=12, threshold=0.05, stats=stats)
    assert not (out == m.config.mask_token_id).any()
    assert min(stats.committed_per_step) >= 1 and stats.nfe <= 12


def test_threshold_falls_back_to_the_schedule_when_too_few_are_confident():
    # LLaDA2's rule: threshold 1.0 is (almost) never exceeded, so each step commits the
    # schedule's count: 12 tokens in 6 steps = 2 per step
    m = _model()
    stats = StepStats()
    out = generate_block_diffusion(m, torch.tensor([[3, 4, 5, 6]]), gen_length=12, steps=6,
                                   threshold=1.0, stats=stats)
    assert not (out == m.config.mask_token_id).any()
    assert stats.nfe == 6 and stats.committed_per_step == [2] * 6


def test_exact_passes_verified_and_lowered_round_trip(tmp_path):
    m = _model()
    calib = CalibrationSet.from_ids(torch.arange(1024) % 90, mask_id=m.config.mask_token_id,
                                    n=4, seq_len=32)
    c = qpass.Pipeline([P.FuseNorms(), P.Rotate(), P.GPTQ("w4a8"), P.Lower()]).run(
        m, calib, progress=False)
    rel = {p.name: p.verified_rel_change for p in c.report.passes}
    assert rel["FuseNorms"] < 1e-4 and rel["Rotate"] < 1e-4
    lower = next(p for p in c.report.passes if p.name == "Lower")
    assert any("block-causal attention" in n for n in lower.notes)
    c.save(tmp_path / "ck")
    d = qpass.load_compiled(tmp_path / "ck")
    x = torch.randint(0, 90, (1, 12))
    with torch.no_grad():
        assert torch.equal(c(x), d(x))
    out = generate(d, x[:, :4], gen_length=8)
    assert out.shape == (1, 12)


def test_bad_uses_are_one_clear_error():
    m = _model()
    with pytest.raises(QpassError, match="cache"):
        generate(m, torch.tensor([[1, 2, 3, 4]]), gen_length=4, cache="prefix")
    dense = init_weights(Denoiser(tiny_sdar().replace(attn_block_size=0)), seed=0).eval()
    with pytest.raises(QpassError, match="attn_block_size"):
        generate_block_diffusion(dense, torch.tensor([[1, 2]]), gen_length=4)
    with pytest.raises(CheckpointError, match="causal"):
        ModelConfig(d_model=64, n_layers=1, n_heads=4, n_kv_heads=4, mlp_hidden=64,
                    vocab_size=10, attn_block_size=4, causal=True)


def test_sdar_8b_is_inspectable_on_meta():
    m = qpass.models.load("sdar-8b", device="meta")
    assert 8.0e9 < sum(p.numel() for p in m.parameters()) < 8.4e9
    g = qpass.capture(m, shapes=False)
    atts = g.nodes("attention")
    assert len(atts) == 36 and all(a.kwargs.get("block_size") == 4 for a in atts)

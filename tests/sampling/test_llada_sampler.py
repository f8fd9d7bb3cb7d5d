"""LLaDA sampler: schedule, block confinement, determinism, CFG, remasking, EOS, validation."""
import pytest
import torch
import torch.nn as nn

from qpass.errors import QpassError
from qpass.sampling import generate, generate_llada


def expected_schedule(n_masked, steps):
    # LLaDA's linear schedule: n // steps per step, the remainder one each on the first steps.
    out = []
    for i in range(steps):
        out.append(n_masked // steps + (1 if i < n_masked % steps else 0))
    assert sum(out) == n_masked
    return out


@pytest.mark.parametrize("gen_length,block_length,steps", [(10, 5, 6), (12, 12, 5), (8, 4, 8)])
def test_commits_follow_schedule_inside_block(recording, commits, ids, gen_length, block_length, steps):
    model = recording(seed=1)
    prompt = torch.randint(0, 30, (2, 6), generator=torch.Generator().manual_seed(0))
    out = generate_llada(model, prompt, gen_length=gen_length, steps=steps, block_length=block_length)
    n_blocks = gen_length // block_length
    per_block = steps // n_blocks
    new = commits(model.calls, out, ids.MASK)
    assert len(new) == steps
    for i, committed in enumerate(new):
        b, j = divmod(i, per_block)
        lo, hi = 6 + b * block_length, 6 + (b + 1) * block_length
        want = expected_schedule(block_length, per_block)[j]
        assert committed.sum(dim=1).tolist() == [want, want]
        assert not committed[:, :lo].any() and not committed[:, hi:].any()
    assert torch.equal(out[:, :6], prompt)
    assert not (out == ids.MASK).any()


def test_low_confidence_commits_most_confident(recording, ids):
    model = recording(seed=2)
    prompt = torch.tensor([[1, 2, 3]])
    out = generate_llada(model, prompt, gen_length=6, steps=3, block_length=6)
    first = model.calls[0]
    probs = torch.softmax(model(first).double(), dim=-1)[0, 3:]
    conf, tok = probs.max(dim=-1)
    top2 = conf.topk(2).indices + 3
    # The first step commits the two most confident positions with their argmax tokens.
    assert set((model.calls[1][0] != ids.MASK).nonzero().flatten().tolist()) == {0, 1, 2, *top2.tolist()}
    assert torch.equal(out[0, top2], tok[top2 - 3])


def test_temperature_zero_is_deterministic(recording):
    prompt = torch.tensor([[4, 5, 6, 7]])
    a = generate_llada(recording(), prompt, gen_length=8, steps=8, block_length=4, seed=0)
    b = generate_llada(recording(), prompt, gen_length=8, steps=8, block_length=4, seed=123)
    assert torch.equal(a, b)


def test_sampling_is_seeded_and_leaves_global_rng_alone(recording):
    prompt = torch.tensor([[4, 5, 6, 7]])
    kw = dict(gen_length=16, steps=8, block_length=8, temperature=1.0)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = generate_llada(recording(), prompt, seed=5, **kw)
    assert torch.equal(torch.get_rng_state(), state)
    b = generate_llada(recording(), prompt, seed=5, **kw)
    c = generate_llada(recording(), prompt, seed=6, **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_random_remasking_reproducible(recording, commits, ids):
    prompt = torch.tensor([[4, 5, 6, 7]])
    kw = dict(gen_length=12, steps=12, block_length=12, remasking="random")
    m1, m2, m3 = recording(), recording(), recording()
    a = generate_llada(m1, prompt, seed=3, **kw)
    b = generate_llada(m2, prompt, seed=3, **kw)
    c = generate_llada(m3, prompt, seed=4, **kw)

    def order(m, out):
        return [step.nonzero()[:, 1].tolist() for step in commits(m.calls, out, ids.MASK)]

    assert torch.equal(a, b) and order(m1, a) == order(m2, b)
    assert order(m1, a) != order(m3, c)  # 12 positions: equal orders by chance ~ 1/12!


def test_cfg_zero_is_plain_generation(recording):
    prompt = torch.tensor([[4, 5, 6, 7]])
    m = recording()
    a = generate_llada(m, prompt, gen_length=8, steps=4, block_length=8, cfg_scale=0.0)
    assert all(c.shape[0] == 1 for c in m.calls)  # no unconditional pass
    assert torch.equal(a, generate_llada(recording(), prompt, gen_length=8, steps=4, block_length=8))


class ManualGuidance(nn.Module):
    """logits = un + (s + 1)(cond − un), the unconditional pass masking the prompt."""

    def __init__(self, inner, scale, prompt_len, mask_id):
        super().__init__()
        self.inner, self.scale, self.lp, self.mask_id = inner, scale, prompt_len, mask_id
        self.config = inner.config

    def forward(self, x, attention_mask=None):
        un_x = x.clone()
        un_x[:, : self.lp] = self.mask_id
        cond, un = self.inner(x), self.inner(un_x)
        return un + (self.scale + 1) * (cond - un)


def test_cfg_matches_formula(recording, ids):
    prompt = torch.tensor([[4, 5, 6, 7], [8, 9, 10, 11]])
    m = recording()
    got = generate_llada(m, prompt, gen_length=8, steps=4, block_length=4, cfg_scale=1.5)
    assert m.calls[0].shape[0] == 4 and (m.calls[0][2:, :4] == ids.MASK).all()
    want = generate_llada(ManualGuidance(recording(), 1.5, 4, ids.MASK), prompt,
                          gen_length=8, steps=4, block_length=4)
    assert torch.equal(got, want)


class EosDouble(nn.Module):
    """Predicts EOS at positions >= 7 with high confidence, token 1 elsewhere."""

    def __init__(self, ids):
        super().__init__()
        logits = torch.zeros(64, ids.V)
        logits[:, 1] = 2.0
        logits[7:, ids.EOS] = 9.0
        self.register_buffer("logits", logits)
        self.ids, self.n_calls = ids, 0

    def forward(self, x, attention_mask=None):
        self.n_calls += 1
        return self.logits[: x.shape[1]].expand(x.shape[0], -1, -1)


def test_stop_at_eos_fills_and_stops_early(ids):
    m = EosDouble(ids)
    out = generate_llada(m, torch.tensor([[3, 3, 3]]), gen_length=16, steps=16, block_length=4,
                         stop_at_eos=True, mask_id=ids.MASK, eos_id=ids.EOS)
    assert out[0, 3:7].tolist() == [1, 1, 1, 1] and (out[0, 7:] == ids.EOS).all()
    assert m.n_calls < 16
    full = generate_llada(EosDouble(ids), torch.tensor([[3, 3, 3]]), gen_length=16, steps=16,
                          block_length=4, mask_id=ids.MASK)
    assert torch.equal(out, full)  # stopping early does not change the text


def test_graph_module_without_config(recording, ids):
    eager = recording(with_config=False)
    gm = torch.fx.symbolic_trace(eager)
    assert not hasattr(gm, "config")
    prompt = torch.tensor([[4, 5, 6, 7]])
    with pytest.raises(QpassError, match="mask_id"):
        generate_llada(gm, prompt, gen_length=4, steps=4, block_length=4)
    a = generate_llada(gm, prompt, gen_length=8, steps=8, block_length=4, mask_id=ids.MASK)
    b = generate_llada(recording(with_config=False), prompt, gen_length=8, steps=8,
                       block_length=4, mask_id=ids.MASK)
    assert torch.equal(a, b)


@pytest.mark.parametrize("kw,msg", [
    (dict(gen_length=10, block_length=4, steps=10), "multiple of block_length"),
    (dict(gen_length=8, block_length=4, steps=3), "split evenly"),
    (dict(gen_length=8, block_length=4, steps=4, remasking="top"), "remasking"),
])
def test_invalid_arguments(recording, kw, msg):
    with pytest.raises(QpassError, match=msg):
        generate_llada(recording(), torch.tensor([[1, 2]]), **kw)


def test_generate_auto_picks_llada_and_rejects_unknown(recording):
    prompt = torch.tensor([[4, 5]])
    a = generate(recording(), prompt, gen_length=4, steps=4, block_length=4)
    b = generate_llada(recording(), prompt, gen_length=4, steps=4, block_length=4)
    assert torch.equal(a, b)
    with pytest.raises(QpassError, match="sampler"):
        generate(recording(), prompt, sampler="ar")


def test_progress_bar_runs(recording):
    out = generate_llada(recording(), torch.tensor([[4, 5]]), gen_length=4, steps=4,
                         block_length=4, progress=True)
    assert out.shape == (1, 6)

"""Dream sampler: logit shift honoured, per-step counts of every alg, full unmasking, seeding."""
import numpy as np
import pytest
import torch

import qpass
from qpass.errors import QpassError
from qpass.sampling import generate, generate_dream


def dream_counts(gen_length, steps, eps):
    # Dream's rule: from t to s commit int(n_masked · (1 − s/t)); the last step commits the rest.
    ts = np.linspace(1.0, eps, steps + 1)
    left, out = gen_length, []
    for i in range(steps):
        k = left if i == steps - 1 else int(left * (1 - ts[i + 1] / ts[i]))
        out.append(k)
        left -= k
    return out


def test_logit_shift_is_honoured(shifted):
    model = shifted()
    prompt = torch.tensor([[1, 2, 3, 4, 5]])
    out = generate(model, prompt, gen_length=10, steps=10)  # auto: dream (config.logit_shift)
    assert out[0, 5:].tolist() == [model.target(i) for i in range(5, 15)]
    # Shifting a second time would put target(i - 1) at position i.
    assert out[0, 5:].tolist() != [model.target(i - 1) for i in range(5, 15)]


@pytest.mark.parametrize("alg", ["maskgit_plus", "topk_margin", "entropy"])
@pytest.mark.parametrize("alg_temp", [None, 0.5])
def test_confidence_algs_counts_per_step(recording, commits, ids, alg, alg_temp):
    model = recording(seed=3)
    prompt = torch.randint(0, 30, (2, 5), generator=torch.Generator().manual_seed(1))
    out = generate_dream(model, prompt, gen_length=16, steps=5, alg=alg, alg_temp=alg_temp, eps=1e-3)
    new = commits(model.calls, out, ids.MASK)
    want = dream_counts(16, 5, 1e-3)
    while want and sum(want[:-1]) == 16:  # the sampler stops once nothing is masked
        want.pop()
    assert [n.sum(dim=1).tolist() for n in new] == [[k, k] for k in want]
    assert not (out == ids.MASK).any() and torch.equal(out[:, :5], prompt)
    assert not any(n[:, :5].any() for n in new)


def test_origin_unmasks_everything_and_is_seeded(recording, ids):
    prompt = torch.tensor([[1, 2, 3]])
    a = generate_dream(recording(), prompt, gen_length=24, steps=6, alg="origin", seed=1)
    b = generate_dream(recording(), prompt, gen_length=24, steps=6, alg="origin", seed=1)
    assert torch.equal(a, b) and not (a == ids.MASK).any()


def test_origin_reveal_rate(recording, commits, ids):
    # Each masked token is revealed w.p. 1 − s/t: over many rows the first step's mean count
    # is gen_length · (1 − t1/t0).
    model = recording(seed=4)
    prompt = torch.zeros(200, 2, dtype=torch.long)
    out = generate_dream(model, prompt, gen_length=20, steps=4, alg="origin", seed=0)
    first = commits(model.calls, out, ids.MASK)[0].sum(dim=1).double()
    p = 1 - np.linspace(1, 1e-3, 5)[1]
    sd = np.sqrt(20 * p * (1 - p) / 200)  # of the mean of 200 Binomial(20, p) counts
    assert abs(first.mean().item() - 20 * p) < 4 * sd


def test_dream_sampling_with_temperature_is_seeded(recording):
    prompt = torch.tensor([[1, 2, 3]])
    kw = dict(gen_length=12, steps=4, alg="maskgit_plus", temperature=1.0, top_p=0.9)
    a = generate_dream(recording(), prompt, seed=2, **kw)
    b = generate_dream(recording(), prompt, seed=2, **kw)
    c = generate_dream(recording(), prompt, seed=3, **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_tiny_dream_model_end_to_end():
    model = qpass.models.load("tiny-dream-random")
    prompt = torch.randint(0, 90, (2, 4), generator=torch.Generator().manual_seed(0))
    for alg in ("origin", "maskgit_plus", "topk_margin", "entropy"):
        out = generate(model, prompt, gen_length=8, steps=4, alg=alg)
        assert out.shape == (2, 12) and not (out == model.config.mask_token_id).any()


def test_dream_rejects_bad_arguments(recording):
    with pytest.raises(QpassError, match="alg"):
        generate_dream(recording(), torch.tensor([[1]]), gen_length=4, steps=4, alg="greedy")
    # Dream takes blocks now (Fast-dLLM's variant); one that does not divide gen_length is refused
    with pytest.raises(QpassError, match="block_length"):
        generate(recording(), torch.tensor([[1]]), sampler="dream", gen_length=4, steps=4,
                 block_length=3)

"""Monte-Carlo conditional log-likelihood and multiple choice against exact sums of log-probs."""
import pytest
import torch

from qpass.errors import QpassError
from qpass.eval import choose, loglikelihood, loglikelihood_draws
from qpass.eval.likelihood import standard_error


def exact_ll(model, prefix, cont):
    full = list(prefix) + list(cont)
    return float(model.log_probs(full)[len(prefix):].sum())


def test_estimate_matches_exact(context_free, vocab):
    model = context_free(seed=3)
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(0, vocab.MASK, (10,), generator=g).tolist()
    cont = torch.randint(0, vocab.MASK, (8,), generator=g).tolist()
    draws = loglikelihood_draws(model, [(prefix, cont)], mc_num=256, batch_size=64, seed=0)[0]
    exact = exact_ll(model, prefix, cont)
    se = standard_error(draws)
    assert abs(float(draws.mean()) - exact) < 4 * se and se < 0.1 * abs(exact)
    assert loglikelihood(model, prefix, cont, mc_num=256, batch_size=64) == pytest.approx(float(draws.mean()))


def test_single_token_continuation_is_exact(context_free, vocab):
    model = context_free(seed=4)
    prefix, cont = [1, 2, 3], [5]
    got = loglikelihood(model, prefix, cont, mc_num=3)
    assert got == pytest.approx(exact_ll(model, prefix, cont), abs=1e-6)


def test_suffix_is_context_only(context_free, vocab):
    model = context_free(seed=5)
    prefix, cont, suffix = [1, 2], [3, 4, 5, 6], [7, 8, 9]
    est = loglikelihood(model, prefix, cont, mc_num=512, batch_size=128, suffix_ids=suffix)
    assert est == pytest.approx(exact_ll(model, prefix, cont), abs=0.15 * abs(exact_ll(model, prefix, cont)))


def test_seeded_and_batching_independent(context_free):
    model = context_free(seed=6)
    reqs = [([1, 2], [3, 4, 5]), ([1], [6, 7, 8, 9, 10]), ([2, 2, 2], [1])]
    a = loglikelihood_draws(model, reqs, mc_num=16, batch_size=5, seed=1)
    b = loglikelihood_draws(model, reqs, mc_num=16, batch_size=64, seed=1)
    c = loglikelihood_draws(model, reqs, mc_num=16, batch_size=64, seed=2)
    assert all(torch.allclose(x, y, rtol=1e-6, atol=1e-6) for x, y in zip(a, b))
    assert not torch.allclose(a[1], c[1])


def test_choose_picks_most_likely_option(context_free, vocab):
    model = context_free(seed=7)
    prefix = [1, 2, 3, 4]
    lp = torch.log_softmax(model.table.double(), dim=-1)
    best = [int(lp[4 + i, : vocab.MASK].argmax()) for i in range(3)]
    worst = [int(lp[4 + i, : vocab.MASK].argmin()) for i in range(3)]
    middle = [best[0], worst[1], best[2]]
    idx, scores = choose(model, prefix, [worst, best, middle], mc_num=32)
    exact = [exact_ll(model, prefix, o) for o in (worst, best, middle)]
    assert idx == 1 and len(scores) == 3
    assert sorted(range(3), key=scores.__getitem__) == sorted(range(3), key=exact.__getitem__)


def test_errors(context_free):
    with pytest.raises(QpassError, match="non-empty prefix"):
        loglikelihood(context_free(logit_shift=True), [], [1, 2])
    with pytest.raises(QpassError, match="empty"):
        loglikelihood(context_free(), [1], [])
    with pytest.raises(QpassError, match="tokenizer"):
        choose(context_free(), "a prefix", ["x", "y"])

"""LLaDA's and Dream's Monte-Carlo estimators against closed forms on a context-free denoiser
(exact log-likelihood = Σ log p of the target tokens) and their documented mechanics."""
import pytest
import torch

from qpass.errors import QpassError
from qpass.eval.family_likelihood import (dream_loglikelihood, family_loglikelihood, family_of,
                                          llada_loglikelihood)


def test_llada_single_token_mode_is_exact(context_free):
    # mc_num=1, batch_size=1, a one-token target: k = 1, p_mask = 1 -> the exact log-prob.
    m = context_free(seed=1)
    prefix, target = [1, 2, 3], [4]
    exact = float(m.log_probs(prefix + target)[3])
    assert llada_loglikelihood(m, prefix, target, mc_num=1, batch_size=1) == pytest.approx(exact, abs=1e-9)


def test_llada_estimator_is_unbiased(context_free):
    m = context_free(seed=3)
    prefix, target = [1, 2], [3, 4, 5, 6, 7, 8]
    exact = float(m.log_probs(prefix + target)[2:].sum())
    draws = [llada_loglikelihood(m, prefix, target, mc_num=64, batch_size=16, seed=s)
             for s in range(40)]
    mean = sum(draws) / len(draws)
    se = float(torch.tensor(draws, dtype=torch.float64).std()) / len(draws) ** 0.5
    assert abs(mean - exact) < 4 * se + 1e-6
    assert se > 0  # the draws really vary (the test could fail)


def _spy(context_free, **kw):
    """A context-free model that records the canvases it is called on."""
    class Spy(type(context_free())):
        seen = []

        def forward(self, input_ids, attention_mask=None):
            self.seen.append(input_ids.clone())
            return super().forward(input_ids)
    return Spy(**kw)


def test_llada_counts_are_stratified_and_prompt_never_masked(context_free):
    m = _spy(context_free, seed=0)
    seen = m.seen
    prefix, target = [1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 4]
    llada_loglikelihood(m, prefix, target, mc_num=8, batch_size=8, seed=5)
    x = seen[0]
    assert not (x[:, :3] == 11).any()
    counts = sorted((x[:, 3:] == 11).sum(1).tolist())
    assert counts == list(range(1, 9))  # b = l = 8: linspace(k, k + 7) wrapped = every count once


def test_dream_estimator_is_unbiased_and_keeps_eos(context_free):
    m = context_free(seed=4, logit_shift=True)
    eos = 10
    prefix, target = [1, 2], [3, 4, 5, 6]
    # The appended EOS (the row's last token) is never masked, so it is never scored.
    exact = float(m.log_probs(prefix + target + [eos])[2:6].sum())
    draws = [dream_loglikelihood(m, prefix, target, mc_num=64, batch_size=16, seed=s, eos_id=eos)
             for s in range(40)]
    mean = sum(draws) / len(draws)
    se = float(torch.tensor(draws, dtype=torch.float64).std()) / len(draws) ** 0.5
    assert abs(mean - exact) < 4 * se + 1e-6 and se > 0


def test_dream_noises_only_the_target(context_free):
    m = _spy(context_free, seed=0, logit_shift=True)
    seen = m.seen
    dream_loglikelihood(m, [1, 2, 3], [4, 5, 6, 7], mc_num=32, batch_size=32, eos_id=10)
    x = seen[0]
    assert not (x[:, :3] == 11).any() and not (x[:, -1] == 11).any()
    assert (x[:, 3:-1] == 11).any()


def test_cfg_on_context_free_model_changes_nothing(context_free):
    m = context_free(seed=2)
    a = llada_loglikelihood(m, [1, 2], [3, 4, 5], mc_num=8, batch_size=4, seed=0)
    b = llada_loglikelihood(m, [1, 2], [3, 4, 5], mc_num=8, batch_size=4, seed=0, cfg=0.5)
    assert a == pytest.approx(b, abs=1e-9)


def test_family_dispatch_and_errors(context_free):
    assert family_of(context_free()) == "llada"
    assert family_of(context_free(logit_shift=True)) == "dream"
    m = context_free(seed=0)
    assert family_loglikelihood(m, [1], [2], mc_num=1, batch_size=1) == \
        llada_loglikelihood(m, [1], [2], mc_num=1, batch_size=1)
    with pytest.raises(QpassError, match="multiple of batch_size"):
        llada_loglikelihood(m, [1], [2, 3], mc_num=6, batch_size=4)
    with pytest.raises(QpassError, match="empty"):
        llada_loglikelihood(m, [1], [])
    with pytest.raises(QpassError, match="eos_token_id"):
        dream_loglikelihood(context_free(logit_shift=True), [1], [2], mc_num=1, batch_size=1)
    with pytest.raises(QpassError, match="estimator"):
        family_loglikelihood(m, [1], [2], estimator="mdlm")

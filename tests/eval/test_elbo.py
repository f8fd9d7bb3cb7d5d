"""ELBO perplexity against closed forms on a context-free denoiser."""
import math

import pytest
import torch

from qpass.errors import QpassError
from qpass.eval import elbo_ppl


def docs(vocab, n=4, length=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab.MASK, (length,), generator=g) for _ in range(n)]


def exact_nll(model, documents, seq_len, skip_first=0):
    # Mean CE of the true tokens over every scored position of every seq_len chunk.
    total, count = 0.0, 0
    for d in documents:
        for s in range(0, len(d), seq_len):
            chunk = d[s:s + seq_len]
            lp = model.log_probs(chunk)[skip_first:]
            total += float(-lp.sum())
            count += len(lp)
    return total / count, count


@pytest.mark.parametrize("stratified", [True, False])
def test_estimate_matches_exact_within_three_stderr(context_free, vocab, stratified):
    model = context_free(seed=1)
    data = docs(vocab)
    exact, count = exact_nll(model, data, seq_len=32)
    r = elbo_ppl(model, data, seq_len=32, n_mc=24, batch_size=16, seed=0, stratified=stratified)
    assert r.n_tokens == count == 256 and r.n_sequences == 8 and r.n_mc == 24
    assert 0 < r.stderr < 0.1 * exact
    assert abs(r.nll_per_token - exact) < 3 * r.stderr
    assert r.bits_per_token == pytest.approx(r.nll_per_token / math.log(2))
    assert r.ppl == pytest.approx(math.exp(r.nll_per_token))
    assert r.bits_per_byte is None  # token ids, no tokenizer


def test_logit_shift_keeps_first_token_as_context(context_free, vocab):
    model = context_free(seed=2, logit_shift=True)
    data = docs(vocab, n=2, length=48)
    exact, count = exact_nll(model, data, seq_len=48, skip_first=1)
    r = elbo_ppl(model, data, seq_len=48, n_mc=32, seed=0)
    assert r.n_tokens == count == 94
    assert abs(r.nll_per_token - exact) < 3 * r.stderr


def test_seeded_reproducible_and_batch_size_independent(context_free, vocab):
    model, data = context_free(), docs(vocab, n=3, length=40)  # 40 = 32 + a short last chunk
    a = elbo_ppl(model, data, seq_len=32, n_mc=4, batch_size=3, seed=7)
    b = elbo_ppl(model, data, seq_len=32, n_mc=4, batch_size=8, seed=7)
    c = elbo_ppl(model, data, seq_len=32, n_mc=4, batch_size=8, seed=8)
    assert a.nll_per_token == pytest.approx(b.nll_per_token, rel=1e-12)
    assert a.stderr == pytest.approx(b.stderr, rel=1e-9)
    assert a.nll_per_token != c.nll_per_token
    assert a.n_sequences == 6


def test_max_tokens_and_input_forms(context_free, vocab):
    model = context_free()
    data = docs(vocab, n=1, length=100)[0]
    r = elbo_ppl(model, data, seq_len=32, n_mc=2, max_tokens=50)
    assert r.n_tokens == 50 and r.n_sequences == 2
    r2 = elbo_ppl(model, data[None], seq_len=32, n_mc=2, max_tokens=50)
    assert r2.nll_per_token == r.nll_per_token


def test_text_on_byte_model(byte_model):
    text = "To be, or not to be, that is the question.\n" * 6
    r = elbo_ppl(byte_model, text, seq_len=128, n_mc=16, seed=0)
    assert r.n_tokens == len(text.encode())
    assert r.bits_per_byte == r.bits_per_token
    # A near-uniform random model: about log(vocab) nats per token.
    assert abs(r.nll_per_token - math.log(264)) < 3 * r.stderr + 0.02


def test_errors(context_free, vocab):
    with pytest.raises(QpassError, match="tokenizer"):
        elbo_ppl(context_free(), ["some text"])
    with pytest.raises(QpassError):
        elbo_ppl(context_free(), docs(vocab), seq_len=1)
    with pytest.raises(QpassError, match="nothing to score"):
        elbo_ppl(context_free(logit_shift=True), [torch.tensor([1])])

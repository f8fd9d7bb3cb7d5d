"""Prompts of different lengths: left padding + key mask gives the same result as one by one."""
import pytest
import torch

import qpass
from qpass.errors import QpassError
from qpass.sampling import batch_prompts, decode_generated, generate, generated_ids, prompt_width


def model64(name):
    # float64 so that padding-induced rounding differences cannot flip an argmax or a ranking.
    m = qpass.models.load(name, dtype=torch.float64)
    with torch.no_grad():  # sharper than the default init, so the ranking is far from ties
        m.head.weight.mul_(30)
    return m


PROMPTS = [[5, 17, 3], [9, 1, 4, 4, 30, 2, 8], [11]]


@pytest.mark.parametrize("name", ["tiny-llada-random", "tiny-dream-random"])
def test_left_padding_does_not_change_logits(name):
    m = model64(name)
    short = torch.tensor([PROMPTS[0]])
    ids, mask = batch_prompts([PROMPTS[0], PROMPTS[1]], pad_id=0)
    assert mask[0].tolist() == [False] * 4 + [True] * 3
    with torch.no_grad():
        alone = m(short)
        padded = m(ids, mask)[:1, 4:]
    # RoPE depends on relative positions only and padded keys are masked out. With Dream's
    # shift the first real position shows the (padding) position before it: it is a prompt
    # position whose logits no sampler reads.
    first = 1 if m.config.logit_shift else 0
    err = (alone[:, first:] - padded[:, first:]).abs().max() / alone.abs().max()
    assert err < 1e-6  # not 1e-15: the RoPE tables are rounded to float32 at every position


@pytest.mark.parametrize("name,kw", [
    ("tiny-llada-random", dict(gen_length=8, steps=8, block_length=4)),
    ("tiny-llada-random", dict(gen_length=8, steps=4, block_length=8, cfg_scale=1.0)),
    ("tiny-dream-random", dict(gen_length=8, steps=4, alg="maskgit_plus")),
    ("tiny-dream-random", dict(gen_length=8, steps=8, alg="entropy")),
])
def test_batched_equals_one_by_one(name, kw):
    m = model64(name)
    batched = generate(m, PROMPTS, **kw)
    width = prompt_width(PROMPTS)
    assert batched.shape == (3, width + 8)
    for row, p in zip(generated_ids(batched, PROMPTS), PROMPTS):
        alone = generate(m, torch.tensor([p]), **kw)
        assert row == alone[0, len(p):].tolist()


def test_prompt_forms_and_decode():
    tok = qpass.models.ByteTokenizer()
    ids, mask = batch_prompts(torch.tensor([1, 2, 3]), pad_id=0)
    assert ids.shape == (1, 3) and mask is None
    ids, mask = batch_prompts([1, 2, 3], pad_id=0)
    assert ids.tolist() == [[1, 2, 3]] and mask is None
    with pytest.raises(QpassError):
        batch_prompts([[1, 2], [3]], pad_id=0, attention_mask=torch.ones(2, 2))
    out = torch.tensor([[256, 104, 105, 33, 257, 120]])
    assert decode_generated(out, [[256, 104]], tok) == ["i!"]
    assert generated_ids(out, [[256, 104]]) == [[105, 33, 257, 120]]

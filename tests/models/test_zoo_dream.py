"""The second zoo family, tiny-dream: Dream/Qwen2 layout on disk, and trained (not random)."""
import math
from collections import Counter

import torch

import qpass
from qpass.eval.tasks import eval_text
from qpass.models.loading import ZOO_DIR, read_json


def test_tiny_dream_has_the_dream_layout():
    m = qpass.models.load("tiny-dream")
    c = m.config
    assert c.family == "dream" and c.logit_shift and c.qkv_bias and not c.causal
    assert c.n_kv_heads < c.n_heads                              # GQA
    hf = read_json(ZOO_DIR / "tiny-dream" / "config.json")
    assert hf["model_type"] == "Dream" and hf["num_key_value_heads"] == c.n_kv_heads
    assert m.blocks[0].k_proj.bias is not None
    assert m.blocks[0].k_proj.weight.shape == (c.n_kv_heads * c.head_dim, c.d_model)
    assert m.tokenizer is not None and m.tokenizer.mask_token_id == c.mask_token_id


def test_tiny_dream_is_trained():
    # ELBO bits per byte on held-out Shakespeare well below the bytes' own unigram entropy,
    # which a random or untrained model cannot reach (it is ~log2(vocab) = 8 bits there)
    m = qpass.models.load("tiny-dream")
    text = eval_text("shakespeare_test.txt", None)[:2048]
    counts, n = Counter(text.encode()), len(text.encode())
    unigram = -sum(v / n * math.log2(v / n) for v in counts.values())
    r = qpass.eval.elbo_ppl(m, [m.tokenizer.encode(text)], tokenizer=m.tokenizer, seq_len=256,
                            n_mc=2, seed=0)
    assert r.bits_per_byte < unigram - 1.0, (r.bits_per_byte, unigram)
    with torch.no_grad():
        assert torch.isfinite(m(torch.tensor([m.tokenizer.encode("ROMEO:\n")]))).all()

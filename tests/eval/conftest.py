"""Test doubles for evaluation: a denoiser with closed-form likelihoods and a tiny byte model."""
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

import qpass

V, MASK = 12, 11


class ContextFree(nn.Module):
    """Ignores its input: position i gets fixed logits table[i]. Then the exact negative ELBO
    per token is the mean CE of the true tokens (E[Σ_masked CE / t] = Σ CE) and the exact
    log-likelihood of a continuation is the sum of its log-probs."""

    def __init__(self, seed=0, max_len=256, logit_shift=False):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("table", 2 * torch.randn(max_len, V, generator=g))
        self.config = SimpleNamespace(mask_token_id=MASK, eos_token_id=None, pad_token_id=None,
                                      logit_shift=logit_shift, vocab_size=V)
        self.tokenizer = None

    def forward(self, input_ids, attention_mask=None):
        return self.table[: input_ids.shape[1]].expand(input_ids.shape[0], -1, -1).clone()

    def log_probs(self, ids):
        """float64 log p(ids[i]) at each position i."""
        lp = torch.log_softmax(self.table[: len(ids)].double(), dim=-1)
        return lp[torch.arange(len(ids)), torch.as_tensor(ids)]


@pytest.fixture
def context_free():
    return ContextFree


@pytest.fixture
def vocab():
    return SimpleNamespace(V=V, MASK=MASK)


@pytest.fixture(scope="session")
def byte_model():
    """A random tiny LLaDA-shaped model over the zoo's byte vocabulary, with its tokenizer."""
    tok = qpass.models.ByteTokenizer()
    cfg = qpass.models.ModelConfig(d_model=32, n_layers=1, n_heads=2, n_kv_heads=2, mlp_hidden=64,
                                   vocab_size=264, mask_token_id=tok.mask_token_id,
                                   eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                   max_seq_len=512, name="tiny-byte-random")
    model = qpass.models.build(cfg, seed=0)
    model.tokenizer = tok
    return model


SHAKESPEARE = """# The Tempest

## ACT I

MASTER:
Good, speak to the mariners: fall to't, yarely,
or we run ourselves aground: bestir, bestir.

BOATSWAIN:
Heigh, my hearts! cheerly, cheerly, my hearts!
yare, yare! Take in the topsail. Tend to the
master's whistle. Blow, till thou burst thy wind,
if room enough!

GONZALO:
I have great comfort from this fellow: methinks he
hath no drowning mark upon him; his complexion is
perfect gallows. Stand fast, good Fate, to his hanging:
make the rope of his destiny our cable, for our
own doth little advantage.
"""

PYTHON = '''# file: tiny.py
"""A tiny module."""

def add(a, b):
    return a + b


class Box:
    def __init__(self, value):
        self.value = value
'''


@pytest.fixture
def eval_dir(tmp_path):
    """A small held-out data folder in the layout qpass.data.build_corpus writes."""
    d = tmp_path / "eval"
    d.mkdir()
    (d / "shakespeare_test.txt").write_text(SHAKESPEARE * 3)
    (d / "python_test.txt").write_text(PYTHON * 3)
    rows = [{"a": a, "b": b, "answer": str(a + b)} for a, b in [(3, 4), (12, 30), (7, 8), (50, 41)]]
    (d / "arith_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d

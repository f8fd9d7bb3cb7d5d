"""Test doubles for the samplers: denoisers whose logits are known and whose inputs are recorded."""
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

V, MASK, EOS, PAD = 40, 39, 38, 37


def _config(logit_shift=False):
    return SimpleNamespace(mask_token_id=MASK, eos_token_id=EOS, pad_token_id=PAD,
                           logit_shift=logit_shift, vocab_size=V)


class RecordingDenoiser(nn.Module):
    """Logits = a fixed random table per position + a random function of the input token
    (so later steps depend on earlier commits); every input batch is recorded. Never predicts
    the special ids, like a trained model."""

    def __init__(self, seed=0, max_len=128, with_config=True):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("table", 3 * torch.randn(max_len, V, generator=g))
        self.register_buffer("mix", torch.randn(V, V, generator=g))
        special = torch.zeros(V)
        special[[MASK, EOS, PAD]] = -1e4
        self.register_buffer("special", special)
        if with_config:
            self.config = _config()
        self.calls = []

    def forward(self, input_ids, attention_mask=None):
        self.calls.append(input_ids.clone())
        # torch.narrow (not slicing) so that torch.fx can trace the double too
        return torch.narrow(self.table, 0, 0, input_ids.shape[1]) + self.mix[input_ids] + self.special


class ShiftedDouble(nn.Module):
    """Dream-style: the raw prediction at position i-1 is the token meant for position i,
    and forward applies Dream's shift (as qpass's Dream denoiser does), so the returned
    logits at i predict `target(i)`."""

    def __init__(self, max_len=128):
        super().__init__()
        raw = torch.full((max_len, V), -5.0)
        for j in range(max_len - 1):
            raw[j, self.target(j + 1)] = 5.0
        self.register_buffer("raw", raw)
        self.config = _config(logit_shift=True)

    @staticmethod
    def target(i):
        return (7 * i + 3) % 30

    def forward(self, input_ids, attention_mask=None):
        raw = self.raw[: input_ids.shape[1]].expand(input_ids.shape[0], -1, -1)
        return torch.cat([raw[:, :1], raw[:, :-1]], dim=1)


@pytest.fixture
def recording():
    return RecordingDenoiser


@pytest.fixture
def shifted():
    return ShiftedDouble


@pytest.fixture
def ids():
    return SimpleNamespace(V=V, MASK=MASK, EOS=EOS, PAD=PAD)


def newly_committed(calls, out, mask_id):
    """Per forward call: bool (B, L) of positions unmasked between that call and the next."""
    states = [c[: out.shape[0]] for c in calls] + [out]  # CFG doubles the batch: keep cond rows
    return [(a == mask_id) & (b != mask_id) for a, b in zip(states[:-1], states[1:])]


@pytest.fixture
def commits():
    return newly_committed

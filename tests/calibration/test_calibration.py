"""CalibrationSet: windows, seeded diffusion masking, and the errors users hit."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qpass
from qpass.calibration import CalibrationSet
from qpass.errors import CalibrationError
from qpass.models import ByteTokenizer

TOK = ByteTokenizer()
TEXT = "To be, or not to be, that is the question. " * 40


def test_windows_are_slices_of_the_token_stream():
    stream = torch.arange(1000)                     # distinct ids: a row's first id is its offset
    c = CalibrationSet.from_ids(stream, mask_id=None, n=8, seq_len=32, masking="none", seed=3)
    assert c.input_ids.shape == (8, 32)
    for row in c.input_ids:
        start = int(row[0])
        assert torch.equal(row, stream[start:start + 32])
    assert len({int(r[0]) for r in c.input_ids}) > 1   # offsets differ


def test_seeded_and_reproducible():
    a = CalibrationSet.from_texts([TEXT], TOK, n=6, seq_len=64, seed=7)
    b = CalibrationSet.from_texts([TEXT], TOK, n=6, seq_len=64, seed=7)
    c = CalibrationSet.from_texts([TEXT], TOK, n=6, seq_len=64, seed=8)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.mask_ratios, b.mask_ratios)
    assert not torch.equal(a.input_ids, c.input_ids)


def test_masking_none_is_plain_text():
    c = CalibrationSet.from_texts([TEXT], TOK, n=4, seq_len=50, masking="none")
    assert torch.equal(c.input_ids, c.clean_ids)
    assert TOK.decode(c.input_ids[0]) in TEXT * 2


def test_diffusion_masking_ratio_statistics():
    """Per row the masked fraction tracks t; over rows t ~ U(eps, 1) (mean ~ 1/2)."""
    c = CalibrationSet.from_ids(torch.arange(20000) % 200, mask_id=258, n=400, seq_len=256,
                                masking="diffusion", eps=1e-3, seed=0)
    masked = (c.input_ids == 258)
    assert torch.equal(masked, c.input_ids != c.clean_ids)
    frac = masked.double().mean(1)
    t = c.mask_ratios.double()
    # binomial(256, t) / 256 has std <= 1/32: the row fraction is within 5 std of t
    assert (frac - t).abs().max() < 5 / 32
    assert abs(t.mean().item() - 0.5) < 0.05 and t.min() >= 1e-3 and t.max() <= 1
    # a KS-style check that t is uniform on (eps, 1)
    ts = t.sort().values
    ecdf = torch.arange(1, len(ts) + 1, dtype=torch.float64) / len(ts)
    assert (ecdf - (ts - 1e-3) / (1 - 1e-3)).abs().max() < 0.1


def test_prompt_is_never_masked_and_ratios_add_rows():
    c = CalibrationSet.from_ids(torch.arange(5000) % 200, mask_id=258, n=5, seq_len=40,
                                ratios_per_sample=3, prompt_len=10, seed=1)
    assert c.input_ids.shape == (15, 40)
    assert torch.equal(c.input_ids[:, :10], c.clean_ids[:, :10])
    # the three rows of one sample share the clean window but draw different t
    assert torch.equal(c.clean_ids[0], c.clean_ids[2]) and c.mask_ratios[0] != c.mask_ratios[1]


def test_batches():
    c = CalibrationSet.from_texts([TEXT], TOK, n=5, seq_len=16)
    got = list(c.batches(2))
    assert [b[0].shape[0] for b in got] == [2, 2, 1]
    assert torch.equal(torch.cat([b[0] for b in got]), c.input_ids)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(1, 6), seq_len=st.integers(1, 60), seed=st.integers(0, 2**31 - 1),
       masking=st.sampled_from(["diffusion", "none"]))
def test_shapes_and_vocab_range(n, seq_len, seed, masking):
    c = CalibrationSet.from_texts([TEXT], TOK, n=n, seq_len=seq_len, masking=masking, seed=seed)
    assert c.input_ids.shape == (n, seq_len) and c.input_ids.dtype == torch.long
    assert int(c.input_ids.max()) < TOK.vocab_size


@pytest.mark.parametrize("call, words", [
    (lambda: CalibrationSet.from_texts([], TOK), "empty"),
    (lambda: CalibrationSet.from_texts(["", ""], TOK), "empty"),
    (lambda: CalibrationSet.from_texts(["short"], TOK, seq_len=512), "too short"),
    (lambda: CalibrationSet.from_ids([], mask_id=1), "empty"),
    (lambda: CalibrationSet.from_ids(list(range(300)), mask_id=1, seq_len=10, vocab_size=264),
     "outside the vocabulary"),
    (lambda: CalibrationSet.from_texts([TEXT], TOK, seq_len=8, vocab_size=100), "mismatch"),
    (lambda: CalibrationSet.from_ids(list(range(100)), mask_id=None, seq_len=10), "mask id"),
    (lambda: CalibrationSet.from_ids(list(range(100)), mask_id=1, seq_len=10, masking="x"),
     "unknown masking"),
])
def test_user_mistakes_raise_calibration_error(call, words):
    with pytest.raises(qpass.CalibrationError, match=words):
        call()


def test_check_vocab_against_a_model():
    c = CalibrationSet.from_texts([TEXT], TOK, n=2, seq_len=16)   # ids up to 258 (mask)
    c.check_vocab(264)
    with pytest.raises(qpass.CalibrationError, match="vocabulary"):
        c.check_vocab(97)


def test_tiled_windows_use_every_token_once():
    ids = torch.arange(1000)
    cs = CalibrationSet.from_ids(ids, n=4, seq_len=250, masking="none", windows="tile")
    assert torch.equal(cs.clean_ids.reshape(-1), ids)            # in order, nothing repeated
    rows = torch.arange(600).view(3, 200)                        # a (n, L) tensor: row for row
    cs = CalibrationSet.from_ids(rows, n=3, seq_len=200, masking="none", windows="tile")
    assert torch.equal(cs.clean_ids, rows)
    with pytest.raises(CalibrationError, match="windows='tile' needs n·seq_len = 1200"):
        CalibrationSet.from_ids(ids, n=4, seq_len=300, masking="none", windows="tile")
    with pytest.raises(CalibrationError, match="unknown windows"):
        CalibrationSet.from_ids(ids, n=4, seq_len=100, masking="none", windows="strided")

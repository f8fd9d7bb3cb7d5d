"""Issue 26 (a user's first hour): the calibration and Pipeline.run boundaries. Rows handed over
as windows are the windows; too little text says so; what run accepts as model, calib, probe
and out is either used sensibly or refused in one QpassError line before any compute."""
import logging

import pytest
import torch

import qpass
from qpass import passes as P
from qpass.calibration import CalibrationSet
from qpass.calibration import coerce
from qpass.errors import CalibrationError, CheckpointError, OutputPathError, PipelineError
from qpass.models import ByteTokenizer

TOK = ByteTokenizer()
MASK = 258


@pytest.fixture(scope="module")
def tiny():
    return qpass.models.load("tiny-llada")


def _rows(n, length, seed=0):
    return torch.randint(0, 250, (n, length), generator=torch.Generator().manual_seed(seed))


# ---- from_ids: rows are the windows ---------------------------------------------------------
def test_rows_given_as_the_windows_are_the_windows():
    """Before: a (32, 256) tensor was flattened and 32 random windows drawn over it (SmolLM2
    w4a16-awq 62.41 ppl where the rows themselves give 58.47)."""
    ids = _rows(32, 256)
    for kw in (dict(n=32, seq_len=256), {}):
        plain = CalibrationSet.from_ids(ids, masking="none", **kw)
        assert torch.equal(plain.clean_ids, ids) and torch.equal(plain.input_ids, ids)
        masked = CalibrationSet.from_ids(ids, mask_id=MASK, seed=3, **kw)
        assert torch.equal(masked.clean_ids, ids)               # row for row, in order
        keep = masked.input_ids != MASK
        assert torch.equal(masked.input_ids[keep], ids[keep]) and (~keep).any()


def test_equal_length_lists_are_rows_and_longer_rows_are_truncated():
    ids = _rows(4, 100, seed=1)
    cs = CalibrationSet.from_ids(ids.tolist(), n=4, seq_len=64, masking="none")
    assert torch.equal(cs.clean_ids, ids[:, :64])
    cs = CalibrationSet.from_ids(list(ids), seq_len=10, masking="none")   # 1-D tensors
    assert torch.equal(cs.clean_ids, ids[:, :10])
    # ratios_per_sample repeats each given row
    cs = CalibrationSet.from_ids(ids, mask_id=MASK, ratios_per_sample=2)
    assert torch.equal(cs.clean_ids, ids.repeat_interleave(2, dim=0))


@pytest.mark.parametrize("kw, words", [
    (dict(n=16), "n=16 contradicts the rows: the ids are 32 rows of 256 tokens"),
    (dict(n=40), "pass n=32"),
    (dict(seq_len=300), "seq_len=300 is longer than the rows"),
    (dict(windows="rows", n=None), None),
])
def test_n_or_seq_len_contradicting_the_rows_is_one_error(kw, words):
    ids = _rows(32, 256)
    if words is None:                                         # explicit rows: fine
        assert CalibrationSet.from_ids(ids, masking="none", **kw).clean_ids.shape == (32, 256)
        return
    with pytest.raises(CalibrationError) as e:
        CalibrationSet.from_ids(ids, masking="none", **kw)
    assert words in str(e.value) and "\n" not in str(e.value)
    assert "reshape(-1)" in str(e.value)                     # and how to use them as a stream


def test_a_stream_keeps_random_windows():
    stream = torch.arange(3000)
    ref_gen = torch.Generator().manual_seed(5)               # the documented draw, by hand
    offsets = torch.randint(0, 3000 - 40 + 1, (6,), generator=ref_gen)
    expected = torch.stack([stream[o:o + 40] for o in offsets.tolist()])
    for given in (stream, stream[None], stream.tolist()):   # (1, N): a tokenizer's output
        cs = CalibrationSet.from_ids(given, n=6, seq_len=40, masking="none", seed=5)
        assert torch.equal(cs.clean_ids, expected)
    # documents of different lengths are one stream, as before
    docs = [list(range(0, 1000)), list(range(1000, 3000))]
    cs = CalibrationSet.from_ids(docs, n=6, seq_len=40, masking="none", seed=5)
    assert torch.equal(cs.clean_ids, expected)
    # rows with windows="random" asked for explicitly: flattened, the old behaviour
    cs = CalibrationSet.from_ids(stream.view(30, 100), n=6, seq_len=40, masking="none", seed=5,
                                 windows="random")
    assert torch.equal(cs.clean_ids, expected)


def test_stream_defaults_and_bad_ids_are_errors():
    cs = CalibrationSet.from_ids(torch.arange(600) % 200, masking="none")
    assert cs.clean_ids.shape == (128, 512)                  # n=128, seq_len=512 for a stream
    with pytest.raises(CalibrationError, match="integers"):
        CalibrationSet.from_ids(torch.rand(4, 8), masking="none")
    with pytest.raises(CalibrationError, match="got text"):
        CalibrationSet.from_ids("abc", masking="none")
    with pytest.raises(CalibrationError, match="integers"):
        CalibrationSet.from_ids([["a", "b"], ["c"]], masking="none")
    with pytest.raises(CalibrationError, match="a str or a list of str"):
        CalibrationSet.from_texts(torch.arange(10), TOK)
    with pytest.raises(CalibrationError, match="windows='rows' takes a 2-D"):
        CalibrationSet.from_ids(torch.arange(100), masking="none", windows="rows")


# ---- from_texts: too little text is said --------------------------------------------------
def test_too_little_text_for_the_windows_is_one_warning(caplog):
    """Before: 8.8k tokens for 128 windows of 512 silently reused every token ~7 times."""
    text = "To be, or not to be, that is the question. " * 200        # 8,600 bytes
    assert len(TOK.encode(text)) + 1 == 8601                            # + EOS
    with caplog.at_level(logging.WARNING, logger="qpass"):
        CalibrationSet.from_texts([text], TOK, n=128, seq_len=512)
    lines = [r.getMessage() for r in caplog.records if r.name == "qpass"]
    assert len(lines) == 1
    line = lines[0]
    assert "8,601 tokens" in line and "65,536" in line and "n=128" in line
    assert "overlap" in line and "add text, or lower n or seq_len" in line
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="qpass"):
        CalibrationSet.from_texts([text], TOK, n=16, seq_len=512)     # 8,192 <= 8,601
        CalibrationSet.from_ids(_rows(4, 64), mask_id=MASK)           # rows never overlap
    assert not [r for r in caplog.records if r.name == "qpass"]


# ---- Pipeline.run: calib ------------------------------------------------------------------
def _observe():
    return qpass.Pipeline([P.RTN("int8:channel"), P.ObserveActivations("int8:tensor")],
                          verify=False)


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_run_takes_texts_as_the_documented_from_texts(tiny, monkeypatch):
    """Before: Pipeline.run(model, ["text"] * 4) ended in a raw error after the bars started."""
    monkeypatch.setattr(coerce, "DEFAULT_CALIB_N", 3)
    monkeypatch.setattr(coerce, "DEFAULT_CALIB_SEQ_LEN", 32)
    texts = ["ROMEO: But soft, what light through yonder window breaks? " * 4, "12+5=17\n" * 9]
    ref = CalibrationSet.from_texts(texts, tiny.tokenizer, n=3, seq_len=32, seed=1,
                                    masking="diffusion", vocab_size=tiny.config.vocab_size,
                                    mask_id=tiny.config.mask_token_id)
    got = _observe().run(tiny, texts, progress=False, seed=1)
    assert _same(got, _observe().run(tiny, ref, progress=False, seed=1))
    assert not _same(got, _observe().run(tiny, texts[:1], progress=False, seed=1))


def test_run_takes_token_rows_as_from_ids(tiny):
    rows = _rows(2, 32, seed=4)
    ref = CalibrationSet.from_ids(rows, mask_id=tiny.config.mask_token_id, seed=2,
                                  vocab_size=tiny.config.vocab_size)
    assert torch.equal(ref.clean_ids, rows)
    got = _observe().run(tiny, rows.tolist(), progress=False, seed=2)
    assert _same(got, _observe().run(tiny, ref, progress=False, seed=2))


def test_a_2d_id_tensor_is_one_batch_used_as_given(tiny):
    # the contract tests and users rely on: a (B, L) tensor is fed as qpass.capture takes it
    rows = _rows(2, 32, seed=4)
    assert _same(_observe().run(tiny, rows, progress=False), _observe().run(tiny, [rows], progress=False))


def test_short_texts_given_to_run_are_one_error_before_compute(tiny):
    with pytest.raises(CalibrationError) as e:
        _observe().run(tiny, ["text"] * 4, progress=False)
    msg = str(e.value)
    assert "\n" not in msg and "20 tokens" in msg and "CalibrationSet.from_texts" in msg
    assert "n=128, seq_len=512" in msg


@pytest.mark.parametrize("calib, words", [
    (5, "got int"),
    ({"a": 1}, "got dict"),
    ([1.5, 2.5], "got list of float"),
    (torch.rand(2, 16), "token ids must be integers"),
    ([torch.full((1, 16), 999)], "outside the model's vocabulary"),
    (torch.randint(0, 200, (2, 2000)), "exceed the model's 1024 positions"),
])
def test_calib_that_is_not_calibration_data_is_one_error(tiny, calib, words):
    with pytest.raises(CalibrationError) as e:
        _observe().run(tiny, calib, progress=False)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_text_calib_without_a_tokenizer_is_one_error(tiny):
    from qpass.calibration.coerce import as_calibration
    with pytest.raises(CalibrationError, match="carries no tokenizer"):
        as_calibration(["some text"], None, tiny.config)


# ---- Pipeline.run: model, out, probe, batch_size ----------------------------------------------
@pytest.mark.parametrize("model, error, words", [
    ([1, 2], PipelineError, "Pipeline.run takes a model"),
    (None, PipelineError, "got NoneType"),
    ("no-such-model", CheckpointError, "neither a zoo model"),
    ("llada-8b", PipelineError, "structure without weights"),
    ("tiny-llada", PipelineError, "pass out=DIR, or load the model"),
])
def test_a_model_argument_run_cannot_use_is_one_error(model, error, words):
    with pytest.raises(error) as e:
        _observe().run(model, None, progress=False)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_compiled_model_is_refused(tiny):
    done = qpass.Pipeline([P.RTN("int8:channel")], verify=False).run(tiny, progress=False)
    with pytest.raises(PipelineError, match="already compiled"):
        _observe().run(done, None, progress=False)


def test_a_zoo_name_with_out_streams_its_checkpoint(tiny, tmp_path):
    rows = _rows(2, 32, seed=6)
    streamed = _observe().run("tiny-llada", rows, out=tmp_path / "s", progress=False)
    assert streamed.path is not None
    again = qpass.load_compiled(streamed.path)
    in_memory = _observe().run(tiny, rows, progress=False)
    assert _same(again, in_memory)


@pytest.mark.parametrize("kw, error, words", [
    (dict(out=3), OutputPathError, "out must be a directory path"),
    (dict(out=""), OutputPathError, "empty path"),
    (dict(probe=torch.rand(1, 8)), PipelineError, "probe must be a (batch, length) tensor"),
    (dict(probe=[1, 2, 3]), PipelineError, "probe must be"),
    (dict(probe=torch.full((1, 8), 999)), PipelineError, "outside the model's vocabulary"),
    (dict(batch_size=0), PipelineError, "batch_size must be an int >= 1"),
])
def test_out_probe_and_batch_size_are_checked(tiny, kw, error, words):
    with pytest.raises(error) as e:
        _observe().run(tiny, _rows(2, 16), progress=False, **kw)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_batches_of_text_are_refused_where_stats_are_collected(tiny):
    from qpass.calibration.stats import iter_batches
    with pytest.raises(CalibrationError, match="not text"):
        list(iter_batches("some text"))


def test_ids_for_a_transformers_causal_model_are_plain_windows():
    """A transformers module's config is read as qpass reads it: a causal model gets
    masking="none" (it has no mask id), and its positions bound the windows."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=96, vocab_size=83, num_hidden_layers=1,
                                   max_position_embeddings=64)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    rows = torch.randint(0, 83, (2, 32), generator=torch.Generator().manual_seed(7))
    ref = CalibrationSet.from_ids(rows, masking="none")
    assert _same(_observe().run(hf, rows, progress=False), _observe().run(hf, ref, progress=False))
    with pytest.raises(CalibrationError, match="exceed the model's 64 positions"):
        _observe().run(hf, torch.randint(0, 83, (2, 100)), progress=False)

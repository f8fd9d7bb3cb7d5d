"""Issue 25, the read side: a stranger's folder (HF model dir, compiled checkpoint, eval data)
cannot make qpass read outside it, read forever, or leak a file into what it writes
(qpass.folders; DESIGN §6)."""
import json
import os
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path

import pytest

import qpass
from qpass import models, passes
from qpass.errors import CheckpointError, QpassError, UnsafeFileError
from qpass.models.loading import save_checkpoint
from qpass.runtime import load_compiled
from qpass.runtime.loading import is_compiled_dir

SECRET = "-----BEGIN OPENSSH PRIVATE KEY----- not-for-publishing"


@contextmanager
def deadline(seconds=30):
    """A read that hangs fails the test instead of hanging the suite."""
    def boom(*_):
        raise TimeoutError("the read hung")
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture
def secret(tmp_path):
    home = tmp_path / "home" / ".ssh"
    home.mkdir(parents=True)
    (home / "id_ed25519").write_text(SECRET)
    return home / "id_ed25519"


def _hf_tokenizer():
    from tokenizers import Tokenizer, models as tm, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tk = Tokenizer(tm.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.train_from_iterator(["hello world"] * 5, trainers.BpeTrainer(
        vocab_size=259, special_tokens=["<eos>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>")


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """tiny-llada as an HF directory with a transformers tokenizer."""
    d = tmp_path_factory.mktemp("hf") / "model"
    m = models.load("tiny-llada")
    m.tokenizer = None
    save_checkpoint(m, d)
    _hf_tokenizer().save_pretrained(str(d))
    return d


@pytest.fixture(scope="module")
def compiled_dir(hf_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ck") / "w4"
    qpass.Pipeline([passes.RTN()], scheme="int4:g32:sym").run(models.load(hf_dir), out=out)
    return out


def _copy(src, dst):
    shutil.copytree(src, dst, symlinks=True)
    return dst


# ---- symlinks out of the folder ----------------------------------------------------------
def test_tokenizer_file_linking_out_is_refused_and_never_reaches_an_output(hf_dir, secret,
                                                                          tmp_path):
    d = _copy(hf_dir, tmp_path / "m")
    (d / "chat_template.jinja").symlink_to(secret)
    with pytest.raises(UnsafeFileError, match="chat_template.jinja .*outside the folder"):
        models.load(d)
    out = tmp_path / "w4"
    with pytest.raises(QpassError):
        qpass.Pipeline([passes.RTN()], scheme="int4:g32:sym").run(models.load(d, device="meta"),
                                                                  out=out)
    assert not out.exists()


def test_a_regular_tokenizer_still_loads_and_round_trips(hf_dir, compiled_dir):
    tok = models.load(hf_dir).tokenizer
    assert tok.name_or_path == str(hf_dir) and tok("hello")["input_ids"]
    assert load_compiled(compiled_dir).tokenizer.get_vocab() == tok.get_vocab()


def test_a_checkpoint_reads_only_the_tokenizer_files_its_manifest_hashes(compiled_dir, secret,
                                                                         tmp_path):
    d = _copy(compiled_dir, tmp_path / "ck")
    (d / "chat_template.jinja").write_text("{{ 'LEAKED' }}")      # not in the manifest
    (d / "added_tokens.json").symlink_to(secret)
    tok = load_compiled(d).tokenizer
    assert not getattr(tok, "chat_template", None)
    assert "LEAKED" not in json.dumps(tok.get_vocab())


def test_a_shard_linking_out_of_the_folder_is_refused(hf_dir, tmp_path):
    outside = _copy(hf_dir, tmp_path / "elsewhere")
    d = _copy(hf_dir, tmp_path / "m")
    (d / "model.safetensors").unlink()
    (d / "model.safetensors").symlink_to(outside / "model.safetensors")
    with pytest.raises(UnsafeFileError, match="model.safetensors resolves to .*outside the folder"):
        models.load(d)


def test_links_inside_the_folder_and_the_hf_cache_layout_are_fine(hf_dir, tmp_path):
    repo = tmp_path / "models--org--tiny"
    snap, blobs = repo / "snapshots" / "abc123", repo / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    for f in hf_dir.iterdir():
        shutil.copy(f, blobs / f"blob-{f.name}")
        (snap / f.name).symlink_to(Path("..", "..", "blobs", f"blob-{f.name}"))
    assert models.load(snap).config.n_layers == models.load(hf_dir).config.n_layers


# ---- unbounded reads and hangs -----------------------------------------------------------
def test_sha256sums_linking_to_dev_zero_is_refused_at_once(compiled_dir, tmp_path):
    d = _copy(compiled_dir, tmp_path / "ck")
    (d / "SHA256SUMS").unlink()
    (d / "SHA256SUMS").symlink_to("/dev/zero")
    with deadline(), pytest.raises(UnsafeFileError, match="SHA256SUMS"):
        load_compiled(d)


def test_a_huge_sparse_sha256sums_is_refused_without_reading_it(compiled_dir, tmp_path):
    d = _copy(compiled_dir, tmp_path / "ck")
    with open(d / "SHA256SUMS", "r+b") as f:
        f.truncate(64 << 30)                                   # 64 GiB, sparse
    with deadline(), pytest.raises(UnsafeFileError, match="over qpass's cap"):
        load_compiled(d)


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_a_fifo_or_device_in_place_of_a_file_never_hangs(hf_dir, tmp_path, name):
    d = _copy(hf_dir, tmp_path / "m")
    (d / name).unlink()
    os.mkfifo(d / name)
    with deadline(), pytest.raises(UnsafeFileError, match="not a regular file .*FIFO"):
        models.load(d)
    (d / name).unlink()
    (d / name).symlink_to("/dev/urandom")
    with deadline(), pytest.raises(UnsafeFileError, match="outside the folder"):
        models.load(d)


def test_eval_data_linking_to_dev_zero_is_refused(tmp_path):
    from qpass.eval.tasks import eval_text
    (tmp_path / "python_test.txt").symlink_to("/dev/zero")
    with deadline(), pytest.raises(UnsafeFileError, match="python_test.txt"):
        eval_text("python_test.txt", tmp_path)


# ---- malformed JSON: one error line -------------------------------------------------------
@pytest.mark.parametrize("text", ["[1, 2]", "[" * 100_000, '{"format": 7}', "\xff"])
def test_a_malformed_manifest_is_not_a_checkpoint_and_fails_to_load_in_one_line(compiled_dir,
                                                                                tmp_path, text):
    import hashlib
    d = _copy(compiled_dir, tmp_path / "ck")
    (d / "manifest.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    (d / "SHA256SUMS").write_text(
        f"{hashlib.sha256((d / 'manifest.json').read_bytes()).hexdigest()}  manifest.json\n")
    assert not is_compiled_dir(d)
    with pytest.raises(CheckpointError):
        load_compiled(d)


@pytest.mark.parametrize("field,value,match", [
    ("files", ["model.safetensors"], r"\.files must be an object"),
    ("graph", {"nodes": 3, "modules": {}}, r"\.graph\.nodes must be a list"),
    ("weights", "model.safetensors", r"\.weights must be a list"),
    ("pipeline", [{"name": 3}], r"\.pipeline\[0\]\.name must be a string"),
    ("report", [1], r"\.report must be an object or null"),
    ("files", lambda files: {**files, "../x": "00"}, r"bad checkpoint file name '\.\./x'"),
])
def test_manifest_fields_of_the_wrong_type_are_named(compiled_dir, tmp_path, field, value, match):
    from tamper import tampered

    def mutate(m):
        m[field] = value(m[field]) if callable(value) else value
    d = tampered(compiled_dir, tmp_path / "ck", mutate)
    with pytest.raises(CheckpointError, match=match):
        load_compiled(d)


def test_an_hf_config_that_is_not_an_object_is_one_error(hf_dir, tmp_path):
    d = _copy(hf_dir, tmp_path / "m")
    (d / "config.json").write_text("[" * 50_000)
    with pytest.raises(UnsafeFileError, match="config.json is JSON nested too deeply"):
        models.load(d)
    (d / "config.json").write_text("[]")
    with pytest.raises(UnsafeFileError, match="config.json must be an object, not a list"):
        models.load(d)


def test_an_index_naming_a_shard_outside_the_folder_is_refused(hf_dir, tmp_path):
    d = _copy(hf_dir, tmp_path / "m")
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"model.embed_tokens.weight": "../elsewhere/model.safetensors"}}))
    with pytest.raises(UnsafeFileError, match="bad shard name"):
        models.load(d)

"""A checkpoint's generation_config.json gives `qpass.sampling.generate` its defaults, as in
transformers; explicit arguments win; compiled checkpoints carry them (issue 26)."""
import json
import shutil

import pytest
import torch

import qpass
from qpass.errors import CheckpointError
from qpass.models.loading import ZOO_DIR
from qpass.sampling import generate, generate_dream, generate_llada, generation_defaults
from qpass.sampling.defaults import fitting_block_length, with_generation_defaults


@pytest.fixture(scope="module")
def tiny():
    return qpass.models.load("tiny-llada")


def test_the_zoo_model_records_its_block_length(tiny):
    assert generation_defaults(tiny)["block_length"] == 2
    assert generation_defaults(qpass.models.load("tiny-dream")) == {"block_length": 2,
                                                                    "alg": "origin"}
    assert generation_defaults(qpass.models.load("tiny-llada-random")) == {}


def test_generate_applies_the_default_and_an_explicit_argument_wins(tiny):
    ids = torch.tensor([tiny.tokenizer.encode("ROMEO:")])
    kw = dict(gen_length=8, steps=8)
    assert torch.equal(generate(tiny, ids, **kw), generate_llada(tiny, ids, block_length=2, **kw))
    assert torch.equal(generate(tiny, ids, block_length=8, **kw),
                       generate_llada(tiny, ids, block_length=8, **kw))
    # None counts as left out (what the CLI passes without --block-length)
    assert torch.equal(generate(tiny, ids, block_length=None, **kw), generate(tiny, ids, **kw))


@pytest.mark.parametrize("want,gen,steps,got", [(8, 64, 64, 8), (8, 12, 12, 6), (8, 4, 4, 4),
                                                (8, 64, 32, 8), (8, 64, 4, 16), (2, 7, None, 1)])
def test_a_default_that_does_not_fit_becomes_the_nearest_that_does(want, gen, steps, got):
    assert fitting_block_length(want, gen, steps) == got


def test_defaults_never_turn_a_valid_call_into_an_error(tiny):
    class M:   # a model whose default block does not divide the call's gen_length
        config = tiny.config.replace(extra={"generation": {"block_length": 8}})
    kw = with_generation_defaults(M(), generate_llada, dict(gen_length=12, steps=3))
    assert kw["block_length"] == 4                         # 3 blocks of 4, one step each
    kw = with_generation_defaults(M(), generate_llada, dict(gen_length=12, threshold=0.9))
    assert kw["block_length"] == 6                         # threshold: steps unused
    # keys a sampler does not take are left out (Dream has no remasking)
    dream_cfg = tiny.config.replace(extra={"generation": {"remasking": "random", "alg": "entropy"}})
    M.config = dream_cfg
    assert with_generation_defaults(M(), generate_dream, {}) == {"alg": "entropy"}


def test_compiled_checkpoints_and_hf_saves_carry_the_defaults(tiny, tmp_path):
    pipe = qpass.presets.get("w4a16-rtn")
    calib = qpass.calibration.build_calibration(pipe, tiny, 2, 32)
    out = pipe.run(tiny, calib, verify=False)
    out.save(tmp_path / "w4")
    again = qpass.load_compiled(tmp_path / "w4")
    assert generation_defaults(again) == generation_defaults(tiny)
    streamed = qpass.Pipeline([qpass.passes.RTN()], scheme="int4:g128:sym").run(
        str(ZOO_DIR / "tiny-llada"), out=tmp_path / "streamed", progress=False)
    assert generation_defaults(qpass.load_compiled(streamed.path)) == generation_defaults(tiny)
    qpass.models.save_checkpoint(tiny, tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "generation_config.json").read_text())["block_length"] == 2
    assert generation_defaults(qpass.models.load(tmp_path / "hf")) == generation_defaults(tiny)


@pytest.mark.parametrize("bad,where", [({"block_length": 0}, "block_length"),
                                       ({"block_length": "8"}, "block_length"),
                                       ({"block_length": 4096}, "block_length"),
                                       ({"alg": "greedy"}, "alg"), ([1, 2], "must be an object")])
def test_a_bad_generation_config_is_one_checkpoint_error(tmp_path, bad, where):
    d = tmp_path / "m"
    shutil.copytree(ZOO_DIR / "tiny-dream", d, ignore=shutil.ignore_patterns("train_log.json"))
    (d / "generation_config.json").write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match=where) as e:
        qpass.models.load(d)
    assert "generation_config.json" in str(e.value)


def test_unknown_keys_of_a_real_generation_config_are_ignored(tmp_path):
    d = tmp_path / "m"
    shutil.copytree(ZOO_DIR / "tiny-dream", d, ignore=shutil.ignore_patterns("train_log.json"))
    (d / "generation_config.json").write_text(json.dumps(
        {"temperature": 0.2, "top_p": 0.95, "max_new_tokens": 512, "eos_token_id": 257}))
    assert generation_defaults(qpass.models.load(d)) == {}

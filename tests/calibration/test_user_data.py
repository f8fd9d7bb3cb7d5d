"""The user's calibration data (`--calib PATH`), recipe files, and the rule that a real
checkpoint is never calibrated silently on the embedded corpora."""
import json

import pytest
import torch

import qpass
from qpass.calibration.texts import read_texts
from qpass.cli import main


def _write(tmp_path):
    (tmp_path / "a.txt").write_text("the first document\nover two lines\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.jsonl").write_text(
        json.dumps({"text": "second", "id": 1}) + "\n\n" + json.dumps({"text": "third"}) + "\n")
    (tmp_path / "skip.csv").write_text("not,read\n")


def test_txt_jsonl_and_folders_in_a_fixed_order(tmp_path):
    _write(tmp_path)
    assert read_texts(tmp_path / "a.txt") == ["the first document\nover two lines\n"]
    assert read_texts(tmp_path / "sub" / "b.jsonl") == ["second", "third"]
    assert read_texts(tmp_path) == ["the first document\nover two lines\n", "second", "third"]


@pytest.mark.parametrize("content, words", [("{\"txt\": \"x\"}\n", "string 'text' field"),
                                            ("not json\n", "b.jsonl:1 is not valid JSON")])
def test_bad_jsonl_names_file_and_line(tmp_path, content, words):
    (tmp_path / "b.jsonl").write_text(content)
    with pytest.raises(qpass.CalibrationError, match=words):
        read_texts(tmp_path / "b.jsonl")


def test_unknown_and_empty_inputs_are_clear_errors(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(qpass.CalibrationError, match="neither .txt nor .jsonl"):
        read_texts(tmp_path / "x.csv")
    with pytest.raises(qpass.CalibrationError, match="does not exist"):
        read_texts(tmp_path / "missing")
    (tmp_path / "e").mkdir()
    with pytest.raises(qpass.CalibrationError, match="no .txt or .jsonl"):
        read_texts(tmp_path / "e")


def test_saved_hf_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": ["alpha beta", "gamma"], "n": [1, 2]}).save_to_disk(
        str(tmp_path / "ds"))
    assert read_texts(tmp_path / "ds") == ["alpha beta", "gamma"]
    with pytest.raises(qpass.CalibrationError, match="no 'body' column"):
        read_texts(tmp_path / "ds", field="body")


def test_calib_flag_is_what_gptq_calibrates_on(tmp_path):
    """The same --calib file through the CLI and through the API gives the same checkpoint."""
    data = tmp_path / "calib.jsonl"
    data.write_text("".join(json.dumps({"text": f"x = {i} + {i * 3}\nprint(x)\n"}) + "\n"
                            for i in range(60)))
    out = tmp_path / "w4"
    assert main(["quantize", "tiny-llada", "--pipeline", "w4a16-gptq", "--out", str(out),
                 "--calib", str(data), "--calib-n", "4", "--seq-len", "64", "--quiet",
                 "--device", "cpu"]) == 0
    model = qpass.models.load("tiny-llada")
    calib = qpass.calibration.CalibrationSet.from_texts(
        read_texts(data), model.tokenizer, n=4, seq_len=64, vocab_size=model.config.vocab_size,
        mask_id=model.config.mask_token_id)
    again = qpass.presets.get("w4a16-gptq").run(model, calib, progress=False)
    ids = torch.tensor([model.tokenizer.encode("print(1 + 2)\n")])
    with torch.no_grad():
        assert torch.equal(qpass.load_compiled(out)(ids), again(ids))


def test_a_real_checkpoint_needs_calib(tmp_path, capsys):
    ckpt = tmp_path / "hf"
    qpass.models.loading.save_checkpoint(qpass.models.load("tiny-llada"), ckpt)
    assert main(["quantize", str(ckpt), "--pipeline", "w4a16-gptq", "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--calib PATH" in err and "not an embedded zoo model" in err
    assert not (tmp_path / "o").exists()


def test_recipe_file(tmp_path):
    recipe = tmp_path / "recipe.py"
    recipe.write_text("from qpass import Pipeline, passes as P\n"
                      "pipeline = Pipeline([P.FuseNorms(), P.RTN()], scheme='w8a8')\n")
    out = tmp_path / "r"
    assert main(["quantize", "tiny-llada", "--pipeline", str(recipe), "--out", str(out),
                 "--quiet"]) == 0
    loaded = qpass.load_compiled(out)
    assert loaded.specs()["blocks.0.q_proj"] == {"weight": "int8:channel", "act": "int8:token:dyn"}
    bad = tmp_path / "bad.py"
    bad.write_text("pipeline = 3\n")
    assert main(["quantize", "tiny-llada", "--pipeline", str(bad), "--out",
                 str(tmp_path / "b")]) == 2

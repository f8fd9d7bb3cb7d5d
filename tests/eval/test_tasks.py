"""Task registry, cloze construction, math prompts, the runner, the CLI and (when present) the
trained zoo model."""
import argparse
import json
import math
import re
from pathlib import Path

import pytest

import qpass
from qpass.errors import QpassError
from qpass.eval import build_cloze, evaluate, results_table
from qpass.cli.eval import add_eval_command
from qpass.eval.tasks import TaskContext, leading_number, math_problems

ZOO = Path(qpass.__file__).parent / "zoo" / "tiny-llada"


def test_cloze_items_are_valid_and_deterministic(eval_dir):
    text = (eval_dir / "shakespeare_test.txt").read_text()
    items = build_cloze(text, 10, seed=0)
    assert items == build_cloze(text, 10, seed=0) and items != build_cloze(text, 10, seed=1)
    assert 0 < len(items) <= 10
    lines = text.splitlines()
    for it in items:
        assert len(it.options) == 4 and len(set(it.options)) == 4
        true = it.options[it.label]
        assert all(abs(len(o) - len(true)) <= 1 for o in it.options)
        # Putting the true word back gives the end of a real line of the text.
        line = (it.left + true + it.right).split("\n")[-2]
        assert line in lines and re.fullmatch(r"[A-Za-z]{3,}", true)


def test_leading_number():
    assert leading_number("85\n12+") == "85"
    assert leading_number("7x") == "7" and leading_number(" 7") == "" and leading_number("") == ""


def test_math_prompts(eval_dir):
    ctx = TaskContext(tokenizer=None, data_dir=eval_dir, seed=0, limit=3)
    problems = math_problems(ctx)
    assert len(problems) == 3 and problems == math_problems(ctx)
    for prompt, answer in problems:
        *shots, question = prompt.split("\n")
        assert len(shots) == 3
        for s in shots:
            a, rest = s.split("+")
            b, c = rest.split("=")
            assert int(a) + int(b) == int(c)
        a, b = question.rstrip("=").split("+")
        assert question.endswith("=") and str(int(a) + int(b)) == answer


def test_evaluate_small(byte_model, eval_dir):
    r = evaluate(byte_model, limit=2, data_dir=eval_dir, text_bytes=600, n_mc=2, cloze_mc=2)
    assert set(r["tasks"]) == {"general", "math", "code"}
    g, m, c = r["tasks"]["general"], r["tasks"]["math"], r["tasks"]["code"]
    assert abs(g["bits_per_byte"] - math.log2(264)) < 0.5 and g["bits_per_byte_stderr"] > 0
    assert g["cloze_n"] == 2 and 0 <= g["cloze_acc"] <= 1
    assert m["n"] == 2 and 0 <= m["exact_match"] <= 1
    assert c["tokens"] <= 2 * 256
    assert results_table(r).row_count >= 5
    json.dumps(r)  # JSON-ready


def test_evaluate_rejects_unknown_names(byte_model):
    with pytest.raises(QpassError, match="unknown task"):
        evaluate(byte_model, tasks=("general", "poetry"))
    with pytest.raises(QpassError, match="settings"):
        evaluate(byte_model, tasks=("math",), n_draws=3)


def test_cli_eval_writes_json(byte_model, eval_dir, tmp_path, capsys):
    ckpt = qpass.models.save_checkpoint(byte_model, tmp_path / "ckpt")
    (ckpt / "eval").symlink_to(eval_dir, target_is_directory=True)
    parser = argparse.ArgumentParser(prog="qpass")
    add_eval_command(parser.add_subparsers(dest="command"))
    out = tmp_path / "out.json"
    args = parser.parse_args(["eval", str(ckpt), "--tasks", "math,code", "--limit", "2",
                              "--json", str(out), "--text-bytes", "400"])
    assert args.func(args) == 0
    data = json.loads(out.read_text())
    assert set(data["tasks"]) == {"math", "code"} and data["limit"] == 2
    assert "exact_match" in capsys.readouterr().out


@pytest.mark.skipif(not (ZOO / "config.json").exists(), reason="trained tiny-llada not built yet")
def test_trained_zoo_model_beats_chance():
    model = qpass.models.load("tiny-llada")
    r = evaluate(model, limit=8, n_mc=2, cloze_mc=4)["tasks"]
    assert r["general"]["bits_per_byte"] < 4.54  # the unigram entropy of the Shakespeare bytes
    assert r["code"]["bits_per_byte"] < 5.0
    assert r["general"]["cloze_acc"] > 0.25  # chance with 4 options
    assert 0 <= r["math"]["exact_match"] <= 1

"""The lm-eval adapter run through the real lm-eval (simple_evaluate and the `lm_eval` command)
on local tasks over the zoo's held-out data; its numbers must equal qpass's own evaluators run
with the same estimator, settings and seed."""
import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

import qpass
from qpass.errors import QpassError

lm_eval = pytest.importorskip("lm_eval", reason="the `eval` extra (pip install -e .[eval])")

from qpass.eval.family_likelihood import family_choice  # noqa: E402
from qpass.eval.lm_eval import QpassLM  # noqa: E402
from qpass.eval.lm_eval_tasks import (ARITH_TASK, CLOZE_TASK, arith_rows, cloze_rows,  # noqa: E402
                                      write_local_tasks)
from qpass.sampling.common import encode_text  # noqa: E402

N_CLOZE, N_ARITH, MC = 8, 8, 4
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    return write_local_tasks(tmp_path_factory.mktemp("lm_eval_tasks"), n_cloze=N_CLOZE,
                             n_arith=N_ARITH, seed=0)


@pytest.fixture(scope="module")
def tiny():
    return qpass.models.load("tiny-llada")


def _simple_evaluate(lm, tasks_dir, names, **kw):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager
    for k, v in OFFLINE.items():
        os.environ.setdefault(k, v)
    return simple_evaluate(model=lm, tasks=names, task_manager=TaskManager(include_path=str(tasks_dir),
                                                                          include_defaults=False),
                           log_samples=True, bootstrap_iters=0, **kw)


def test_cloze_accuracy_equals_qpass_family_estimator(tiny, tasks_dir):
    lm = QpassLM(model=tiny, mc_num=MC, batch_size=MC, seed=0)
    res = _simple_evaluate(lm, tasks_dir, [CLOZE_TASK])
    tok = tiny.tokenizer
    picks, lls = [], []
    for row in cloze_rows(N_CLOZE, seed=0):
        best, scores = family_choice(tiny, encode_text(tok, row["context"]),
                                     [encode_text(tok, c) for c in row["choices"]],
                                     mc_num=MC, batch_size=MC, seed=0)
        picks.append(best == row["label"])
        lls.append(scores)
    acc = res["results"][CLOZE_TASK]["acc,none"]
    assert acc == pytest.approx(sum(picks) / len(picks), abs=1e-12)
    got = [[float(r[0][0]) for r in s["resps"]] for s in res["samples"][CLOZE_TASK]]
    order = [s["doc_id"] for s in res["samples"][CLOZE_TASK]]
    got = [v for i in range(N_CLOZE) for v in got[order.index(i)]]
    assert got == pytest.approx([v for row in lls for v in row], abs=1e-9)


def test_arith_exact_match_equals_qpass_math_task(tiny, tasks_dir):
    lm = QpassLM(model=tiny, batch_size=N_ARITH, gen_length=4, steps=4, block_length=4, seed=0)
    res = _simple_evaluate(lm, tasks_dir, [ARITH_TASK])
    own = qpass.eval.evaluate(tiny, tasks="math", limit=N_ARITH, seed=0, math_items=N_ARITH)
    em = res["results"][ARITH_TASK]["exact_match,leading-digits"]
    assert em == pytest.approx(own["tasks"]["math"]["exact_match"], abs=1e-12)
    assert own["tasks"]["math"]["exact_match"] > 0  # the trained model adds some: a real check


def test_generate_until_stops_and_left_pads(tiny):
    lm = QpassLM(model=tiny, batch_size=4, gen_length=8, steps=8, block_length=8)
    rows = arith_rows(3, seed=1)
    reqs = [SimpleNamespace(args=(r["prompt"], {"until": ["\n"], "max_gen_toks": 8})) for r in rows]
    batched = lm.generate_until(reqs)
    alone = [lm.generate_until([r])[0] for r in reqs]
    assert batched == alone  # left padding with key masks: a row does not see the others
    assert all("\n" not in t for t in batched)


def test_loglikelihood_rolling_is_the_elbo(tiny):
    text = cloze_rows(1, seed=3)[0]["context"] * 3
    lm = QpassLM(model=tiny, elbo_mc=4, batch_size=4, seed=2)
    (got,) = lm.loglikelihood_rolling([SimpleNamespace(args=(text,))])
    ids = encode_text(tiny.tokenizer, text)
    r = qpass.eval.elbo_ppl(tiny, [ids], seq_len=len(ids), n_mc=4, batch_size=4, seed=2)
    assert got == pytest.approx(-r.nll_per_token * len(ids), rel=1e-12)
    assert got < 0


def test_dream_family_uses_dreams_estimator(context_free):
    m = context_free(seed=5, logit_shift=True)
    m.config.eos_token_id = 10
    m.tokenizer = SimpleNamespace(encode=lambda s: [int(c) for c in s], decode=lambda ids: "")
    lm = QpassLM(model=m, mc_num=8, batch_size=8, seed=1)
    assert lm.family == "dream"
    (ll, greedy), = lm.loglikelihood([SimpleNamespace(args=("12", "345"))])
    from qpass.eval.family_likelihood import dream_loglikelihood
    assert ll == dream_loglikelihood(m, [1, 2], [3, 4, 5], mc_num=8, batch_size=8, seed=1)
    assert greedy is False


def test_chat_template_used_when_the_tokenizer_has_one(tiny):
    lm = QpassLM(model=tiny)
    with pytest.raises(QpassError, match="no chat template"):
        lm.apply_chat_template([{"role": "user", "content": "hi"}])
    calls = []

    class ChatTok(type(tiny.tokenizer)):
        chat_template = "{{ messages }}"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            calls.append((messages, tokenize, add_generation_prompt))
            return "<user>" + messages[0]["content"]

    lm.tokenizer = ChatTok()
    assert lm.apply_chat_template([{"role": "user", "content": "hi"}]) == "<user>hi"
    assert calls == [([{"role": "user", "content": "hi"}], False, True)]


def test_bad_model_args_are_one_clear_error(tiny):
    with pytest.raises(QpassError, match="unknown qpass model_args"):
        QpassLM(model=tiny, mcnum=3)
    with pytest.raises(QpassError, match="exactly one"):
        QpassLM()


def test_lm_eval_command_line_runs_qpass_on_a_local_task(tiny, tasks_dir, tmp_path):
    out = tmp_path / "res"
    env = {**os.environ, **OFFLINE}
    cmd = [sys.executable, "-m", "lm_eval", "--model", "qpass",
           "--model_args", "pretrained=tiny-llada,device=cpu,mc_num=2,seed=0", "--batch_size", "2",
           "--tasks", CLOZE_TASK, "--include_path", str(tasks_dir), "--limit", "3",
           "--output_path", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    files = list(out.rglob("results*.json"))
    assert files, p.stdout[-2000:]
    acc = json.loads(files[0].read_text())["results"][CLOZE_TASK]["acc,none"]
    tok = tiny.tokenizer
    own = [family_choice(tiny, encode_text(tok, r["context"]), [encode_text(tok, c) for c in r["choices"]],
                         mc_num=2, batch_size=2, seed=0)[0] == r["label"] for r in cloze_rows(3, seed=0)]
    assert acc == pytest.approx(sum(own) / 3, abs=1e-12)


class _CharTok:
    """A character tokenizer for the fixtures' small random vocabularies (ids 0..89)."""
    eos_token_id = None

    def encode(self, text):
        return [ord(c) % 90 for c in text]

    def decode(self, ids):
        return "".join(chr(48 + int(i) % 40) for i in ids)


@pytest.mark.parametrize("name,family", [("llada_w4a4_quarot", "llada"),
                                         ("dream_w8a8_lowered", "dream")])
def test_lowered_checkpoints_run_through_the_adapter(name, family):
    from pathlib import Path
    from qpass.eval.family_likelihood import family_loglikelihood
    m = qpass.load_compiled(Path(__file__).parent.parent / "fixtures" / "ckpt_v1" / name)
    m.tokenizer = _CharTok()
    lm = QpassLM(model=m, mc_num=4, batch_size=4, gen_length=4, steps=4, block_length=4)
    assert lm.family == family
    (ll, _), = lm.loglikelihood([SimpleNamespace(args=("1+2=", "3"))])
    assert ll == family_loglikelihood(m, [49, 43, 50, 61], [51], mc_num=4, batch_size=4)
    texts = lm.generate_until([SimpleNamespace(args=(p, {"until": ["9"]})) for p in ("12", "345")])
    assert len(texts) == 2 and all("9" not in t for t in texts)


def test_compiled_checkpoint_dir_loads_by_pretrained(tiny, tmp_path):
    out = qpass.presets.get("w8a8-rtn").run(qpass.models.load("tiny-llada"), None)
    out.save(tmp_path / "w8a8")
    lm = QpassLM(pretrained=str(tmp_path / "w8a8"), mc_num=2, batch_size=2)
    assert type(lm.model).__name__ == "CompiledDenoiser" and lm.tokenizer is not None
    (ll, _), = lm.loglikelihood([SimpleNamespace(args=("To be or not to", " be"))])
    ids = encode_text(lm.tokenizer, "To be or not to"), encode_text(lm.tokenizer, " be")
    assert ll == family_choice(out, *ids[:1], [ids[1]], mc_num=2, batch_size=2)[1][0]

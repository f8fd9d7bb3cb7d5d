"""Generation speed of the samplers' K/V cache policies and parallel decoding (prints JSON).

tiny-llada on the CPU, LLaDA sampler, gen_length 256, block 32, steps 256 (one token a step
unless a threshold commits more): every configuration (model × cache × threshold) against
the uncached FP sampler measured in the same run.

* speed: `--speed-batch` few-shot math prompts generated to the full length; tokens/s =
  batch · gen_length / wall time, and per second of this process's CPU time (the dev box is
  shared, so wall time includes waiting for other users; one thread by default); NFE (forward passes), rows computed (position × batch row
  through the network); token agreement = fraction of generated tokens equal to the
  uncached FP sampler's.
* quality: math exact match (the `math` task's rule: the leading digits of the generation)
  over `--items` problems. Blocks are committed left to right and a committed token never
  changes, so a row's leading number is final once a newline is committed with nothing
  masked before it: these runs stop there (`stop_at_eos` with the newline id), which gives
  the exact match of the full-length run at a fraction of its cost.
* `--shots`: few-shot examples per prompt (the math task uses 3; Fast-dLLM's GSM8K figures
  use long few-shot prompts, where the prefix is a larger share of the sequence).

    python bench/generate_speed.py                       # the acceptance set (~10 min)
    python bench/generate_speed.py --models fp32,w4a16,w8a8 --shots 24
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import torch

import qpass
from qpass import passes as P
from qpass.eval.tasks import TaskContext, TaskSettings, leading_number, math_problems
from qpass.sampling import StepStats, generate_llada
from qpass.sampling.common import decode_text

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine  # noqa: E402

POLICIES = [("none", None), ("none", 0.9), ("prefix", None), ("prefix", 0.9), ("dual", None),
            ("dual", 0.9)]


def build_models(names: list[str]) -> dict:
    fp = qpass.models.load("tiny-llada")
    out = {}
    for name in names:
        if name == "fp32":
            out[name] = fp
        elif name in ("w4a16", "w8a8"):
            scheme = "w4a16g128" if name == "w4a16" else "w8a8"
            passes = ([] if name == "w4a16" else [P.FuseNorms()]) + \
                [P.RTN(scheme), P.Lower(backend="reference")]
            out[name] = qpass.Pipeline(passes).run(fp, progress=False)
        else:
            raise SystemExit(f"unknown model {name!r}; choose from fp32, w4a16, w8a8")
    return out


def run(model, prompts, cache, threshold, **kw):
    st = StepStats()
    t0, c0 = time.perf_counter(), time.process_time()
    out = generate_llada(model, prompts, cache=cache, threshold=threshold, stats=st, **kw)
    st.cpu_seconds = time.process_time() - c0
    return out, time.perf_counter() - t0, st


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="fp32", help="comma list of fp32, w4a16, w8a8 (lowered)")
    ap.add_argument("--policies", default=",".join(f"{c}:{t or 'none'}" for c, t in POLICIES),
                    help="policies run for fp32 (cache:threshold|none)")
    ap.add_argument("--lowered-policies", default="prefix:0.9,dual:0.9",
                    help="policies run for the lowered models (cache:threshold|none)")
    ap.add_argument("--items", type=int, default=50, help="math problems for exact match")
    ap.add_argument("--speed-batch", type=int, default=2, help="prompts in the timed runs")
    ap.add_argument("--quality-batch", type=int, default=10, help="prompts per quality batch")
    ap.add_argument("--shots", type=int, default=3)
    ap.add_argument("--gen-length", type=int, default=256)
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="gen 64, 8 items (a smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.gen_length, args.items = 64, 8
    torch.set_num_threads(args.threads)
    names = args.models.split(",")
    models = build_models(names)
    tok = models[names[0]].tokenizer
    settings = TaskSettings(math_items=args.items, math_shots=args.shots)
    problems = math_problems(TaskContext(tokenizer=tok, settings=settings))
    prompts = [tok.encode(p) for p, _ in problems]
    newline = tok.encode("\n")[0]
    kw = dict(gen_length=args.gen_length, steps=args.gen_length, block_length=args.block_length)

    def policies(text):
        out = []
        for item in text.split(","):
            cache, _, th = item.partition(":")
            out.append((cache, float(th) if th and th != "none" else None))
        return out
    lowered = policies(args.lowered_policies)
    configs = [("fp32", c, t) for c, t in policies(args.policies)] if "fp32" in models else []
    configs += [(n, c, t) for n in names if n != "fp32" for c, t in lowered]
    if ("fp32", "none", None) not in configs:
        configs.insert(0, ("fp32", "none", None))
        models.setdefault("fp32", qpass.models.load("tiny-llada"))

    rows, base = [], None
    for name, cache, threshold in configs:
        model = models[name]
        speed_prompts = prompts[:args.speed_batch]
        out, secs, st = run(model, speed_prompts, cache, threshold, **kw)
        gen = out[:, -args.gen_length:]
        answers, qsecs, qnfe = [], 0.0, 0
        for i in range(0, len(prompts), args.quality_batch):
            qout, s, qst = run(model, prompts[i:i + args.quality_batch], cache, threshold,
                               eos_id=newline, stop_at_eos=True, **kw)
            width = qout.shape[1] - args.gen_length
            answers += [leading_number(decode_text(tok, r[width:].tolist())) for r in qout]
            qsecs, qnfe = qsecs + s, qnfe + qst.nfe
        hits = [a == ans for a, (_, ans) in zip(answers, problems)]
        row = {"model": name, "cache": cache, "threshold": threshold,
               "tokens_per_s": gen.numel() / secs, "seconds": secs,
               "tokens_per_cpu_s": gen.numel() / st.cpu_seconds, "nfe": st.nfe,
               "refreshes": st.refreshes, "rows_computed": st.rows,
               "exact_match": sum(hits) / len(hits), "exact_match_n": len(hits),
               "quality_run_nfe": qnfe, "quality_run_seconds": qsecs}
        if base is None:
            base = {"gen": gen, "tps": row["tokens_per_s"], "cps": row["tokens_per_cpu_s"],
                    "rows": st.rows,
                    "em": row["exact_match"], "answers": answers}
        row.update(speedup=row["tokens_per_s"] / base["tps"],
                   speedup_cpu_time=row["tokens_per_cpu_s"] / base["cps"],
                   rows_vs_uncached=st.rows / base["rows"],
                   token_agreement=float((gen == base["gen"]).float().mean()),
                   exact_match_delta_points=100 * (row["exact_match"] - base["em"]),
                   same_answer=sum(a == b for a, b in zip(answers, base["answers"])) / len(hits))
        rows.append(row)
        print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                          for k, v in row.items()}), flush=True)

    print(json.dumps({
        "bench": "generate_speed", "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="minutes"), "machine": machine(),
        "model": "tiny-llada", "sampler": "llada low_confidence, temperature 0",
        "gen_length": args.gen_length, "block_length": args.block_length,
        "steps": args.gen_length, "shots": args.shots,
        "prompt_tokens": [len(p) for p in prompts[:args.speed_batch]],
        "speed_batch": args.speed_batch, "items": len(problems),
        "baseline": "fp32, cache none, no threshold (same run)", "rows": rows}))


if __name__ == "__main__":
    main()

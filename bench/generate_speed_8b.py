"""Cache speed at LLaDA-8B shapes (prints JSON): a 2-layer model with LLaDA-8B's widths and
vocabulary (random weights), fp32 and lowered w4a16 / w8a8, K/V cache none / prefix / dual.

Random weights make confidences flat, so a threshold commits one token a step like the plain
schedule: this run measures what the cache saves per forward at real widths (the head alone
is a 4096 × 126464 matmul per computed row), not parallel decoding, and token agreement of the
cached runs with the uncached run of the same model. Each model is built, timed and freed in
turn (fp32 at these shapes is ~6 GB). Ratios are against the uncached run of the same model
and against uncached fp32, all measured in this run.

    python bench/generate_speed_8b.py                          # ~10 min on 2 shared cores
    python bench/generate_speed_8b.py --gen-length 64 --prompt-length 64 --models fp32
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import sys

import torch

import qpass
from qpass import passes as P
from qpass.models import Denoiser, init_weights, llada_8b

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import machine  # noqa: E402
from generate_speed import run  # noqa: E402


def build(name: str, layers: int, seed: int):
    cfg = llada_8b().replace(n_layers=layers, max_seq_len=1024, name=f"llada-8b-{layers}l")
    fp = init_weights(Denoiser(cfg), seed=seed).eval()
    if name == "fp32":
        return fp
    scheme = {"w4a16": "w4a16g128", "w8a8": "w8a8"}[name]
    passes = ([] if name == "w4a16" else [P.FuseNorms()]) + [P.RTN(scheme),
                                                             P.Lower(backend="reference")]
    out = qpass.Pipeline(passes, verify=False).run(fp, progress=False)
    del fp
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="fp32,w4a16,w8a8")
    ap.add_argument("--policies", default="none,prefix,dual")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--gen-length", type=int, default=32)
    ap.add_argument("--block-length", type=int, default=32)
    ap.add_argument("--prompt-length", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = llada_8b()
    g = torch.Generator().manual_seed(0)
    prompts = torch.randint(0, cfg.mask_token_id, (args.batch, args.prompt_length), generator=g)
    kw = dict(gen_length=args.gen_length, steps=args.gen_length, block_length=args.block_length)
    rows, fp_base = [], None
    for name in args.models.split(","):
        model = build(name, args.layers, seed=0)
        base = None
        for cache in args.policies.split(","):
            out, secs, st = run(model, prompts, cache, None, **kw)
            gen = out[:, -args.gen_length:]
            row = {"model": name, "cache": cache, "seconds": secs,
                   "tokens_per_s": gen.numel() / secs,
                   "tokens_per_cpu_s": gen.numel() / st.cpu_seconds,
                   "nfe": st.nfe, "refreshes": st.refreshes, "rows_computed": st.rows}
            if base is None:
                base = dict(row, gen=gen)
            if fp_base is None:
                fp_base = row
            row.update(speedup_vs_uncached_same_model=row["tokens_per_s"] / base["tokens_per_s"],
                       cpu_speedup_vs_uncached_same_model=row["tokens_per_cpu_s"]
                       / base["tokens_per_cpu_s"],
                       speedup_vs_uncached_fp32=row["tokens_per_s"] / fp_base["tokens_per_s"],
                       rows_vs_uncached=st.rows / base["rows_computed"],
                       token_agreement_vs_uncached=float((gen == base["gen"]).float().mean()))
            rows.append(row)
            print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v)
                              for k, v in row.items()}), flush=True)
        del model
        gc.collect()
    print(json.dumps({
        "bench": "generate_speed_8b",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
        "machine": machine(), "shape": f"llada-8b widths, {args.layers} layers, random weights",
        "sampler": "llada low_confidence, temperature 0, no threshold",
        "gen_length": args.gen_length, "block_length": args.block_length,
        "prompt_length": args.prompt_length, "batch": args.batch, "threads": args.threads,
        "rows": rows}))


if __name__ == "__main__":
    main()

"""What quantizing K/V costs on tiny-llada (the kv8 / kv4 scheme suffixes; prints JSON).

Every model is evaluated on the same tasks in one run (qpass.eval.evaluate: Shakespeare and
Python bits per byte by the masked-diffusion ELBO, cloze accuracy, math exact match) and
reported next to the FP model and next to its twin without K/V quantization:
  fp32, kv8 / kv4 only (linears stay fp32), w8a8 (RTN) and w8a8kv8 / w8a8kv4.
The K/V-quantized graphs run integer Q·Kᵀ and P·V (qpass.formats.attention), simulated and
lowered alike (the lowered twin is bit-identical, tests/backends/test_kv_attention.py).

    python bench/kv_quant_cost.py            # ~3 min on one CPU thread
"""
from __future__ import annotations

import argparse
import datetime
import json
import time

import torch

import qpass
from qpass import passes as P
from qpass.specs import QuantSpec, Scheme


def kv_only(bits: int) -> Scheme:
    return Scheme(f"kv{bits}", weight=None, act=None,
                  attn=QuantSpec(bits, granularity="token", dynamic=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="cap items / chunks per task")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="limit 8")
    args = ap.parse_args()
    limit = 8 if args.quick else args.limit
    torch.set_num_threads(args.threads)
    fp = qpass.models.load("tiny-llada")
    builds = {
        "fp32": lambda: fp,
        "kv8": lambda: qpass.Pipeline([P.RTN(kv_only(8))]).run(fp, progress=False),
        "kv4": lambda: qpass.Pipeline([P.RTN(kv_only(4))]).run(fp, progress=False),
        "w8a8": lambda: qpass.Pipeline([P.FuseNorms(), P.RTN("w8a8")]).run(fp, progress=False),
        "w8a8kv8": lambda: qpass.Pipeline([P.FuseNorms(), P.RTN("w8a8kv8")]).run(fp, progress=False),
        "w8a8kv4": lambda: qpass.Pipeline([P.FuseNorms(), P.RTN("w8a8kv4")]).run(fp, progress=False),
    }
    twin = {"kv8": "fp32", "kv4": "fp32", "w8a8kv8": "w8a8", "w8a8kv4": "w8a8"}
    rows = {}
    for name, build in builds.items():
        t0 = time.perf_counter()
        r = qpass.eval.evaluate(build(), tasks=("general", "math", "code"), limit=limit)["tasks"]
        row = {"general_bpb": r["general"]["bits_per_byte"],
               "general_bpb_stderr": r["general"]["bits_per_byte_stderr"],
               "cloze_acc": r["general"]["cloze_acc"], "math_exact_match": r["math"]["exact_match"],
               "math_n": r["math"]["n"], "code_bpb": r["code"]["bits_per_byte"],
               "seconds": time.perf_counter() - t0}
        for ref_name, label in (("fp32", "vs_fp32"), (twin.get(name), "vs_twin")):
            if ref_name and ref_name in rows:
                ref = rows[ref_name]
                row[f"general_bpb_{label}"] = row["general_bpb"] - ref["general_bpb"]
                row[f"code_bpb_{label}"] = row["code_bpb"] - ref["code_bpb"]
                row[f"math_points_{label}"] = 100 * (row["math_exact_match"] - ref["math_exact_match"])
        rows[name] = row
        print(json.dumps({name: {k: round(v, 4) if isinstance(v, float) else v
                                 for k, v in row.items()}}), flush=True)
    print(json.dumps({"bench": "kv_quant_cost", "model": "tiny-llada",
                      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="minutes"),
                      "limit": limit, "rows": rows}))


if __name__ == "__main__":
    main()

"""Kernel benchmark (prints JSON). On CUDA: every linear kernel vs cuBLAS bf16 in the same run
for M ∈ {32, 256, 1024, 4096} × (K, N) ∈ {(4096, 4096), (4096, 12288), (12288, 4096)}, with
TFLOPS and the fraction of the roofline floor (floor / time; ceilings measured in this run).
`ms` is timed from CUDA-graph replays (no host overhead), `ms_eager` from plain calls (includes
the Python dispatch of the custom op and Triton's launcher, ~0.1 ms),
and bidirectional attention at head dim 128. On CPU: the reference backend vs fp32 nn.Linear,
and the list of GPU rows skipped.

    python bench/kernels.py [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qpass.backends.op_schemas  # noqa: E402,F401  (registers torch.ops.qpass.*)
from _common import (GPU_MS, GPU_SHAPES, cpu_time, gpu_ceilings, gpu_ms, gpu_ms_graph,  # noqa: E402,E501
                     quantized_weights, roofline_ms)

ROTATE = 4      # weight sets cycled so small-M timings do not read weights from L2


def _linear_cases(ws):
    """name -> (fn(x, i), weight bytes, int MMA?)"""
    ops = torch.ops.qpass
    return {
        "bf16": (lambda x, i: torch.nn.functional.linear(x, ws[i]["bf16"]), "bf16", False),
        "w8a8": (lambda x, i: ops.linear_w8a8(x, ws[i]["w8"], ws[i]["s8"], None, "triton"),
                 "w8", True),
        "w4a8": (lambda x, i: ops.linear_w4a8(x, ws[i]["q4c"], ws[i]["s4c"], None, 0, "triton"),
                 "q4c", True),
        "w4a4": (lambda x, i: ops.linear_w4a4(x, ws[i]["q4c"], ws[i]["s4c"], None, 0, "triton"),
                 "q4c", True),
        "w4a16": (lambda x, i: ops.linear_w4a16(x, ws[i]["q4g"], ws[i]["s4g"], None, 4, 128, None,
                                                "triton"), "q4g", False),
    }


def gpu_linear_rows(ceil, Ms, shapes) -> list[dict]:
    rows = []
    for K, N in shapes:
        ws = []
        for _ in range(ROTATE):
            w = torch.randn(N, K, device="cuda") / K ** 0.5
            d = quantized_weights(w)
            d["bf16"] = w.to(torch.bfloat16)
            ws.append(d)
        cases = _linear_cases(ws)
        for M in Ms:
            x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
            flops = 2.0 * M * N * K
            base = None
            for name, (fn, wkey, is_int) in cases.items():
                it = iter(range(1 << 30))
                eager = gpu_ms(lambda: fn(x, next(it) % ROTATE))
                ms = gpu_ms_graph([lambda i=i: fn(x, i) for i in range(ROTATE)])
                keys = {wkey, {"w8": "s8", "q4c": "s4c", "q4g": "s4g"}.get(wkey, wkey)}
                wbytes = sum(t.numel() * t.element_size() for k, t in ws[0].items() if k in keys)
                nbytes = wbytes + 2 * M * K + 2 * M * N
                floor = roofline_ms(flops, nbytes, ceil["int8_tops"] if is_int
                                    else ceil["bf16_tflops"], ceil["copy_tbps"])
                base = ms if name == "bf16" else base
                rows.append({"M": M, "K": K, "N": N, "kernel": name, "ms": round(ms, 5),
                             "ms_eager": round(eager, 5),
                             "tflops": round(flops / ms / 1e9, 1),
                             "tbps": round(nbytes / ms / 1e9, 3),
                             "speedup_vs_bf16": round(base / ms, 3),
                             "floor_ms": round(floor, 5), "fraction_of_floor": round(floor / ms, 3)})
                print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def gpu_attention_rows(Ls=(1024, 4096), heads=32, D=128) -> list[dict]:
    import torch.nn.functional as F
    rows = []
    for L in Ls:
        q, k, v = (torch.randn(1, heads, L, D, device="cuda", dtype=torch.bfloat16)
                   for _ in range(3))
        flops = 4.0 * heads * L * L * D
        for name, fn in (("sdpa_bf16", lambda: F.scaled_dot_product_attention(q, k, v)),
                         ("qpass_triton", lambda: torch.ops.qpass.attention(
                             q, k, v, None, False, False, "triton")),
                         ("qpass_triton_int8qk", lambda: torch.ops.qpass.attention(
                             q, k, v, None, False, True, "triton"))):
            ms = gpu_ms(fn)
            rows.append({"L": L, "heads": heads, "head_dim": D, "kernel": name,
                         "ms": round(ms, 4), "tflops": round(flops / ms / 1e9, 1)})
            print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def cpu_rows(quick: bool) -> list[dict]:
    """Reference backend vs fp32 nn.Linear on CPU (small shapes: the CPU is slow)."""
    ops = torch.ops.qpass
    rows = []
    for M, K, N in ((32, 256, 768), (256, 256, 768), (256, 768, 256))[: 2 if quick else 3]:
        w = torch.randn(N, K) / K ** 0.5
        d = quantized_weights(w)
        x = torch.randn(M, K)
        base = cpu_time(lambda: torch.nn.functional.linear(x, w))
        cases = {"fp32_linear": lambda: torch.nn.functional.linear(x, w),
                 "w4a16": lambda: ops.linear_w4a16(x, d["q4g"], d["s4g"], None, 4, 128, None,
                                                   "reference"),
                 "w8a8": lambda: ops.linear_w8a8(x, d["w8"], d["s8"], None, "reference"),
                 "w4a4": lambda: ops.linear_w4a4(x, d["q4c"], d["s4c"], None, 0, "reference")}
        for name, fn in cases.items():
            t = cpu_time(fn)
            rows.append({"M": M, "K": K, "N": N, "kernel": name, "backend": "reference",
                         "ms": round(t * 1e3, 4), "slowdown_vs_fp32": round(t / base, 2)})
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer shapes")
    args = ap.parse_args(argv)
    out: dict = {"device": None}
    if torch.cuda.is_available():
        torch.manual_seed(0)
        out["device"] = torch.cuda.get_device_name()
        out["ceilings"] = gpu_ceilings()
        Ms = GPU_MS[1::2] if args.quick else GPU_MS
        out["linear"] = gpu_linear_rows(out["ceilings"], Ms, GPU_SHAPES)
        out["attention"] = gpu_attention_rows()
    else:
        torch.set_num_threads(1)     # shared CPUs: one thread gives stable ratios
        out["device"] = "cpu"
        out["cpu_reference"] = cpu_rows(args.quick)
        out["skipped"] = [f"GPU linear M={M} K={K} N={N}: no CUDA device"
                          for K, N in GPU_SHAPES for M in GPU_MS] + \
                         ["GPU attention L=1024,4096 D=128: no CUDA device"]
    print(json.dumps(out))          # one line: bench/run_all.py reads the last line
    return out


if __name__ == "__main__":
    main()

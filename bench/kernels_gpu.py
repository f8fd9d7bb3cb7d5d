"""GPU benchmark of the issue-16 kernels (prints JSON; a few minutes on an H100/H200).

* W4A16 (int4 g128 sym) on the repacked MMA layout (backends/triton/gemm_w4a16_mma.py) vs
  cuBLAS bf16 `torch.matmul` and vs the previous canonical-layout kernel, at
  M ∈ {1, 16, 32, 512, 1024, 4096} for the LLaDA-8B linears (K, N) ∈ {(4096, 4096),
  (4096, 12288), (12288, 4096)}; the repack runs once before timing (as load_compiled does).
* RMSNorm + per-token int8 quantization fused (qpass::rmsnorm_quant) vs unfused (torch RMSNorm,
  then the Triton quant kernel) at d = 4096, and silu·mul + quant at 12288.
* The float kernels (issue 28, bench/_float_kernel_rows.py): FP8 W8A8 (qpass::linear_fp8) vs the
  dense matmul and torch._scaled_mm (sm_89+ only), NVFP4 / MXFP4 weight-only
  (qpass::linear_fp4a16) vs the dense matmul, same shapes and M.
Every row has its ratio to the baseline and its fraction of the roofline floor (ceilings
measured in the same run: bf16 matmul rate, device copy bandwidth), timed from CUDA-graph
replays with weight sets rotated so small M does not read weights from L2; plus a correctness
check of each kernel on this GPU (relative error vs float64; fused codes vs the separate
quantizer). Without CUDA it prints one line saying so and exits 0; `--smoke` (with
TRITON_INTERPRET=1) runs every code path at tiny shapes on the CPU.

    python bench/kernels_gpu.py [--quick] [--out FILE]
    TRITON_INTERPRET=1 python bench/kernels_gpu.py --smoke
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _float_kernel_rows import fp4_rows, fp8_capable, fp8_rows  # noqa: E402

MS = (1, 16, 32, 512, 1024, 4096)
SHAPES = ((4096, 4096), (4096, 12288), (12288, 4096))     # (K, N)
ROTATE = 4


def _rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def w4a16_rows(ceil, Ms, shapes, env) -> list[dict]:
    from _common import roofline_ms
    from qpass import formats
    from qpass.backends.triton.gemm_w4a16 import w4a16_gemm
    from qpass.backends.triton.gemm_w4a16_mma import regime, w4a16_mma
    from qpass.backends.triton.w4_layout import repacked
    rows = []
    for K, N in shapes:
        sets = []
        for _ in range(ROTATE):
            w = torch.randn(N, K, device=env["device"]) / K ** 0.5
            qw = formats.QuantizedWeight.from_float(w, "int4:g128:sym")
            s = qw.scale.contiguous()
            sets.append({"bf16_t": qw.dequantize(torch.float32).to(env["dtype"]).t().contiguous(),
                         "q": qw.packed, "s": s, "r": repacked(qw.packed, s, None, K),
                         "w64": qw.dequantize(torch.float64)})
        wbytes = K * N // 2 + 4 * N * (K // 128)
        for M in Ms:
            x = torch.randn(M, K, device=env["device"], dtype=env["dtype"])
            err = _rel(w4a16_mma(x, sets[0]["r"], None), x.double() @ sets[0]["w64"].t())
            cases = {"bf16_matmul": lambda i: torch.matmul(x, sets[i]["bf16_t"]),
                     "w4a16_repacked": lambda i: w4a16_mma(x, sets[i]["r"], None),
                     "w4a16_canonical": lambda i: w4a16_gemm(x, sets[i]["q"], sets[i]["s"], None,
                                                             4, 128, None)}
            flops = 2.0 * M * N * K
            base = None
            for name, fn in cases.items():
                ms = env["time"]([lambda i=i: fn(i) for i in range(ROTATE)])
                nbytes = (2 * K * N if name == "bf16_matmul" else wbytes) + 2 * M * K + 2 * M * N
                floor = roofline_ms(flops, nbytes, ceil["bf16_tflops"], ceil["copy_tbps"])
                base = ms if base is None else base
                rows.append({"M": M, "K": K, "N": N, "kernel": name, "ms": round(ms, 5),
                             "x_bf16": round(base / ms, 3), "floor_ms": round(floor, 5),
                             "fraction_of_roofline": round(floor / ms, 3),
                             "regime": regime(M) if name == "w4a16_repacked" else None,
                             "rel_err_vs_fp64": round(err, 6) if name == "w4a16_repacked" else None})
                print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def fused_quant_rows(ceil, Ms, widths, env) -> list[dict]:
    from qpass import formats
    from qpass.backends.triton.fused_quant import rmsnorm_quant_rows, silu_mul_quant_rows
    from qpass.models.denoiser import rms_norm
    ops = torch.ops.qpass
    rows = []
    for what, K in zip(("rmsnorm_quant", "silu_mul_quant"), widths):
        for M in Ms:
            dev, dt = env["device"], env["dtype"]
            xs = [torch.randn(M, K, device=dev, dtype=dt) for _ in range(ROTATE)]
            us = [torch.randn(M, K, device=dev, dtype=dt) for _ in range(ROTATE)]
            w = torch.rand(K, device=dev, dtype=dt) + 0.5
            if what == "rmsnorm_quant":
                q, s, y = rmsnorm_quant_rows(xs[0], w, 1e-5, 8, "full", want_y=True)
                fused = lambda i: ops.rmsnorm_quant(xs[i], w, 1e-5, 8, "full", "triton")
                unfused = lambda i: ops.quant_per_token(rms_norm(xs[i], w, 1e-5), 8, False, None,
                                                        "triton", "full")
                nbytes = 2 * M * K + M * K + 4 * M     # the op's floor: read x, write codes
            else:
                q, s, y = silu_mul_quant_rows(xs[0], us[0], 8, "full", want_y=True)
                fused = lambda i: ops.silu_mul_quant(xs[i], us[i], 8, "full", "triton")
                unfused = lambda i: ops.quant_per_token(torch.nn.functional.silu(xs[i]) * us[i],
                                                        8, False, None, "triton", "full")
                nbytes = 2 * 2 * M * K + M * K + 4 * M
            qr, sr = formats.quantize_per_token(y, 8, "full")
            same = bool(torch.equal(q, qr) and torch.equal(s, sr))
            base = None
            for name, fn in (("unfused", unfused), ("fused", fused)):
                ms = env["time"]([lambda i=i: fn(i) for i in range(ROTATE)])
                base = ms if base is None else base
                floor = nbytes / (ceil["copy_tbps"] * 1e9)
                rows.append({"op": what, "M": M, "K": K, "kernel": name, "ms": round(ms, 5),
                             "x_unfused": round(base / ms, 3),
                             "fraction_of_roofline": round(floor / ms, 3),
                             "codes_equal_separate_quantizer": same if name == "fused" else None})
                print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def _smoke_env() -> dict:
    """CPU under TRITON_INTERPRET=1, fp16 (the interpreter has no bf16): proves every code
    path of this script runs; its timings and fractions mean nothing."""
    from _common import cpu_time
    return {"device": "cpu", "dtype": torch.float16,
            "time": lambda fns: cpu_time(fns[0], repeat=1, warmup=0) * 1e3}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="M in {1, 32, 1024} only")
    ap.add_argument("--out", default=None, help="also write the JSON to this file")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny shapes on CPU under TRITON_INTERPRET=1 (checks the script runs; "
                         "no meaningful numbers)")
    args = ap.parse_args(argv)
    if args.smoke:
        if os.environ.get("TRITON_INTERPRET") != "1":
            print("kernels_gpu --smoke: set TRITON_INTERPRET=1 (the kernels run in the CPU "
                  "interpreter)")
            return {"device": None, "skipped": "TRITON_INTERPRET unset"}
        import qpass.backends.op_schemas  # noqa: F401
        out = {"device": "cpu (TRITON_INTERPRET=1 smoke run: timings mean nothing)"}
        ceil = {"bf16_tflops": 1.0, "int8_tops": 1.0, "copy_tbps": 1.0}
        out["w4a16"] = w4a16_rows(ceil, (5, 40), ((256, 48),), _smoke_env())
        out["fused_quant"] = fused_quant_rows(ceil, (3,), (64, 96), _smoke_env())
        out["fp8"] = fp8_rows((5,), ((64, 48),), _smoke_env())
        out["fp4"] = fp4_rows((3,), ((64, 48),), _smoke_env())
    elif not torch.cuda.is_available():
        print("kernels_gpu: skipped, no CUDA device (the GPU figures need one)")
        return {"device": None, "skipped": "no CUDA device"}
    else:
        import qpass.backends.op_schemas  # noqa: F401  (registers torch.ops.qpass.*)
        import triton
        from _common import gpu_ceilings, gpu_ms_graph
        torch.manual_seed(0)
        env = {"device": "cuda", "dtype": torch.bfloat16, "time": gpu_ms_graph}
        Ms = (1, 32, 1024) if args.quick else MS
        out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "triton": triton.__version__, "ceilings": gpu_ceilings()}
        out["w4a16"] = w4a16_rows(out["ceilings"], Ms, SHAPES, env)
        out["fused_quant"] = fused_quant_rows(out["ceilings"], (1, 32, 1024, 4096),
                                              (4096, 12288), env)
        why = fp8_capable()
        out["fp8"] = [{"skipped": why}] if why else fp8_rows(Ms, SHAPES, env)
        out["fp4"] = fp4_rows(Ms, SHAPES, env)
    text = json.dumps(out)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)          # one line: the last line is the result
    return out


if __name__ == "__main__":
    main()

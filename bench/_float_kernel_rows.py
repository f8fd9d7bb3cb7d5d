"""kernels_gpu.py's rows for the floating-point kernels (issue 28 item 6):

* FP8 W8A8 (qpass::linear_fp8 on Triton: per-token E4M3 quantization + float8 tl.dot, fp8
  per-channel weights) vs a dense `torch.matmul` in the run's dtype and vs `torch._scaled_mm`
  (PyTorch's cuBLASLt fp8 GEMM with row-wise scales, fed by the same quantization kernel);
  needs compute capability 8.9+ (below it the rows say so: the reference backend would run);
* NVFP4 and MXFP4 weight-only (qpass::linear_fp4a16: E2M1 + block scales decoded in
  registers, tl.dot in the activations' dtype) vs the dense matmul.
Each row: ms, ratio to the dense matmul of the same shape (x_dense > 1: faster), and for the
qpass kernels their relative error against the reference backend (exact fp8 sums / fp32
dequantized fp4) at the first M of each shape."""
from __future__ import annotations

import json
import sys

import torch

ROTATE = 4


def _rel(a, b) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def _dense(K, N, env):
    return [(torch.randn(N, K, device=env["device"]) / K ** 0.5).to(env["dtype"]).t().contiguous()
            for _ in range(ROTATE)]


def _row(rows, **kw):
    rows.append(kw)
    print(json.dumps(kw), file=sys.stderr)


def fp8_rows(Ms, shapes, env) -> list[dict]:
    from qpass import formats
    from qpass.backends.triton.gemm_fp8 import fp8_quant_rows
    from qpass.formats.float_linear import fp8_kernel_scales
    ops = torch.ops.qpass
    rows: list[dict] = []
    for K, N in shapes:
        dense, sets = _dense(K, N, env), []
        for i in range(ROTATE):
            w = torch.randn(N, K, device=env["device"]) / K ** 0.5
            qw = formats.QuantizedWeight.from_float(w, "fp8:channel")
            sc, _ = fp8_kernel_scales(qw.scale, qw.spec, N, K)
            codes = qw.codes().contiguous()
            sets.append({"codes": codes, "sc": sc, "fp8_t": codes.view(torch.float8_e4m3fn).t(),
                         "sc_row": sc.reshape(1, N).contiguous()})
        for j, M in enumerate(Ms):
            x = torch.randn(M, K, device=env["device"], dtype=env["dtype"])
            s0 = sets[0]

            def scaled_mm(i):
                xq, xs = fp8_quant_rows(x, None)
                return torch._scaled_mm(xq.view(torch.float8_e4m3fn), sets[i]["fp8_t"],
                                        scale_a=xs, scale_b=sets[i]["sc_row"],
                                        out_dtype=env["dtype"])
            cases = {"dense_matmul": lambda i: torch.matmul(x, dense[i]),
                     "fp8_triton": lambda i: ops.linear_fp8(x, sets[i]["codes"], sets[i]["sc"],
                                                            None, None, 0, "triton"),
                     "fp8_torch_scaled_mm": scaled_mm}
            err = None
            if j == 0:
                ref = ops.linear_fp8(x, s0["codes"], s0["sc"], None, None, 0, "reference")
                err = {"fp8_triton": _rel(cases["fp8_triton"](0), ref)}
                try:
                    err["fp8_torch_scaled_mm"] = _rel(scaled_mm(0), ref)
                except Exception as e:     # an fp8 GEMM PyTorch does not have here
                    err["fp8_torch_scaled_mm"] = f"unavailable: {e!r}"[:200]
            base = None
            for name, fn in cases.items():
                try:
                    ms = env["time"]([lambda i=i: fn(i) for i in range(ROTATE)])
                except Exception as e:
                    _row(rows, M=M, K=K, N=N, kernel=name, error=repr(e)[:200])
                    continue
                base = ms if base is None else base
                _row(rows, M=M, K=K, N=N, kernel=name, ms=round(ms, 5),
                     x_dense=round(base / ms, 3),
                     rel_err_vs_reference=None if err is None else err.get(name))
    return rows


def fp4_rows(Ms, shapes, env) -> list[dict]:
    from qpass import formats
    from qpass.formats.float_linear import FP4_WEIGHT_FORMATS
    ops = torch.ops.qpass
    rows: list[dict] = []
    for K, N in shapes:
        dense = _dense(K, N, env)
        sets = {}
        for fmt in ("nvfp4", "mxfp4"):
            sets[fmt] = []
            for _ in range(ROTATE):
                w = torch.randn(N, K, device=env["device"]) / K ** 0.5
                sets[fmt].append(formats.QuantizedWeight.from_float(w, fmt))
        for j, M in enumerate(Ms):
            x = torch.randn(M, K, device=env["device"], dtype=env["dtype"])

            def run(fmt, i, backend="triton"):
                qw = sets[fmt][i]
                scale, block = FP4_WEIGHT_FORMATS[fmt]
                return ops.linear_fp4a16(x, qw.packed, qw.scale, qw.global_scale, None, block,
                                         scale, backend)
            cases = {"dense_matmul": lambda i: torch.matmul(x, dense[i]),
                     "nvfp4_triton": lambda i: run("nvfp4", i),
                     "mxfp4_triton": lambda i: run("mxfp4", i)}
            base = None
            for name, fn in cases.items():
                ms = env["time"]([lambda i=i: fn(i) for i in range(ROTATE)])
                base = ms if base is None else base
                err = None
                if j == 0 and name != "dense_matmul":
                    fmt = name.split("_")[0]
                    err = _rel(run(fmt, 0), run(fmt, 0, "reference"))
                _row(rows, M=M, K=K, N=N, kernel=name, ms=round(ms, 5),
                     x_dense=round(base / ms, 3), rel_err_vs_reference=err)
    return rows


def fp8_capable() -> str | None:
    """Why the fp8 rows cannot run on this GPU (None: they can)."""
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) < (8, 9):
        return f"sm_{major}{minor} < sm_89: no float8 tensor cores (linear_fp8 runs the reference)"
    return None

"""Correctness of the Triton kernels on a CUDA device (prints JSON): each op on fresh random
inputs against a float64 reference (float paths) and against the reference backend on the
same device (integer paths: the int32 accumulator must agree; the fp32 epilogue may differ
by FMA contraction, so the check is a tight relative bound). A NaN anywhere reports as nan."""
from __future__ import annotations

import json

import torch

import qpass.backends.op_schemas  # noqa: F401
from qpass import formats, hadamard


def rel(a, b) -> float:
    a, b = a.double(), b.double()
    if torch.isnan(a).any():
        return float("nan")
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def main() -> dict:
    if not torch.cuda.is_available():
        out = {"skipped": "no CUDA device (the CPU checks are tests/backends/triton_cases.py)"}
        print(json.dumps(out))
        return out
    torch.manual_seed(1)
    ops, dev, res = torch.ops.qpass, "cuda", {}
    for (M, K, N) in ((37, 4096, 1000), (256, 4096, 4096), (4, 768, 256)):
        w = torch.randn(N, K, device=dev) / K ** 0.5
        x = torch.randn(M, K, device=dev, dtype=torch.bfloat16)
        bias = torch.randn(N, device=dev)
        for spec, bits in (("int4:g128:sym", 4), ("int3:g128:asym", 3)):
            qw = formats.QuantizedWeight.from_float(w, spec)
            gs = qw.spec.group_size or K
            ref = torch.nn.functional.linear(x.double(), qw.dequantize(torch.float64),
                                             bias.double())
            for dt in (torch.bfloat16,):
                y = ops.linear_w4a16(x.to(dt), qw.packed, qw.scale, qw.zero, bits, gs, bias,
                                     "triton")
                res[f"w4a16 {spec} {dt} M{M} K{K} N{N}"] = rel(y, ref)
        q8 = formats.QuantizedWeight.from_float(w, "int8:channel")
        w8 = formats.to_signed(q8.codes(), 8)
        q4 = formats.QuantizedWeight.from_float(w, "int4:channel")
        for name, fn in (("w8a8", lambda b: ops.linear_w8a8(x, w8, q8.scale, bias, b)),
                         ("w4a8", lambda b: ops.linear_w4a8(x, q4.packed, q4.scale, bias, 0, b)),
                         ("w4a4", lambda b: ops.linear_w4a4(x, q4.packed, q4.scale, bias, 0, b))):
            res[f"{name} vs reference M{M} K{K} N{N}"] = rel(fn("triton"), fn("reference"))
        qt, st = ops.quant_per_token(x, 8, False, None, "triton")
        qr, sr = ops.quant_per_token(x, 8, False, None, "reference")
        res[f"quant8 codes equal M{M} K{K}"] = bool(torch.equal(qt, qr) and torch.equal(st, sr))
        if not torch.equal(qt, qr):   # which side is off: float64 division decides ties
            q64 = torch.round(x.double() / sr.double()).clamp(-128, 127)
            res[f"quant8 diag M{M} K{K}"] = {
                "scales_equal": bool(torch.equal(st, sr)),
                "codes_differ": int((qt != qr).sum()), "max_diff": int((qt.int() - qr.int()).abs().max()),
                "triton_vs_f64": int((qt.double() != q64).sum()),
                "reference_vs_f64": int((qr.double() != q64).sum())}
    for n in (256, 4096, 16384):
        x = torch.randn(64, n, device=dev)
        s = hadamard.random_signs(n, 0).to(dev)
        ref = hadamard.transform(x.double(), signs=s.double())
        res[f"hadamard n{n}"] = rel(ops.hadamard(x, s, "triton"), ref)
        qt, st = ops.quant_per_token(x, 4, True, s, "triton")
        qr, sr = ops.quant_per_token(x, 4, True, s, "reference")
        res[f"hadamard+quant4 n{n} codes off by >1"] = int(((qt.int() - qr.int()).abs() > 1).sum())
    for (B, H, Hk, L, D, causal) in ((2, 32, 32, 1024, 128, False), (1, 28, 4, 333, 128, False),
                                     (2, 8, 8, 200, 64, True)):
        q = torch.randn(B, H, L, D, device=dev, dtype=torch.bfloat16)
        k, v = (torch.randn(B, Hk, L, D, device=dev, dtype=torch.bfloat16) for _ in range(2))
        km = torch.ones(B, L, dtype=torch.bool, device=dev)
        km[0, : L // 3] = False
        ref = ops.attention(q.double(), k.double(), v.double(), km, causal, False, "reference")
        res[f"attention B{B} H{H}/{Hk} L{L} D{D} causal={causal}"] = rel(
            ops.attention(q, k, v, km, causal, False, "triton"), ref)
        res[f"attention int8 B{B} H{H}/{Hk} L{L} D{D}"] = rel(
            ops.attention(q, k, v, km, causal, True, "triton"), ref)
    torch.cuda.synchronize()
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()

"""Helpers shared by the benchmark scripts: timing, ceilings, quantized test weights."""
from __future__ import annotations

import statistics
import time

import torch

from qpass import formats

GPU_MS = (32, 256, 1024, 4096)
GPU_SHAPES = ((4096, 4096), (4096, 12288), (12288, 4096))    # (K, N)


def cpu_time(fn, repeat: int = 7, warmup: int = 2) -> float:
    """Median seconds of fn() on the CPU."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def machine() -> str:
    """CPU model, cores and torch threads, for the JSON of CPU benchmarks."""
    import os
    import platform
    name = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s), " \
           f"torch {torch.__version__}"


def gpu_ms(fn) -> float:
    """Median milliseconds of fn() on the GPU (CUDA events via triton.testing.do_bench)."""
    from triton.testing import do_bench
    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def gpu_ceilings() -> dict:
    """Measured ceilings in this run: bf16 and int8 matmul rates, device memory bandwidth."""
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    bf16 = 2 * n ** 3 / gpu_ms(lambda: a @ b) / 1e9
    ai = torch.randint(-127, 128, (n, n), device="cuda", dtype=torch.int8)
    bi = torch.randint(-127, 128, (n, n), device="cuda", dtype=torch.int8).T
    int8 = 2 * n ** 3 / gpu_ms(lambda: torch._int_mm(ai, bi)) / 1e9
    src = torch.empty(1 << 30, device="cuda", dtype=torch.uint8)
    dst = torch.empty_like(src)
    bw = 2 * src.numel() / gpu_ms(lambda: dst.copy_(src)) / 1e9        # TB/s (read + write)
    del a, b, ai, bi, src, dst
    return {"bf16_tflops": bf16, "int8_tops": int8, "copy_tbps": bw}


def quantized_weights(w: torch.Tensor) -> dict:
    """The op-ready tensors of one float weight (N, K) for every scheme."""
    w = w.float()
    q8 = formats.QuantizedWeight.from_float(w, "int8:channel")
    q4c = formats.QuantizedWeight.from_float(w, "int4:channel")
    q4g = formats.QuantizedWeight.from_float(w, "int4:g128:sym")
    return {"w8": formats.to_signed(q8.codes(), 8).contiguous(), "s8": q8.scale,
            "q4c": q4c.packed, "s4c": q4c.scale, "q4g": q4g.packed, "s4g": q4g.scale}


def roofline_ms(flops: float, nbytes: float, rate_tflops: float, bw_tbps: float) -> float:
    """The floor: the larger of compute time at the measured rate and traffic time."""
    return max(flops / (rate_tflops * 1e9), nbytes / (bw_tbps * 1e9))


def gpu_ms_graph(fns) -> float:
    """Median ms per call with the host taken out: each fn (one per rotated weight set) is run
    once eagerly (autotuning, compilation), captured in a CUDA graph, and the graphs are
    replayed in turn. A denoising step has fixed shapes, so this is how it would be deployed."""
    graphs = []
    for fn in fns:
        fn()
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            fn()
        graphs.append(g)
    it = iter(range(1 << 30))
    return gpu_ms(lambda: graphs[next(it) % len(graphs)].replay())

"""Denoising-step benchmark (prints JSON).

CUDA: a LLaDA-8B-shaped step (d 4096, MLP 12288, 32 heads × 128, sequence 1024, batch 1,
random weights). To fit the time budget it runs LAYERS transformer layers and scales the
time by 32 / LAYERS (all layers have identical shapes), plus the bf16 LM head (126464 × 4096)
once; no RoPE (elementwise, the same in every variant). `step_ms` replays a CUDA graph of the
step (fixed shapes: how a denoiser is deployed); `step_ms_eager` includes Python dispatch. Every variant uses the same
attention (SDPA bf16 and, separately, the qpass Triton kernel); only the linears differ.
CPU: the compiled w4a16 tiny-llada (FuseNorms → RTN int4:g128 incl. the head → Lower) step
vs the fp32 eager model, and linear-weight bytes against fp32.

    python bench/denoise_step.py
"""
from __future__ import annotations

import json
import os
import statistics
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qpass.backends.op_schemas  # noqa: E402,F401
from _common import cpu_time, gpu_ms, gpu_ms_graph, quantized_weights  # noqa: E402

D_MODEL, D_MLP, HEADS, HEAD_DIM, N_LAYERS, VOCAB, SEQ, LAYERS = 4096, 12288, 32, 128, 32, 126464, 1024, 2


def _linear(scheme: str, d: dict):
    ops = torch.ops.qpass
    if scheme == "bf16":
        return lambda x: F.linear(x, d["bf16"])
    if scheme == "w8a8":
        return lambda x: ops.linear_w8a8(x, d["w8"], d["s8"], None, "triton")
    if scheme == "w4a8":
        return lambda x: ops.linear_w4a8(x, d["q4c"], d["s4c"], None, 0, "triton")
    if scheme == "w4a4":
        return lambda x: ops.linear_w4a4(x, d["q4c"], d["s4c"], None, 0, "triton")
    return lambda x: ops.linear_w4a16(x, d["q4g"], d["s4g"], None, 4, 128, None, "triton")


def _rms(x):
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-6).to(x.dtype)


def gpu_step(schemes=("bf16", "w8a8", "w4a8", "w4a4", "w4a16")) -> dict:
    torch.manual_seed(0)
    shapes = {"q": (D_MODEL, D_MODEL), "k": (D_MODEL, D_MODEL), "v": (D_MODEL, D_MODEL),
              "o": (D_MODEL, D_MODEL), "gate": (D_MLP, D_MODEL), "up": (D_MLP, D_MODEL),
              "down": (D_MODEL, D_MLP)}
    layers = []
    for _ in range(LAYERS):
        ws = {}
        for name, (n, k) in shapes.items():
            w = torch.randn(n, k, device="cuda") / k ** 0.5
            ws[name] = quantized_weights(w)
            ws[name]["bf16"] = w.to(torch.bfloat16)
            del w
        layers.append(ws)
    head = (torch.randn(VOCAB, D_MODEL, device="cuda") / 64).to(torch.bfloat16)
    x0 = torch.randn(1, SEQ, D_MODEL, device="cuda", dtype=torch.bfloat16)

    def attn_sdpa(q, k, v):
        return F.scaled_dot_product_attention(q, k, v)

    def attn_qpass(q, k, v):
        return torch.ops.qpass.attention(q, k, v, None, False, False, "triton")

    out = {"layers_run": LAYERS, "scaled_to_layers": N_LAYERS, "seq": SEQ, "batch": 1}
    for attn_name, attn in (("sdpa", attn_sdpa), ("qpass_triton", attn_qpass)):
        res, eager = {}, {}
        for scheme in schemes:
            lin = [{n: _linear(scheme, ws[n]) for n in shapes} for ws in layers]

            def step():
                x = x0
                for L in lin:
                    h = _rms(x)
                    q, k, v = (L[n](h).view(1, SEQ, HEADS, HEAD_DIM).transpose(1, 2)
                               for n in ("q", "k", "v"))
                    a = attn(q, k, v).transpose(1, 2).reshape(1, SEQ, D_MODEL)
                    x = x + L["o"](a)
                    h = _rms(x)
                    x = x + L["down"](F.silu(L["gate"](h)) * L["up"](h))
                return x
            layers_ms = gpu_ms_graph([step])
            eager_ms = gpu_ms(step)
            head_ms = gpu_ms_graph([lambda: F.linear(x0, head)])
            res[scheme] = round(layers_ms * N_LAYERS / LAYERS + head_ms, 3)
            eager[scheme] = round(eager_ms * N_LAYERS / LAYERS + head_ms, 3)
        out[attn_name] = {"step_ms": res, "speedup_vs_bf16": {
            s: round(res["bf16"] / t, 3) for s, t in res.items()}, "step_ms_eager": eager}
    return out


def linear_bytes(model) -> int:
    total = 0
    for m in model.modules():
        if hasattr(m, "weight_nbytes"):
            total += m.weight_nbytes()
        elif isinstance(m, torch.nn.Linear):
            total += m.weight.numel() * m.weight.element_size()
    return total


def cpu_step(batch: int = 2, seqs=(256, 512)) -> dict:
    """Compiled w4a16 tiny-llada vs fp32 eager, one full-sequence denoiser forward, at
    batch × seq rows (a LLaDA step runs prompt + generation, hundreds of rows per sample)."""
    import qpass
    from qpass import passes as P
    from qpass.pipeline import Pipeline
    from qpass.specs import Scheme
    torch.set_num_threads(1)     # shared CPUs: one thread gives stable ratios
    model = qpass.models.load("tiny-llada").eval()
    scheme = Scheme("w4a16g128-with-head", weight="int4:g128:sym", keep_roles={"embed"})
    compiled = Pipeline([P.FuseNorms(), P.RTN(scheme), P.Lower()]).run(model, progress=False)
    g = torch.Generator().manual_seed(0)
    steps = []
    for seq in seqs:
        ids = torch.randint(0, 256, (batch, seq), generator=g)
        ids[torch.rand(batch, seq, generator=g) < 0.5] = model.config.mask_token_id
        with torch.no_grad():   # interleaved, so load changes on a shared box hit both
            t_fp, t_q = [], []
            for _ in range(9):
                t_fp.append(cpu_time(lambda: model(ids), repeat=1, warmup=1))
                t_q.append(cpu_time(lambda: compiled(ids), repeat=1, warmup=1))
            t_fp, t_q = statistics.median(t_fp), statistics.median(t_q)
        steps.append({"rows": batch * seq, "fp32_eager_ms": round(t_fp * 1e3, 2),
                      "compiled_w4a16_ms": round(t_q * 1e3, 2),
                      "time_ratio": round(t_q / t_fp, 3)})
    fp_bytes, q_bytes = linear_bytes(model), linear_bytes(compiled.gm)
    backends = compiled.report.passes[-1].metrics.get("backend_counts")
    return {"model": "tiny-llada", "steps": steps, "time_target": 1.3,
            "linear_bytes_fp32": fp_bytes, "linear_bytes_w4a16": q_bytes,
            "bytes_ratio": round(q_bytes / fp_bytes, 4), "bytes_target": 0.14,
            "lowered_backends": backends, "threads": 1}


def main(argv=None) -> dict:
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="accepted for bench/run_all.py")
    ap.parse_args(argv)
    out = {"cpu": cpu_step()}
    if torch.cuda.is_available():
        out["device"] = torch.cuda.get_device_name()
        out["gpu"] = gpu_step()
    else:
        out["device"] = "cpu"
        out["skipped"] = ["GPU LLaDA-8B-shaped step (bf16, w8a8, w4a8, w4a4, w4a16): no CUDA device"]
    print(json.dumps(out))          # one line: bench/run_all.py reads the last line
    return out


if __name__ == "__main__":
    main()

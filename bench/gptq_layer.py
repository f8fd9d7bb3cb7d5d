"""GPTQ on one layer: qpass (lazy block updates) vs a plain textbook GPTQ written here (column by
column, every update applied at once) vs RTN, on the same W, X and H, in one run.

Prints JSON: per shape (N, K) the wall time and the reconstruction error ‖WX − QX‖²/‖WX‖² of
each method, and the ratios qpass/textbook. W4 g128 sym, 2048 calibration tokens, random
correlated X with a few outlier channels. --quick uses smaller shapes (for `make bench`).
Threads are pinned (--threads, default 1) so that both solvers run under identical conditions
on a shared machine."""
from __future__ import annotations

import argparse
import json
import time

import torch

from qpass.formats import QuantizedWeight
from qpass.passes.gptq import quantize_weight

SPEC, BITS, GROUP = "int4:g128:sym", 4, 128


def textbook_gptq(W: torch.Tensor, H: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """GPTQ as in the paper's Algorithm 1 without lazy batching: for each column, quantize,
    then update ALL remaining columns with the scaled error (float32, like the solver)."""
    W, H = W.clone(), H.clone()
    K = W.shape[1]
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.diagonal(H).mean() * torch.eye(K)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros_like(W)
    qmax = 2 ** (BITS - 1) - 1
    for i in range(K):
        if i % GROUP == 0:   # group scale from the current (updated) weights
            s = (W[:, i:i + GROUP].abs().amax(1).double() / qmax).float().clamp(min=1e-30)
        w = W[:, i]
        q = (torch.round(w / s).clamp(-qmax - 1, qmax)) * s
        Q[:, i] = q
        err = (w - q) / U[i, i]
        W[:, i:] -= torch.outer(err, U[i, i:])
    return Q


def make_inputs(N: int, K: int, tokens: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(N, K, generator=g) / K ** 0.5
    mix = torch.eye(K) + torch.randn(K, K, generator=g) / K ** 0.5   # correlated channels
    X = torch.randn(tokens, K, generator=g) @ mix
    out = torch.randperm(K, generator=g)[:8]
    X[:, out] *= 20.0                                                  # outlier channels
    return W, X


def rel_error(W: torch.Tensor, Q: torch.Tensor, X: torch.Tensor) -> float:
    """‖WX − QX‖² / ‖WX‖² on the calibration tokens themselves (float64 accumulation)."""
    Y = X @ W.t()
    D = X @ (W - Q).t()
    return float(D.double().pow(2).sum() / Y.double().pow(2).sum())


def bench_shape(N: int, K: int, tokens: int) -> dict:
    W, X = make_inputs(N, K, tokens)
    H = 2.0 * X.t() @ X / tokens
    t0 = time.perf_counter()
    Qq, info = quantize_weight(W, H, SPEC, block_size=128)
    t_qpass = time.perf_counter() - t0
    t0 = time.perf_counter()
    Qt = textbook_gptq(W, H)
    t_text = time.perf_counter() - t0
    t0 = time.perf_counter()
    Qr = QuantizedWeight.from_float(W, SPEC).dequantize()
    t_rtn = time.perf_counter() - t0
    e_q, e_t, e_r = rel_error(W, Qq, X), rel_error(W, Qt, X), rel_error(W, Qr, X)
    return {"shape_NK": [N, K], "tokens": tokens,
            "seconds": {"qpass": round(t_qpass, 3), "textbook": round(t_text, 3),
                        "rtn": round(t_rtn, 3)},
            "error": {"qpass": e_q, "textbook": e_t, "rtn": e_r},
            "time_ratio_qpass_over_textbook": round(t_qpass / t_text, 4),
            "error_ratio_qpass_over_textbook": e_q / e_t,
            "error_ratio_qpass_over_rtn": e_q / e_r,
            "max_abs_diff_qpass_vs_textbook": float((Qq - Qt).abs().max()),
            "damp_escalations": info["escalations"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1024x1024 and 3072x1024 layers")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--tokens", type=int, default=2048)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shapes = [(1024, 1024), (3072, 1024)] if args.quick else [(4096, 4096), (12288, 4096)]
    rows = [bench_shape(N, K, args.tokens) for N, K in shapes]
    ok = all(r["time_ratio_qpass_over_textbook"] <= 1.0 and
             r["error_ratio_qpass_over_textbook"] <= 1.0 + 1e-3 for r in rows)
    print(json.dumps({"bench": "gptq_layer", "spec": SPEC, "threads": args.threads,
                      "quick": args.quick, "shapes": rows, "meets_acceptance": ok}))


if __name__ == "__main__":
    main()

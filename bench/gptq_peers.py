"""GPTQ side by side: qpass, llm-compressor and GPTQModel on the same W and H, in one process.

Each method gets the identical float32 weight W (N, K) and Hessian H = 2·XᵀX/n; every run is
timed on one CPU thread (torch.set_num_threads(1)), repetitions alternate between methods and
the median is kept. Error is tr((W − Q) H (W − Q)ᵀ) in float64, and also divided by the error
of RTN on the same grid (qpass's full-range W4 g128 symmetric grid, which is the peers' grid).
Peers that are not installed (`pip install -e .[bench]`) are skipped with a line saying so.

Cases: heavy-tailed random layers 4096×4096 and 12288×4096 (Student-t weights, correlated
inputs with outlier channels; 16384 calibration tokens by default, `--tokens`), and real
tiny-llada layers with Hessians from diffusion-masked calibration. qpass runs as its GPTQ pass
would for that many tokens: with at least REFINE_MIN_TOKENS_PER_INPUT (2) tokens per input
channel, one coordinate-descent sweep refines the codes (`refine` in each case); below it
qpass's GPTQ is the peers' algorithm. Every case also has `heldout_error_ratio`: the same
quantized weights measured on a Hessian of fresh inputs from the same distribution (held-out
plays for tiny-llada), so a method that only fits its calibration tokens shows there. Prints one JSON object; `time_ratio` and `error_ratio` are
qpass / peer (≤ 1.0: qpass is at least as fast / as accurate), each peer against the qpass
configuration with its semantics (`compared_with`): llm-compressor takes group scales from the
weight before the solve (qpass static_groups=True), GPTQModel with group-aware reordering off
takes them as the walk reaches each group (qpass's default)."""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from qpass.formats import QuantizedWeight
from qpass.passes.gptq import GPTQ, quantize_weight

BITS, GROUP = 4, 128
SPEC = f"int{BITS}:g{GROUP}:sym"


# ----- the methods: each maps (W, H) -> dequantized Q (float32, W's shape) --------------------
TOKENS = {"n": 0}          # calibration tokens behind the current H (qpass's refine rule reads it)


def _refine(W) -> int:
    """The sweeps qpass's GPTQ pass does for this layer and this many calibration tokens."""
    return GPTQ().sweeps_for(TOKENS["n"], W.shape[1])


def run_qpass(W, H):
    """qpass's default: group parameters taken when the walk reaches each group (GPTQ's)."""
    return quantize_weight(W, H, SPEC, block_size=128, refine=_refine(W))[0]


def run_qpass_static(W, H):
    """Group parameters from the weight before the solve: llm-compressor's semantics."""
    return quantize_weight(W, H, SPEC, block_size=128, static_groups=True,
                           refine=_refine(W))[0]


def _llmcompressor():
    """llm-compressor's single-layer solver with its own observer's group scales (minmax on the
    weight before GPTQ, as its GPTQModifier does)."""
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.utils import calculate_qparams
    from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight as lc_quantize

    args = QuantizationArgs(num_bits=BITS, type="int", symmetric=True, strategy="group",
                            group_size=GROUP)

    def run(W, H):
        g = W.reshape(W.shape[0], -1, GROUP)
        scale, zero = calculate_qparams(g.amin(-1), g.amax(-1), args)
        Q, _, _ = lc_quantize(W.clone()[None], H.clone()[None], scale[None], zero[None], None,
                              args, blocksize=128, percdamp=0.01)
        return Q[0]
    return run


def _gptqmodel(desc_act: bool = False, act_group_aware: bool = False):
    """GPTQModel's GPTQ on a Linear holding W, with H handed over as its accumulated Hessian.
    By default its group-aware reordering (act_group_aware) is switched off, matching qpass's
    plain walk; --act-order compares desc_act (act-order with g_idx) with qpass act_order=True
    and act_group_aware with qpass act_order="group"."""
    import torch.nn as nn
    from gptqmodel.quantization.config import QuantizeConfig
    from gptqmodel.quantization.gptq import GPTQ

    cfg = QuantizeConfig(bits=BITS, group_size=GROUP, sym=True, desc_act=desc_act,
                         damp_percent=0.01, act_group_aware=act_group_aware)

    def run(W, H):
        lin = nn.Linear(W.shape[1], W.shape[0], bias=False)
        lin.weight.data.copy_(W)
        gq = GPTQ(lin, cfg)
        gq.fallback = None
        gq.quantizer.configure(perchannel=True)          # as its GPTQ processor sets it up
        gq.H, gq.nsamples = H.clone(), TOKENS["n"]
        return gq.quantize(blocksize=128)[0].reshape(W.shape).float()
    return run


def run_qpass_act(W, H):
    """Act-order; with groups, static group parameters (qpass's packed layout keeps K order)."""
    return quantize_weight(W, H, SPEC, block_size=128, act_order=True, refine=_refine(W))[0]


def run_qpass_gar(W, H):
    """Group-aware reordering: groups by importance, parameters as the walk reaches them."""
    return quantize_weight(W, H, SPEC, block_size=128, act_order="group",
                           refine=_refine(W))[0]


# peer -> (factory, the qpass method with the same semantics)
PEERS = {"llm-compressor": (_llmcompressor, "qpass-static"), "gptqmodel": (_gptqmodel, "qpass")}
ACT_ORDER_PEERS = {"gptqmodel-desc_act": (lambda: _gptqmodel(desc_act=True), "qpass-act"),
                   "gptqmodel-gar": (lambda: _gptqmodel(act_group_aware=True), "qpass-gar")}


# ----- inputs -----------------------------------------------------------------------------------
def heavy_tailed(N: int, K: int, tokens: int, seed: int = 0):
    """(W, H of `tokens` calibration inputs, H of as many fresh inputs from the same law)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)                                              # StudentT draws globally
    W = (torch.distributions.StudentT(4.0).sample((N, K)) / K ** 0.5).float()
    mix = torch.eye(K) + torch.randn(K, K, generator=g) / K ** 0.5      # correlated channels
    outliers = torch.randperm(K, generator=g)[:8]

    def hessian():
        X = torch.randn(tokens, K, generator=g) @ mix
        X[:, outliers] *= 20.0                                          # outlier channels
        return 2.0 * X.t() @ X / tokens
    return W, hessian(), hessian()


def tiny_llada_layers(names=("blocks.0.q_proj", "blocks.1.down_proj")):
    """(name, W, H, held-out H, tokens) of real tiny-llada linears; H from diffusion-masked
    calibration batches of the training texts, the held-out H from the held-out plays."""
    import qpass
    from qpass.calibration import CalibrationSet
    from qpass.data import calibration_texts
    from qpass.data.sources import shakespeare
    model = qpass.models.load("tiny-llada")
    mods = dict(model.named_modules())

    def hessians(texts):
        calib = CalibrationSet.from_texts(texts, model.tokenizer, n=32, seq_len=256,
                                          masking="diffusion", seed=0)
        sums, hooks = {}, []
        for name in names:
            def hook(m, inp, out, name=name):
                x = inp[0].detach().reshape(-1, inp[0].shape[-1]).double()
                s, n = sums.get(name, (0.0, 0))
                sums[name] = (s + x.t() @ x, n + x.shape[0])
            hooks.append(mods[name].register_forward_hook(hook))
        with torch.no_grad():
            for (ids,) in calib.batches(8):
                model(ids)
        for h in hooks:
            h.remove()
        return {n: ((2.0 * s / c).float(), c) for n, (s, c) in sums.items()}
    train, held = hessians(calibration_texts()), hessians([shakespeare()[1]])
    return [(n, mods[n].weight.detach().float(), H, held[n][0], c) for n, (H, c) in train.items()]


# ----- measurement ------------------------------------------------------------------------------
def hessian_error(W, Q, H) -> float:
    D = (W.double() - Q.double())
    return float(((D @ H.double()) * D).sum())


def compare(W, H, H_heldout, tokens: int, methods: dict, pairs: dict, reps: int) -> dict:
    TOKENS["n"] = tokens
    times = {m: [] for m in methods}
    errors, heldout = {}, {}
    for _ in range(reps):                       # alternate methods inside every repetition
        for name, fn in methods.items():
            t0 = time.perf_counter()
            Q = fn(W, H)
            times[name].append(time.perf_counter() - t0)
            errors[name] = hessian_error(W, Q, H)
            heldout[name] = hessian_error(W, Q, H_heldout)
    Q_rtn = QuantizedWeight.from_float(W, SPEC).dequantize()
    rtn, rtn_held = hessian_error(W, Q_rtn, H), hessian_error(W, Q_rtn, H_heldout)
    sec = {m: statistics.median(t) for m, t in times.items()}
    row = {"tokens": tokens, "refine": _refine(W),
           "seconds": {m: round(s, 3) for m, s in sec.items()}, "error": errors,
           "error_vs_rtn": {m: e / rtn for m, e in errors.items()}, "rtn_error": rtn,
           "heldout_error_vs_rtn": {m: e / rtn_held for m, e in heldout.items()}}
    row["time_ratio"] = {p: round(sec[q] / sec[p], 4) for p, q in pairs.items()}
    row["error_ratio"] = {p: errors[q] / errors[p] for p, q in pairs.items()}
    row["heldout_error_ratio"] = {p: heldout[q] / heldout[p] for p, q in pairs.items()}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3, help="alternating repetitions (median)")
    ap.add_argument("--shapes", default="4096x4096,12288x4096", help="N x K random layers")
    ap.add_argument("--tokens", type=int, default=16384,
                    help="calibration tokens of the random layers (also of their held-out H)")
    ap.add_argument("--no-tiny", action="store_true", help="skip the tiny-llada layers")
    ap.add_argument("--quick", action="store_true", help="one 1024x1024 layer (make bench)")
    ap.add_argument("--act-order", action="store_true",
                    help="also act-order (GPTQModel desc_act) and group-aware reordering")
    ap.add_argument("--seeds", type=int, default=1, help="random layers per shape")
    args = ap.parse_args()
    if args.quick:
        args.shapes = "1024x1024"
    torch.set_num_threads(1)
    methods, pairs, skipped = {"qpass": run_qpass, "qpass-static": run_qpass_static}, {}, {}
    peers = dict(PEERS)
    if args.act_order:
        methods.update({"qpass-act": run_qpass_act, "qpass-gar": run_qpass_gar})
        peers.update(ACT_ORDER_PEERS)
    for name, (make, twin) in peers.items():
        try:
            methods[name] = make()
            pairs[name] = twin
        except ImportError as e:
            skipped[name] = f"not installed ({e}); pip install -e .[bench]"
            print(f"skipping {name}: {skipped[name]}", file=sys.stderr)
    cases = []
    for shape in filter(None, args.shapes.split(",")):
        N, K = (int(v) for v in shape.lower().split("x"))
        for seed in range(args.seeds):
            W, H, H_held = heavy_tailed(N, K, args.tokens, seed=seed)
            cases.append({"case": f"heavy-tailed {N}x{K} seed {seed}",
                          **compare(W, H, H_held, args.tokens, methods, pairs, args.reps)})
            del W, H, H_held
    if not args.no_tiny:
        for name, W, H, H_held, tokens in tiny_llada_layers():
            cases.append({"case": f"tiny-llada {name} {tuple(W.shape)}",
                          **compare(W, H, H_held, tokens, methods, pairs, args.reps)})
    ok = all(r <= 1.0 for c in cases for r in c["time_ratio"].values()) and \
        all(r <= 1.0 for c in cases for r in c["error_ratio"].values())
    held_ok = all(r <= 1.0 for c in cases for r in c["heldout_error_ratio"].values())
    if not pairs:
        ok = held_ok = None                         # no peer installed: nothing was compared
    print(json.dumps({"bench": "gptq_peers", "spec": SPEC, "threads": 1, "reps": args.reps,
                      "tokens": args.tokens, "compared_with": pairs, "skipped": skipped,
                      "cases": cases,
                      "qpass_at_least_as_fast_and_accurate": ok,
                      "qpass_at_least_as_accurate_heldout": held_ok}))


if __name__ == "__main__":
    main()

"""Learned rotations (issue 29) against QuaRot at W4A4, paired on the same tokens: FP,
w4a4-quarot, LearnedRotate + GPTQ (the w4a4-learned candidate) and ablations, with the
training's time, peak memory and held-out calibration losses. JSON on stdout, rows on stderr.

    python bench/learned_rotation.py /tmp/qg/smollm2 --steps 16 \
        > bench/results/learned_rotation_smollm2-135m_cpu_2026-12-07.json
    python bench/learned_rotation.py tiny-llada > bench/results/learned_rotation_tiny-llada_cpu_2026-12-07.json
    python bench/learned_rotation.py /tmp/qg/smollm2 --aclip > bench/results/aclip_smollm2-135m_cpu_2026-12-07.json

--aclip: activation clipping instead (QuaRot/SpinQuant's a-clip). FuseNorms + Rotate + GPTQ
run once per weight observer; each row then applies ObserveActivations to a copy of that
graph: unclipped (= w4a4-quarot), one ratio 0.9 (QuaRot's), and a ratio searched per linear.

Tokens and scorer are bench/real_model.py's: calibration windows from the training
Shakespeare plays (tiled), perplexity on windows of the held-out plays (next-token for causal
models, the seeded masked-diffusion ELBO for dLLMs; the same masks for every row). One torch
thread by default (the machine is shared)."""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

_BENCH = str(Path(__file__).resolve().parent)
if sys.path and sys.path[0] == _BENCH:          # bench/kernels.py shadows HF's `kernels`
    sys.path.pop(0)

import torch  # noqa: E402


def pipelines(steps: int, batch: int, lr: float, only: str) -> dict:
    from qpass import Pipeline, presets
    from qpass import passes as P

    def learned(**kw):
        return P.LearnedRotate(steps=steps, batch=batch, lr=lr, **kw)
    rows = {
        "w4a4-quarot": lambda: presets.get("w4a4-quarot"),
        "learned R1+R2 + GPTQ": lambda: Pipeline(
            [P.FuseNorms(), learned(), P.GPTQ(), P.ObserveActivations()], scheme="w4a4"),
        "quarot + RTN": lambda: Pipeline([P.FuseNorms(), P.Rotate(), P.RTN()], scheme="w4a4"),
        "learned R1+R2 + RTN": lambda: Pipeline([P.FuseNorms(), learned(), P.RTN()],
                                                scheme="w4a4"),
        "learned R1 only + RTN": lambda: Pipeline([P.FuseNorms(), learned(train_r2=False),
                                                   P.RTN()], scheme="w4a4"),
    }
    rows["learned R1+R2 (W16A4 training) + GPTQ"] = lambda: Pipeline(
        [P.FuseNorms(), learned(fake_quant_weights=False), P.GPTQ(), P.ObserveActivations()],
        scheme="w4a4")
    # activation clipping as full pipelines (GPTQ of later stages then sees the earlier
    # stages' clipped activations, as a preset would); --aclip shares one GPTQ instead
    for name, obs in (("quarot + aclip searched", {"clip_search": _candidates()}),
                      ("quarot + aclip 0.9", {"clip_ratio": 0.9})):
        rows[name] = lambda obs=obs: Pipeline(
            [P.FuseNorms(), P.Rotate(), P.GPTQ(), P.ObserveActivations(**obs)], scheme="w4a4")
    keep = [s for s in only.split(",") if s]
    return {k: v for k, v in rows.items() if not keep or k in keep}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="zoo name or HF checkpoint dir")
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--batch", type=int, default=4, help="calibration rows per training step")
    ap.add_argument("--lr", type=float, default=1.5)
    real_model = _bench_module("real_model")          # its tokens, scorer and options
    real_model.token_args(ap, 16, 128, 8, 256)
    ap.add_argument("--only", default="", help="comma-separated row names")
    ap.add_argument("--aclip", action="store_true", help="activation-clipping rows instead")
    ap.add_argument("--weight-observers", default="minmax",
                    help="--aclip: comma-separated GPTQ weight observers (minmax,mse)")
    ap.add_argument("--with-preset", action="store_true",
                    help="--aclip: also run the w4a4-quarot preset itself (its unclipped row "
                         "must equal it)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    import qpass
    machine = _bench_module("_common").machine

    model = qpass.models.load(a.model)
    cfg = model.config
    calib, score = real_model.paired_setup(model, a)
    t0 = time.perf_counter()
    fp = score(model)
    result = {"model": a.model, "machine": machine(), "causal": cfg.causal,
              "metric": "next-token perplexity" if cfg.causal else "ELBO perplexity (n_mc=4)",
              "calibration": f"{a.n_calib}x{a.calib_len} tokens, Shakespeare training plays, "
                             f"masking={'none' if cfg.causal else 'diffusion'}; LearnedRotate trains on the first "
                             f"{a.n_calib - max(1, a.n_calib // 8)} rows and guards on the rest",
              "eval": f"{a.n_eval}x{a.eval_len} tokens, held-out plays",
              "training": {"steps": a.steps, "rows_per_step": a.batch,
                           "tokens_per_step": a.batch * a.calib_len, "lr": a.lr},
              "fp_ppl": fp, "fp_eval_seconds": time.perf_counter() - t0, "rows": []}
    if a.aclip:
        result["rows"] = aclip_rows(model, calib, score, fp, a.weight_observers.split(","))
        if a.with_preset:
            from qpass import presets
            ppl = score(presets.get("w4a4-quarot").run(model, calib, progress=False))
            result["rows"].append({"pipeline": "w4a4-quarot (preset run)", "ppl": ppl,
                                   "ppl_ratio_to_fp": ppl / fp})
        print(json.dumps(result, indent=1))
        return 0
    for name, make in pipelines(a.steps, a.batch, a.lr, a.only).items():
        t0 = time.perf_counter()
        out = make().run(model, calib, progress=False)
        seconds = time.perf_counter() - t0
        row = {"pipeline": name, "ppl": score(out), "quantize_seconds": seconds}
        row["ppl_ratio_to_fp"] = row["ppl"] / fp
        rec = next((r for r in out.report.passes if r.name == "LearnedRotate"), None)
        if rec is not None:
            row["training"] = {k: v for k, v in rec.metrics.items() if k.startswith(
                ("train", "heldout", "fell", "peak", "resumed"))}
            row["notes"] = [n for n in rec.notes if n.startswith("LearnedRotate")]
        row["process_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        result["rows"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps(result, indent=1))
    return 0


def _candidates():
    """The clip ratios w4a4-quarot-aclip searches (QuaRot/SpinQuant's a-clip range)."""
    from qpass.presets import _ACLIP
    return _ACLIP


def aclip_rows(model, calib, score, fp, weight_observers) -> list[dict]:
    """QuaRot + GPTQ once per weight observer, then the activation-clip variants on copies."""
    import copy
    import qpass
    from qpass import Pipeline
    from qpass import passes as P
    observes = {"unclipped": lambda: P.ObserveActivations(),
                "clip 0.9": lambda: P.ObserveActivations(clip_ratio=0.9),
                "clip searched": lambda: P.ObserveActivations(clip_search=_candidates())}
    rows = []
    for wobs in weight_observers:
        t0 = time.perf_counter()
        g = qpass.capture(copy.deepcopy(model))
        Pipeline([P.FuseNorms(), P.Rotate(), P.GPTQ(f"int4:channel:{wobs}")],
                 scheme="w4a4").apply(g, calib)
        gptq_seconds = time.perf_counter() - t0
        for name, make in observes.items():
            t0 = time.perf_counter()
            gv = copy.deepcopy(g)
            rep = Pipeline([make()], scheme="w4a4").apply(gv, calib)
            observe_seconds = time.perf_counter() - t0
            row = {"pipeline": f"quarot (GPTQ weights {wobs}) + {name}", "ppl": score(gv.gm),
                   "rotate_gptq_seconds": gptq_seconds, "observe_seconds": observe_seconds}
            row["ppl_ratio_to_fp"] = row["ppl"] / fp
            chosen = rep.passes[-1].metrics.get("act_clip")
            if chosen:
                ratios = [m["ratio"] for m in chosen.values()]
                row["searched_ratios"] = {str(r): ratios.count(r) for r in sorted(set(ratios))}
                row["output_error_vs_unclipped"] = sum(m["error"] for m in chosen.values()) / \
                    sum(m["error_unclipped"] for m in chosen.values())
            row["process_peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def _bench_module(name: str):
    """bench/<name>.py loaded by path: bench/ on sys.path would let its kernels.py shadow the
    `kernels` package transformers looks for."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, Path(_BENCH) / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


if __name__ == "__main__":
    sys.exit(main())

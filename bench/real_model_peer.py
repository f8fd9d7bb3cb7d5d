"""llm-compressor on the same tokens as bench/real_model.py: perplexity and time, JSON.

    python bench/real_model.py DIR --save-tokens tokens.pt ...      # qpass, writes the tokens
    VENV_BENCH/bin/python bench/real_model_peer.py DIR tokens.pt    # llm-compressor 0.14

Runs in a venv with llm-compressor (`pip install -e .[bench]`, or its own venv on the same
torch pin); imports nothing from qpass. Each row starts from a fresh copy of the checkpoint,
runs `llmcompressor.oneshot` with its defaults except where K=576-style layers force a
group size (W4 g128 does not divide 576, so the W4 rows use g64 everywhere, as the issue's
measurement did), and scores next-token perplexity with transformers' forward on the eval
windows. The FP row is measured in the same run; ratios are against it. One torch thread.
The floating-point rows are llm-compressor's preset schemes FP8_DYNAMIC, NVFP4A16 and NVFP4
(W4A4, static activation global scales from the calibration tokens), by round-to-nearest and
by GPTQ (`--only FP8,NVFP4` runs just them).
AWQ is left out: llm-compressor's AWQModifier pins memory and fails on a CPU-only machine."""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch


def causal_ppl(model, windows, batch=4) -> float:
    nll, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(windows), batch):
            x = windows[i:i + batch]
            logits = model(input_ids=x).logits.float()
            nll += torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1),
                reduction="sum").item()
            count += x[:, 1:].numel()
    return math.exp(nll / count)


def _w4(group):
    return {"group_0": {"targets": ["Linear"], "weights": {
        "num_bits": 4, "type": "int", "symmetric": True, "strategy": "group",
        "group_size": group}}}


def _no_pinning_without_accelerator() -> None:
    """llm-compressor's AWQ pins its cached block inputs (only to speed host-to-device copies)
    and pin_memory raises on a machine without an accelerator; there the pin is a no-op, which
    changes nothing it computes."""
    import torch
    from llmcompressor.pipelines.cache import IntermediatesCache
    if not torch.accelerator.is_available():
        IntermediatesCache.pin_memory = lambda self, batch_index, input_names=None: None


def recipes(group):
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    from llmcompressor.modifiers.transform.awq import AWQModifier
    from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier
    _no_pinning_without_accelerator()
    return {
        f"llm-compressor RTN W4 g{group}": lambda: [
            QuantizationModifier(config_groups=_w4(group), ignore=["lm_head"])],
        f"llm-compressor GPTQ W4 g{group} (defaults: act-order static)": lambda: [
            GPTQModifier(config_groups=_w4(group), ignore=["lm_head"])],
        f"llm-compressor AWQ W4 g{group} (defaults: duo scaling, n_grid 20)": lambda: [
            AWQModifier(),
            QuantizationModifier(config_groups=_w4(group), ignore=["lm_head"])],
        "llm-compressor W8A8 RTN": lambda: [
            QuantizationModifier(scheme="W8A8", targets="Linear", ignore=["lm_head"])],
        "llm-compressor W8A8 SmoothQuant 0.5": lambda: [
            SmoothQuantModifier(smoothing_strength=0.5),
            QuantizationModifier(scheme="W8A8", targets="Linear", ignore=["lm_head"])],
        **float_recipes(),
    }


def float_recipes():
    """llm-compressor's own floating-point preset schemes, lm_head ignored as in its examples:
    round-to-nearest (QuantizationModifier) and GPTQ (GPTQModifier, its defaults)."""
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier
    rows = {}
    for scheme in ("FP8_DYNAMIC", "NVFP4A16", "NVFP4"):
        rows[f"llm-compressor {scheme}"] = lambda s=scheme: [
            QuantizationModifier(scheme=s, targets="Linear", ignore=["lm_head"])]
    for scheme in ("NVFP4A16", "NVFP4"):
        rows[f"llm-compressor GPTQ {scheme}"] = lambda s=scheme: [
            GPTQModifier(scheme=s, targets="Linear", ignore=["lm_head"])]
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="HF checkpoint dir (the one given to bench/real_model.py)")
    ap.add_argument("tokens", help="the file bench/real_model.py --save-tokens wrote")
    ap.add_argument("--group", type=int, default=64)
    ap.add_argument("--only", default="", help="comma-separated substrings of row names")
    ap.add_argument("--out", type=Path, help="write the JSON here (llm-compressor logs to stdout)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    import datasets
    import llmcompressor
    import transformers
    from llmcompressor import oneshot
    tok = torch.load(a.tokens)
    calib, windows = tok["calib"], tok["eval"]
    ds = datasets.Dataset.from_dict({"input_ids": calib.tolist(),
                                     "attention_mask": torch.ones_like(calib).tolist()})

    def fresh():
        return transformers.AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)

    fp = causal_ppl(fresh(), windows)
    out = {"model": a.model, "llmcompressor": llmcompressor.__version__,
           "transformers": transformers.__version__, "torch": torch.__version__,
           "calibration": f"{calib.shape[0]}x{calib.shape[1]} tokens (same tensor as qpass)",
           "eval": f"{windows.shape[0]}x{windows.shape[1]} tokens", "fp_ppl": fp, "rows": []}
    for name, make in recipes(a.group).items():
        if a.only and not any(s in name for s in a.only.split(",")):
            continue
        model = fresh()
        t0 = time.perf_counter()
        try:
            oneshot(model=model, dataset=ds, recipe=make(), max_seq_length=calib.shape[1],
                    num_calibration_samples=calib.shape[0], shuffle_calibration_samples=False)
        except Exception as e:           # a peer failure is a result row, not a crash
            out["rows"].append({"pipeline": name, "error": f"{type(e).__name__}: {e}"[:300]})
            continue
        seconds = time.perf_counter() - t0
        ppl = causal_ppl(model, windows)
        out["rows"].append({"pipeline": name, "ppl": ppl, "ppl_ratio_to_fp": ppl / fp,
                            "quantize_seconds": seconds})
        print(json.dumps(out["rows"][-1]), file=sys.stderr, flush=True)
    text = json.dumps(out, indent=1)
    if a.out:
        a.out.write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    # bench/kernels.py would shadow the `kernels` package transformers looks for
    here = Path(__file__).resolve().parent
    sys.path = [p for p in sys.path if Path(p or ".").resolve() != here]
    sys.exit(main())

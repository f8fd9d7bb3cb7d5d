"""The commands' branch for models captured as they are (qpass/pipeline/as_is_run.py):
`qpass quantize DIR` of a DiffusionGemma / LLaDA2 / LLaDA-MoE / SDAR checkpoint, `qpass
generate` with the model's own sampler where it has one, `qpass inspect` from structure."""
from __future__ import annotations

import os
from pathlib import Path

from qpass.errors import CalibrationError, QpassError


def is_as_is(name) -> bool:
    """A checkpoint directory of an architecture qpass captures as it is, a saved as-is
    result, or a named structure-only config of one."""
    from qpass.models.as_is import AS_IS_CONFIGS, is_as_is_dir
    from qpass.runtime.as_is_model import is_as_is_checkpoint
    key = os.fspath(name)
    if key in AS_IS_CONFIGS and not Path(key).is_dir():
        return True
    return Path(key).is_dir() and (is_as_is_checkpoint(key) or is_as_is_dir(key))


def quantize_as_is(args, pipe, streamed: bool) -> int:
    """`qpass quantize DIR` for a model captured as it is: no lowering (its own code runs
    QuantLinear modules), calibration text cut into prompt + canvas windows."""
    from rich.console import Console

    from qpass.calibration.dataset import CalibrationSet
    from qpass.calibration.model_states import window_length
    from qpass.calibration.texts import read_texts
    from qpass.models import load
    trust = bool(getattr(args, "trust_remote_code", False))
    model = load(args.model, device="meta" if streamed else args.device,
                 trust_remote_code=trust)
    calib = None
    if any(p.needs_calibration for p in pipe.passes):
        if args.calib is None:
            need = ", ".join(p.name for p in pipe.passes if p.needs_calibration)
            raise CalibrationError(f"{need} calibrate(s) on activations: pass your calibration "
                                   f"data with --calib PATH (.txt, .jsonl with a \"text\" field, "
                                   f"a folder of them or a saved Hugging Face dataset)")
        if model.tokenizer is None:
            raise CalibrationError(f"{args.model} has no tokenizer to cut --calib text with")
        L = args.seq_len or window_length(model)
        calib = CalibrationSet.from_texts(read_texts(args.calib), model.tokenizer,
                                          n=args.calib_n, seq_len=L, masking="none",
                                          seed=args.seed)
    out = pipe.run(model, calib, out=args.out, progress=not args.quiet, seed=args.seed,
                   overwrite=args.overwrite, trust_remote_code=trust)
    print_report(out, Console(stderr=True), "none" if args.quiet else args.report, streamed)
    return 0


def print_report(out, console, level: str, streamed: bool) -> None:
    from rich.table import Table

    from qpass.display.units import fmt_bytes
    rep = out.report
    if level != "none":
        t = Table(title=f"{rep['pipeline']} on {type(out.model).__name__} (captured as it is)")
        for col in ("path", "kind", "spec", "tokens", "tied", "rel. error"):
            t.add_column(col, justify="right" if col in ("tokens", "rel. error") else "left")
        rows = rep["items"] if level == "full" else rep["items"][:12]
        for r in rows:
            t.add_row(r["path"], r["kind"], r["spec"], f"{r['tokens']:,}",
                      str(r["aliases"] - 1) if r["aliases"] > 1 else "",
                      f"{r['rel_error']:.4f}" if r["rel_error"] == r["rel_error"] else "—")
        if level != "full" and len(rep["items"]) > 12:
            t.add_row(f"… {len(rep['items']) - 12} more (--report full)", "", "", "", "", "")
        console.print(t)
        kept = {}
        for k in rep["kept"]:
            kept.setdefault(k["reason"], []).append(k["path"])
        for reason, paths in kept.items():
            console.print(f"kept in high precision ({len(paths)}): {reason}", soft_wrap=True)
        console.print(f"logits vs the float model on a calibration state: relative error "
                      f"{rep['logits_rel_error']:.4f}", soft_wrap=True)
    nb = out.weight_nbytes()
    how = f"; streamed from {rep['streamed']['from']}" if streamed and "streamed" in rep else ""
    console.print(f"saved {out.path} ({len(rep['items'])} quantized linears and expert stores; "
                  f"quantized weights {fmt_bytes(nb['quantized'])}{how})", soft_wrap=True)


def generate_own(model, prompts: list, args):
    """Generation of a model whose forward reads a canvas beside the prompt (DiffusionGemma):
    its own sampler (transformers' generate), one prompt at a time."""
    import torch
    if len(prompts) > 1:
        raise QpassError("this model generates with its own sampler: give one --prompt")
    torch.manual_seed(args.seed)
    kw = {"max_new_tokens": args.gen_length}
    if args.steps_given:
        kw["max_denoising_steps"] = args.steps
    out = model.generate(input_ids=prompts[0][None], **kw)
    return out.sequences if hasattr(out, "sequences") else out

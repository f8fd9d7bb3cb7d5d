"""Families captured as they are (issue 27): family × load × quantize × stream × generate ×
export on the tiny random checkpoints the tests use, plus the reference-family fast path
against the as-is path on one LLaMA. Prints one JSON object.

    .venv/bin/python bench/as_is_families.py [--calib-n 32]

load: max |logits − transformers' own model's| / max |logits| (0 = the same code ran).
quantize: w4a16-rtn and w4a16-gptq, relative logit error against the float model on held-out
text states (never calibrated on), and seconds. stream: a meta model streamed from its
directory against the in-memory run, max |Δ logits| of the saved results (0 = bit-equal),
and tensor reads. generate: the sampler used and tokens/s. export: the format written and
max |Δ logits| when its engine's reader loads it (transformers for compressed-tensors; the
gguf library's dequantization for GGUF), or why not."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures"
# bench/kernels.py would shadow the `kernels` package transformers probes for: drop bench/
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(FIX))

import diffusion_gemma as dg  # noqa: E402

import qpass  # noqa: E402
from qpass.presets import PRESETS  # noqa: E402


from remote_fixtures import build as remote, isolation  # noqa: E402

TEXT = (ROOT / "qpass" / "ops.py").read_text()
HELD = (ROOT / "qpass" / "sampling" / "common.py").read_text()


def held_states(model, n=16):
    from qpass.calibration.dataset import CalibrationSet
    from qpass.calibration.model_states import model_states, window_length
    clean = CalibrationSet.from_texts(HELD, model.tokenizer, n=n, seq_len=window_length(model, 32),
                                      masking="none", seed=7).clean_ids
    return model_states(model, clean, batch_size=n, seed=7)[:1]


def logits(model, state):
    with torch.no_grad():
        out = model(**state)
    return (out.logits if hasattr(out, "logits") else out).float()


def rel(a, b):
    return float((a - b).norm() / b.norm())


def family_row(name, directory, trust, reference, tmp: Path, calib_n: int) -> dict:
    from qpass.calibration.dataset import CalibrationSet
    from qpass.calibration.model_states import window_length
    row = {"family": name}
    fp = qpass.models.load(directory, trust_remote_code=trust)
    ref = reference()
    st = held_states(fp)[0]
    a, b = logits(fp, st), logits(ref, st)
    row["load_max_rel_diff"] = float((a - b).abs().max() / b.abs().max())
    calib = CalibrationSet.from_texts(TEXT, fp.tokenizer, n=calib_n,
                                      seq_len=window_length(fp), masking="none", seed=0)
    for preset in ("w4a16-rtn", "w4a16-gptq"):
        t0 = time.perf_counter()
        q = PRESETS[preset]().run(directory, calib=calib, out=tmp / f"{name}-{preset}",
                                  progress=False, trust_remote_code=trust)
        row[preset] = {"seconds": round(time.perf_counter() - t0, 2),
                       "held_out_rel_error": rel(logits(q, st), a),
                       "quantized_items": len(q.report["items"]),
                       "kept": len(q.report["kept"])}
    meta = qpass.models.load(directory, device="meta", trust_remote_code=trust)
    t0 = time.perf_counter()
    s = PRESETS["w4a16-gptq"]().run(meta, calib=calib, out=tmp / f"{name}-stream",
                                    progress=False)
    secs = time.perf_counter() - t0
    mem = qpass.load_compiled(tmp / f"{name}-w4a16-gptq", trust_remote_code=trust)
    back = qpass.load_compiled(tmp / f"{name}-stream", trust_remote_code=trust)
    row["stream"] = {"seconds": round(secs, 2),
                     "max_abs_diff_vs_memory": float((logits(back, st) - logits(mem, st))
                                                     .abs().max()),
                     "tensor_reads": s.report["streamed"]["tensor_reads"]}
    row["generate"] = _generate(mem)
    row["export"] = _export(name, mem, tmp, st, trust)
    return row


def _generate(model) -> dict:
    from qpass.calibration.model_states import kind_of
    ids = torch.tensor([model.tokenizer.encode("def f(x):")])
    t0 = time.perf_counter()
    if kind_of(model) == "block_diffusion":
        torch.manual_seed(0)
        model.generate(input_ids=ids, max_new_tokens=16, max_denoising_steps=4)
        how = "own (transformers generate)"
    else:
        from qpass.sampling import generate, resolve_sampler
        kw = {} if resolve_sampler(model, "auto") == "block" else {"block_length": 8}
        generate(model, ids, gen_length=16, steps=16, **kw)
        how = f"qpass {resolve_sampler(model, 'auto')}"
    return {"sampler": how, "tokens_per_s": round(16 / (time.perf_counter() - t0), 1)}


def _export(name, q, tmp: Path, st, trust) -> dict:
    if name == "llada_moe":
        try:
            from qpass.interop import gguf_as_is  # noqa: F401
        except ImportError:
            return {"format": "gguf", "error": "GGUF export for as-is LLaDA-MoE not built"}
    try:
        from transformers import AutoModelForCausalLM
        from qpass.interop.as_is_export import export_as_is_compressed_tensors
        out = tmp / f"{name}-ct"
        export_as_is_compressed_tensors(q, out, trust_remote_code=trust)
        from qpass.models.as_is import quiet_transformers
        import transformers
        arch = q.qpass_as_is.get("architecture")
        cls = getattr(transformers, arch, None) if not trust else AutoModelForCausalLM
        with quiet_transformers():
            hf = cls.from_pretrained(str(out), trust_remote_code=trust).eval()
        return {"format": "compressed-tensors", "loaded_by": "transformers",
                "max_abs_diff": float((logits(hf, st) - logits(q, st)).abs().max())}
    except Exception as e:                               # report, do not hide
        return {"format": "compressed-tensors", "error": f"{type(e).__name__}: {e}"[:300]}


def fast_path(tmp: Path, calib_n: int) -> dict:
    """A tiny LLaMA: qpass's reference family (from_hf → Denoiser, the graph executor)
    against the as-is path (its own transformers code), same preset, same calibration."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from qpass.pipeline.as_is_entry import run_as_is
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=dg.VOCAB, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256)
    m = LlamaForCausalLM(cfg).eval()
    m.tokenizer = dg.byte_tokenizer()
    ids = torch.randint(4, dg.VOCAB, (32, 96), generator=torch.Generator().manual_seed(1))
    out = {}
    for name, fn in (("reference_family", lambda: PRESETS["w4a16-gptq"]().run(
                         m, calib=ids, progress=False, verify=False)),
                     ("as_is", lambda: run_as_is(PRESETS["w4a16-gptq"](), m, ids))):
        t0 = time.perf_counter()
        q = fn()
        out[name] = {"seconds": round(time.perf_counter() - t0, 2)}
        test = torch.randint(4, dg.VOCAB, (4, 96), generator=torch.Generator().manual_seed(9))
        with torch.no_grad():
            want = m(input_ids=test).logits
            got = q(test) if name == "reference_family" else q(input_ids=test).logits
        out[name]["rel_error"] = rel(got.float(), want.float())
    out["as_is_over_reference_time"] = round(out["as_is"]["seconds"] /
                                             out["reference_family"]["seconds"], 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calib-n", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    iso = isolation
    res = {"torch": torch.__version__}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        from transformers import DiffusionGemmaForBlockDiffusion
        dgd = dg.build(tmp / "dg")
        rows = [family_row("diffusion_gemma", dgd, False, lambda: DiffusionGemmaForBlockDiffusion
                           .from_pretrained(str(dgd)).eval(), tmp, args.calib_n)]
        with iso.private_modules_cache(tmp / "hf_modules"):
            from transformers import AutoModelForCausalLM
            for fam in ("llada2", "llada_moe", "sdar"):
                rd = remote.build(fam, tmp / fam)
                rows.append(family_row(fam, rd, True, lambda rd=rd: AutoModelForCausalLM
                                       .from_pretrained(str(rd), trust_remote_code=True).eval(),
                                       tmp, args.calib_n))
        res["families"] = rows
        res["fast_path_llama"] = fast_path(tmp, args.calib_n)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

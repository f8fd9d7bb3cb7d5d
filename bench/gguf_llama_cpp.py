"""qpass's GGUF files run by llama.cpp's own tools, against llama.cpp's own quantizer; prints
(and with --json writes) one JSON object.

For MODEL (a zoo name or an HF checkpoint directory of a LLaDA / Dream / LLaMA model):
  1. `qpass export MODEL --format gguf --gguf-type f16` (the F16 file llama.cpp starts from);
  2. llama.cpp's `llama-quantize F16 Q4_0` (llama.cpp's own Q4_0) beside qpass's `q4_0-rtn`
     (`--dtype float16`: the same float16 weights llama-quantize reads) exported as GGUF: every
     Q4_0 block compared (codes, fp16 scales) and the squared weight error of both;
  3. causal models (`--text`): llama-tokenize's ids against the HF tokenizer's on the text,
     and llama-perplexity of the F16, llama.cpp Q4_0 and qpass Q4_0 files (same text, same
     settings);
  4. diffusion models: llama-diffusion-cli takes a 300-byte prompt as 300 tokens (no ChatML
     wrap), read from the error it prints for a 256-token context.

llama.cpp is not a qpass dependency: build its tools once (docs/INTEROP.md "GGUF"), then

    .venv/bin/python -P bench/gguf_llama_cpp.py --bin LLAMA_CPP/build/bin tiny-llada
    .venv/bin/python -P bench/gguf_llama_cpp.py --bin LLAMA_CPP/build/bin HF_DIR \\
        --text qpass/zoo/tiny-llada/eval/shakespeare_test.txt --chunks 24 --json OUT.json
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def q4_0_blocks(path) -> dict:
    """{tensor name: (N blocks, 18) uint8} of a GGUF file's Q4_0 matrices."""
    import gguf
    return {t.name: np.asarray(t.data).reshape(-1, 18) for t in gguf.GGUFReader(str(path)).tensors
            if t.tensor_type.name == "Q4_0" and t.name.startswith("blk.")}


def compare_q4_0(ours, theirs, f16) -> dict:
    """Codes and block scales of two Q4_0 files, and their squared error to the F16 weights."""
    import gguf
    ref = {t.name: t for t in gguf.GGUFReader(str(f16)).tensors}
    a, b = q4_0_blocks(ours), q4_0_blocks(theirs)
    out = {"tensors": len(a), "weights": 0, "codes_equal": 0, "blocks": 0, "scales_equal": 0,
           "sq_error_qpass": 0.0, "sq_error_llama_cpp": 0.0}
    for name, x in a.items():
        y = b[name]
        qa = np.concatenate([x[:, 2:] & 15, x[:, 2:] >> 4], 1)
        qb = np.concatenate([y[:, 2:] & 15, y[:, 2:] >> 4], 1)
        w = gguf.quants.dequantize(ref[name].data, ref[name].tensor_type).astype(np.float64)
        w = w.reshape(-1, 32)
        for key, blocks in (("sq_error_qpass", x), ("sq_error_llama_cpp", y)):
            d = blocks[:, :2].copy().view(np.float16).astype(np.float64)
            q = np.concatenate([blocks[:, 2:] & 15, blocks[:, 2:] >> 4], 1).astype(np.float64)
            out[key] += float(((d * (q - 8) - w) ** 2).sum())
        out["weights"] += qa.size
        out["codes_equal"] += int((qa == qb).sum())
        out["blocks"] += len(x)
        out["scales_equal"] += int((x[:, :2] == y[:, :2]).all(1).sum())
    return out


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


def qpass_cli(*args) -> None:
    r = run([sys.executable, "-m", "qpass", *args])
    if r.returncode:
        raise SystemExit(f"qpass {' '.join(args)} failed:\n{r.stderr[-3000:]}")


def perplexity(bin_dir: Path, model: Path, text: Path, chunks: int, ctx: int) -> float:
    r = run([bin_dir / "llama-perplexity", "-m", model, "-f", text, "-c", ctx, "--chunks",
             chunks])
    m = re.search(r"Final estimate: PPL = ([0-9.]+)", r.stdout + r.stderr)
    if not m:
        raise SystemExit(f"llama-perplexity on {model} failed:\n{r.stderr[-3000:]}")
    return float(m.group(1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="zoo name or HF checkpoint directory")
    ap.add_argument("--bin", type=Path, required=True, help="llama.cpp's build/bin")
    ap.add_argument("--text", type=Path, help="held-out text (causal models: tokenize, ppl)")
    ap.add_argument("--chunks", type=int, default=24)
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    from qpass import models
    cfg = models.load(a.model, device="meta").config
    res = {"model": a.model, "family": cfg.family, "date": time.strftime("%Y-%m-%d"),
           "llama_cpp_bin": str(a.bin)}
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        qpass_cli("export", a.model, "--format", "gguf", "--gguf-type", "f16",
                  "--out", t / "f16.gguf")
        r = run([a.bin / "llama-quantize", t / "f16.gguf", t / "llama-q4_0.gguf", "Q4_0"])
        if r.returncode:
            raise SystemExit(f"llama-quantize failed:\n{r.stderr[-3000:]}")
        qpass_cli("quantize", a.model, "--pipeline", "q4_0-rtn", "--dtype", "float16",
                  "--out", t / "q4ck")
        qpass_cli("export", t / "q4ck", "--format", "gguf", "--out", t / "qpass-q4_0.gguf")
        res["q4_0_vs_llama_quantize"] = compare_q4_0(t / "qpass-q4_0.gguf",
                                                     t / "llama-q4_0.gguf", t / "f16.gguf")
        res["file_mib"] = {k: round((t / f).stat().st_size / 2 ** 20, 2) for k, f in
                           (("f16", "f16.gguf"), ("llama_cpp_q4_0", "llama-q4_0.gguf"),
                            ("qpass_q4_0", "qpass-q4_0.gguf"))}
        if cfg.causal and a.text:
            from transformers import AutoTokenizer
            hf = AutoTokenizer.from_pretrained(a.model)(a.text.read_text())["input_ids"]
            r = run([a.bin / "llama-tokenize", "-m", t / "f16.gguf", "-f", a.text, "--ids",
                     "--log-disable"])
            ids = ast.literal_eval(r.stdout.strip().splitlines()[-1])
            res["tokenize"] = {"hf_ids": len(hf), "llama_cpp_ids": len(ids), "equal": hf == ids}
            res["perplexity"] = {"text": str(a.text), "chunks": a.chunks, "ctx": a.ctx, **{
                k: perplexity(a.bin, t / f, a.text, a.chunks, a.ctx) for k, f in
                (("f16", "f16.gguf"), ("llama_cpp_q4_0", "llama-q4_0.gguf"),
                 ("qpass_q4_0_rtn", "qpass-q4_0.gguf"))}}
        elif not cfg.causal:
            sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "interop"))
            from test_gguf_metadata import diffusion_prompt_tokens
            res["diffusion_cli_prompt_tokens_for_300_bytes"] = diffusion_prompt_tokens(
                a.bin / "llama-diffusion-cli", t / "qpass-q4_0.gguf", t)
    print(json.dumps(res, indent=1))
    if a.json:
        a.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

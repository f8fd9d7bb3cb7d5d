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
     wrap), read from the error it prints for a 256-token context;
  5. with --kquants, llama.cpp's K-quants beside qpass's: llama-quantize's Q4_K_M of the F16
     file (and, with --imatrix or --calib, its Q4_K_M with the importance matrix llama-imatrix
     computes from the calibration text) against qpass's `q4_k_m-rtn` and, with --calib,
     `q4_k_m-gptq` on the same text: every tensor's GGUF type (the same mix: llama.cpp's rule
     and its fallbacks for K not a multiple of 256), the squared weight error of every
     K-quant / fallback tensor against the F16 weights (qpass RTN vs llama-quantize without
     imatrix), file sizes, and for causal models llama-perplexity of each file. qpass keeps
     the embedding (and a tied head) unquantized, so llama.cpp's files are made with
     --token-embedding-type f16 --output-tensor-type f16 for equal size (its default Q8_0 one
     too, for reference); diffusion models: llama-diffusion-cli runs qpass's Q4_K_M file.

llama.cpp is not a qpass dependency: build its tools once (docs/INTEROP.md "GGUF"), then

    .venv/bin/python -P bench/gguf_llama_cpp.py --bin LLAMA_CPP/build/bin tiny-llada
    .venv/bin/python -P bench/gguf_llama_cpp.py --bin LLAMA_CPP/build/bin HF_DIR \\
        --text qpass/zoo/tiny-llada/eval/shakespeare_test.txt --chunks 24 --json OUT.json
    .venv/bin/python -P bench/gguf_llama_cpp.py --bin LLAMA_CPP/build/bin HF_DIR --kquants \\
        --calib CALIB.txt --text TEST.txt --json OUT.json            (K-quant rows)
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


def compare_blocks(ours, theirs, f16) -> dict:
    """Per GGUF type: the blk.* tensors both files quantize to it, and the squared error of
    each file's weights against the F16 ones; `types_differ` the tensors typed differently."""
    import gguf
    ref = {t.name: t for t in gguf.GGUFReader(str(f16)).tensors}
    a = {t.name: t for t in gguf.GGUFReader(str(ours)).tensors if t.name.startswith("blk.")}
    b = {t.name: t for t in gguf.GGUFReader(str(theirs)).tensors if t.name.startswith("blk.")}
    out: dict = {"types_differ": sorted(n for n in a if a[n].tensor_type != b[n].tensor_type)}
    for name, x in a.items():
        kind = x.tensor_type.name
        if kind in ("F32", "F16", "BF16") or name in out["types_differ"]:
            continue
        w = gguf.quants.dequantize(ref[name].data, ref[name].tensor_type).astype(np.float64)
        row = out.setdefault(kind, {"tensors": 0, "weights": 0, "sq_error_qpass": 0.0,
                                    "sq_error_llama_cpp": 0.0})
        row["tensors"] += 1
        row["weights"] += w.size
        for key, t in (("sq_error_qpass", x), ("sq_error_llama_cpp", b[name])):
            row[key] += float(((gguf.quants.dequantize(t.data, t.tensor_type) - w) ** 2).sum())
    for kind, row in out.items():
        if kind != "types_differ":
            row["ratio"] = row["sq_error_qpass"] / max(row["sq_error_llama_cpp"], 1e-300)
    return out


def tensor_types(path) -> dict:
    """{GGUF type name: number of tensors} of a file."""
    import collections
    import gguf
    return dict(collections.Counter(t.tensor_type.name for t in gguf.GGUFReader(str(path)).tensors))


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


def qpass_cli(*args) -> None:
    r = run([sys.executable, "-m", "qpass", *args])
    if r.returncode:
        raise SystemExit(f"qpass {' '.join(map(str, args))} failed:\n{r.stderr[-3000:]}")


def perplexity(bin_dir: Path, model: Path, text: Path, chunks: int, ctx: int,
               threads: int = 1) -> float:
    r = run([bin_dir / "llama-perplexity", "-m", model, "-f", text, "-c", ctx, "--chunks",
             chunks, "-t", threads])
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
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp tools' -t")
    ap.add_argument("--kquants", action="store_true", help="the K-quant rows (step 5)")
    ap.add_argument("--calib", type=Path, help="calibration text: qpass's q4_k_m-gptq, and "
                    "llama-imatrix when no --imatrix is given")
    ap.add_argument("--calib-n", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--imatrix", type=Path, help="llama-imatrix's output for this model")
    ap.add_argument("--no-q4_0", action="store_true", help="skip steps 2-3's Q4_0 rows")
    ap.add_argument("--keep", type=Path, help="a new folder to work in (every file made stays)")
    a = ap.parse_args(argv)
    from qpass import models
    cfg = models.load(a.model, device="meta").config
    res = {"model": a.model, "family": cfg.family, "date": time.strftime("%Y-%m-%d"),
           "llama_cpp_bin": str(a.bin), "argv": [str(x) for x in (argv or sys.argv[1:])]}
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        if a.keep:                       # work there: every file made stays
            a.keep.mkdir(parents=True, exist_ok=True)
            t = a.keep
        qpass_cli("export", a.model, "--format", "gguf", "--gguf-type", "f16",
                  "--out", t / "f16.gguf")
        if not a.no_q4_0:
            q4_0_rows(a, cfg, t, res)
        if a.kquants:
            res["kquants"] = kquant_rows(a, cfg, t)
    print(json.dumps(res, indent=1))
    if a.json:
        a.json.write_text(json.dumps(res, indent=1) + "\n")
    return 0


def q4_0_rows(a, cfg, t: Path, res: dict) -> None:
    """Steps 2-4: llama.cpp's Q4_0 and qpass's q4_0-rtn, tokenizer, perplexity / prompt."""
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
            k: perplexity(a.bin, t / f, a.text, a.chunks, a.ctx, a.threads) for k, f in
            (("f16", "f16.gguf"), ("llama_cpp_q4_0", "llama-q4_0.gguf"),
             ("qpass_q4_0_rtn", "qpass-q4_0.gguf"))}}
    elif not cfg.causal:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "interop"))
        from test_gguf_metadata import diffusion_prompt_tokens
        res["diffusion_cli_prompt_tokens_for_300_bytes"] = diffusion_prompt_tokens(
            a.bin / "llama-diffusion-cli", t / "qpass-q4_0.gguf", t)


def _quantize(a, t: Path, out: str, kind: str, *extra) -> Path:
    r = run([a.bin / "llama-quantize", *extra, t / "f16.gguf", t / out, kind])
    if r.returncode:
        raise SystemExit(f"llama-quantize {kind} failed:\n{r.stderr[-3000:]}")
    return t / out


def kquant_rows(a, cfg, t: Path) -> dict:
    """Step 5: llama.cpp's Q4_K_M (with and without its imatrix) against qpass's q4_k_m-rtn and
    q4_k_m-gptq (docstring)."""
    # qpass keeps the embedding in float (and a tied head, which llama.cpp quantizes with
    # the output's type): llama.cpp's equal-size files keep them F16 too
    f16 = ["--token-embedding-type", "f16"] + \
        (["--output-tensor-type", "f16"] if cfg.tie_embeddings else [])
    files = {"llama_cpp_q4_k_m": _quantize(a, t, "llama-q4_k_m.gguf", "Q4_K_M", *f16),
             "llama_cpp_q4_k_m_q8_0_embedding": _quantize(a, t, "llama-q4_k_m-q8emb.gguf",
                                                          "Q4_K_M")}
    out: dict = {}
    imatrix = a.imatrix
    if imatrix is None and a.calib and cfg.causal:     # llama-imatrix runs causal models
        imatrix = t / "imatrix.gguf"
        r = run([a.bin / "llama-imatrix", "-m", t / "f16.gguf", "-f", a.calib, "-c", a.seq_len,
                 "--chunks", a.calib_n, "-t", a.threads, "-o", imatrix])
        if r.returncode:
            raise SystemExit(f"llama-imatrix failed:\n{r.stderr[-3000:]}")
    if imatrix is not None:
        out["imatrix"] = {"file": str(a.imatrix) if a.imatrix else "llama-imatrix on --calib",
                          "calib": str(a.calib), "chunks": a.calib_n, "ctx": a.seq_len}
        files["llama_cpp_q4_k_m_imatrix"] = _quantize(a, t, "llama-q4_k_m-imat.gguf", "Q4_K_M",
                                                      "--imatrix", imatrix, *f16)
        files["llama_cpp_q4_k_m_imatrix_q8_0_embedding"] = _quantize(
            a, t, "llama-q4_k_m-imat-q8emb.gguf", "Q4_K_M", "--imatrix", imatrix)
    secs = {}
    for preset in ("q4_k_m-rtn",) + (("q4_k_m-gptq",) if a.calib else ()):
        start = time.time()
        # a causal model calibrates on clean text (llama-imatrix's), a denoiser on masked
        calib = ["--calib", str(a.calib), "--calib-n", str(a.calib_n), "--seq-len",
                 str(a.seq_len), "--masking", "none" if cfg.causal else "diffusion"] \
            if preset.endswith("gptq") else []
        qpass_cli("quantize", a.model, "--pipeline", preset, "--dtype", "float16", *calib,
                  "--out", t / preset)
        secs[preset] = round(time.time() - start, 1)
        files["qpass_" + preset.replace("-", "_")] = t / f"qpass-{preset}.gguf"
        qpass_cli("export", t / preset, "--format", "gguf", "--out", t / f"qpass-{preset}.gguf")
    out["qpass_quantize_seconds"] = secs
    out["tensor_types"] = {k: tensor_types(f) for k, f in files.items()}
    out["file_bytes"] = {k: f.stat().st_size for k, f in files.items()}
    out["rtn_weight_error_vs_llama_quantize"] = compare_blocks(
        files["qpass_q4_k_m_rtn"], files["llama_cpp_q4_k_m"], t / "f16.gguf")
    if cfg.causal and a.text:
        out["perplexity"] = {"text": str(a.text), "chunks": a.chunks, "ctx": a.ctx,
                             "threads": a.threads, **{
                                 k: perplexity(a.bin, f, a.text, a.chunks, a.ctx, a.threads)
                                 for k, f in files.items()}}
    elif not cfg.causal:
        r = run([a.bin / "llama-diffusion-cli", "-m", files["qpass_q4_k_m_rtn"], "-p", "ROMEO:",
                 "-c", "256", "-ub", "64", "-b", "64", "--diffusion-steps", "4",
                 "--diffusion-block-length", "32", "-t", "1"], timeout=600)
        out["diffusion_cli_runs_qpass_q4_k_m"] = r.returncode == 0
    return out


if __name__ == "__main__":
    sys.exit(main())

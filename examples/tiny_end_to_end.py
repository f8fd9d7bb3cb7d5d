"""End to end on the embedded tiny dLLM: calibrate, quantize (GPTQ W4), save, reload, generate,
evaluate. About a minute of CPU time. Measured on the shared 2-core dev box (2026-12-07) while
it was quiet: 34 s wall / 62 s CPU on torch's default two threads, 55 s wall / 55 s CPU with
OMP_NUM_THREADS=1; while other jobs kept it busy the two threads waited on each other and the
same run took 4 min 43 s wall (set OMP_NUM_THREADS=1 on a busy machine).

    python examples/tiny_end_to_end.py [--pipeline w4a16-gptq] [--out /tmp/tiny-w4]"""
import argparse

import torch

import qpass
from qpass.data import calibration_texts


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--pipeline", default="w4a16-gptq")
    ap.add_argument("--out", default="/tmp/tiny-llada-quantized")
    a = ap.parse_args()
    model = qpass.models.load("tiny-llada")
    calib = qpass.calibration.CalibrationSet.from_texts(calibration_texts(), model.tokenizer, n=32,
                                                        seq_len=256, masking="diffusion", seed=0)
    compiled = qpass.presets.get(a.pipeline).run(model, calib)
    compiled.report.print()
    compiled.save(a.out)
    again = qpass.load_compiled(a.out)
    tok = model.tokenizer
    prompt = torch.tensor([tok.encode("12+5=17\n40+3=43\n37+48=")])
    out = qpass.sampling.generate(again, prompt, gen_length=8, steps=8, block_length=8)
    print("generated:", repr(tok.decode(out[0, prompt.shape[1]:].tolist())))
    for label, m in (("FP", model), (a.pipeline, again)):
        r = qpass.eval.elbo_ppl(m, [qpass.data.read_eval_text(qpass.models.loading.ZOO_DIR / "tiny-llada",
                                                               qpass.data.GENERAL_FILE, 16384)], seed=0)
        print(f"{label:>12}: Shakespeare {r.bits_per_byte:.3f} ± {r.stderr:.3f} bits/byte")


if __name__ == "__main__":
    main()

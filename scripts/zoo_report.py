"""Metrics and training-curve plot of a zoo model for docs/ZOO.md.

    python scripts/zoo_report.py                    # tiny-llada: JSON + docs/assets/tiny_llada_curve.png
    python scripts/zoo_report.py --model tiny-dream  # docs/assets/tiny_dream_curve.png"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import qpass  # noqa: E402
from qpass.eval import evaluate  # noqa: E402
from qpass.sampling import generate  # noqa: E402

ZOO_ROOT = ROOT / "qpass" / "zoo"
# the held-out splits are the same for every zoo model (qpass.data.build_corpus); tiny-llada ships them
EVAL = ZOO_ROOT / "tiny-llada" / "eval"


def unigram_entropy(data: bytes) -> float:
    c, n = Counter(data), len(data)
    return -sum(v / n * math.log2(v / n) for v in c.values())


def plot_curve(log: dict, png: Path, name: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    steps = [r["step"] for r in log["curve"]]
    loss = [r["loss_nats_per_token"] for r in log["curve"]]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, loss)
    ax.set_xlabel(f"step (batch {log['args']['batch']} × {log['args']['seq']} bytes)")
    ax.set_ylabel("masked-diffusion loss (nats/token, EMA)")
    ax.set_title(f"{name} training curve")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=120)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="tiny-llada", help="zoo name")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    zoo = ZOO_ROOT / a.model
    log = json.loads((zoo / "train_log.json").read_text())
    plot_curve(log, ROOT / "docs" / "assets" / f"{a.model.replace('-', '_')}_curve.png", a.model)
    model = qpass.models.load(a.model)
    tok = model.tokenizer
    sh = (EVAL / "shakespeare_test.txt").read_bytes()
    py = (EVAL / "python_test.txt").read_bytes()
    res = evaluate(model, text_bytes=32768, n_mc=4, cloze_items=60, cloze_mc=8, math_items=100,
                   data_dir=EVAL)
    prompt = "ROMEO:\n"
    ids = torch.tensor([tok.encode(prompt)])
    kw = {} if model.config.logit_shift else {"block_length": 32}   # Dream v0: one block
    out = generate(model, ids, gen_length=128, steps=128, **kw)
    print(json.dumps({"unigram_bits_per_byte": {"shakespeare": unigram_entropy(sh),
                                                "python": unigram_entropy(py)},
                      "results": res["tasks"], "sample": prompt + tok.decode(out[0, ids.shape[1]:].tolist()),
                      "params": log["params"], "steps": log["steps_done"]}, indent=1))


if __name__ == "__main__":
    main()

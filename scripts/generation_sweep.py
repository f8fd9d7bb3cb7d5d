"""Which sampler settings give readable text: the evidence behind a zoo model's generation
defaults (its `generation_config.json`; docs/ZOO.md "Generation defaults").

Prompts come from the held-out splits (speaker headers and speech openings of *The Tempest*
and *Macbeth*, `def` lines of the held-out Python files, 3-shot additions), so no prompt is
picked by hand. Each prompt is generated greedily at each block length (gen_length tokens,
one per step, the `qpass generate` default) and called readable when under 40% of the
generated characters are whitespace and at least 16 are letters or digits (what the failure
looks like: a newline and a run of spaces).

    python scripts/generation_sweep.py --models tiny-llada,w4/ --block-lengths 1,2,4,8,16,32,64
    python scripts/generation_sweep.py --models tiny-dream --algs origin,maskgit_plus --block-lengths 8,64

Prints one JSON object: per model and setting, readable/total and each generation."""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT / "qpass" / "zoo" / "tiny-llada" / "eval"


def held_out_prompts(n_speakers: int = 10, n_speeches: int = 8, n_code: int = 6,
                     n_math: int = 4) -> list[tuple[str, str]]:
    """(category, prompt) pairs read from the held-out files, in file order."""
    text = (EVAL / "shakespeare_test.txt").read_text()
    speakers, speeches = [], []
    for m in re.finditer(r"^([A-Z][A-Z ]+):\n(.+)$", text, flags=re.M):
        name, line = m.group(1), m.group(2)
        if name not in [s for s in speakers] and len(speakers) < n_speakers:
            speakers.append(name)
        words = line.split()
        if len(words) >= 4 and len(speeches) < n_speeches and \
                all(not p.startswith(name + ":") for _, p in speeches):
            speeches.append(("general", f"{name}:\n{' '.join(words[:3])}"))
    out = [("general", f"{s}:\n") for s in speakers] + speeches
    code = [ln[:ln.index("(") + 1] for ln in (EVAL / "python_test.txt").read_text().splitlines()
            if ln.startswith("def ") and "(" in ln]
    out += [("code", c) for c in code[:n_code]]
    probs = [json.loads(ln) for ln in (EVAL / "arith_test.jsonl").read_text().splitlines()[:n_math + 3]]
    shots = "".join(f"{p['a']}+{p['b']}={p['answer']}\n" for p in probs[:3])
    out += [("math", f"{shots}{p['a']}+{p['b']}=") for p in probs[3:3 + n_math]]
    return out


def readable(text: str) -> bool:
    ws = sum(c.isspace() for c in text)
    return len(text) > 0 and ws / len(text) < 0.4 and sum(c.isalnum() for c in text) >= 16


def load(name: str):
    import qpass
    p = Path(name)
    if (p / "manifest.json").exists():
        return qpass.load_compiled(p, device="cpu")
    return qpass.models.load(name)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="tiny-llada")
    ap.add_argument("--block-lengths", default="1,2,4,8,16,32,64")
    ap.add_argument("--algs", default=None, help="Dream: comma-separated algs (default: the sampler's)")
    ap.add_argument("--gen-length", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from qpass.sampling import generate
    prompts = held_out_prompts()
    report = {"gen_length": a.gen_length, "prompts": [p for _, p in prompts], "models": {}}
    for name in a.models.split(","):
        model = load(name)
        tok = model.tokenizer
        rows = {}
        for alg in (a.algs.split(",") if a.algs else [None]):
            for bl in (int(b) for b in a.block_lengths.split(",")):
                kw = dict(gen_length=a.gen_length, steps=a.gen_length, block_length=bl)
                if alg:
                    kw["alg"] = alg
                t0, texts = time.perf_counter(), []
                for _, p in prompts:
                    ids = torch.tensor([tok.encode(p)])
                    out = generate(model, ids, **kw)
                    texts.append(tok.decode(out[0, ids.shape[1]:].tolist()))
                key = f"block_length={bl}" + (f",alg={alg}" if alg else "")
                by_cat = {}
                for (cat, _), t in zip(prompts, texts):
                    ok, n = by_cat.get(cat, (0, 0))
                    by_cat[cat] = (ok + readable(t), n + 1)
                rows[key] = {"readable": sum(map(readable, texts)), "total": len(texts),
                             "by_category": {c: f"{ok}/{n}" for c, (ok, n) in by_cat.items()},
                             "seconds": round(time.perf_counter() - t0, 1), "texts": texts}
                print(f"{name} {key}: {rows[key]['readable']}/{len(texts)} readable "
                      f"{rows[key]['by_category']}", file=sys.stderr, flush=True)
        report["models"][name] = rows
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

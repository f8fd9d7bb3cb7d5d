"""Quantize a LLaDA-8B-shaped checkpoint on this machine, streaming (DESIGN §12); prints JSON.

Writes (once, if absent) a random LLaDA-8B-shaped HF checkpoint — real LLaDA naming, bf16,
sharded with a model.safetensors.index.json — then, each in a fresh process so that peak RSS
is that command's own:
  1. `qpass quantize DIR --pipeline P --out OUT` (streamed stage by stage; default w4a16-rtn;
     a calibrating pipeline such as w4a16-gptq gets --calib with --calib-n windows),
  2. `qpass.load_compiled(OUT)` and one forward of 16 tokens,
and reports peak RSS (ru_maxrss of the child), wall seconds, seconds per block and the output
bytes. --layers N makes a shallower model of the same widths (the per-block figures hold).

    python bench/scale_8b.py [--dir /tmp/llada-8b-random] [--layers 32] [--pipeline w4a16-gptq]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_checkpoint(path: Path, n_layers: int) -> None:
    """Random bf16 weights in LLaDA-8B's shapes and naming, one shard per block."""
    import torch
    from safetensors.torch import save_file

    from qpass.models import NAMED_CONFIGS
    from qpass.models.naming import config_to_hf, key_map
    from qpass.models.tokenizer import load_tokenizer
    cfg = NAMED_CONFIGS["llada-8b"]()
    cfg.n_layers = n_layers
    path.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    shapes = _shapes(cfg)
    weight_map, shard = {}, {}

    def flush(name):
        save_file(shard, str(path / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
        shard.clear()

    for i, (key, param) in enumerate(key_map(cfg).items()):
        shape = shapes[param]
        t = torch.empty(shape, dtype=torch.bfloat16)
        if len(shape) == 1:
            t.fill_(1.0)
        else:
            t.normal_(0.0, 0.02, generator=gen)
        shard[key] = t
        if sum(x.numel() for x in shard.values()) > 400_000_000:
            flush(f"model-{len(set(weight_map.values())):05d}.safetensors")
    if shard:
        flush(f"model-{len(set(weight_map.values())):05d}.safetensors")
    (path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (path / "config.json").write_text(json.dumps(config_to_hf(cfg), indent=1))
    tok = load_tokenizer(ROOT / "qpass" / "zoo" / "tiny-llada")
    if tok is not None and hasattr(tok, "save"):
        tok.save(path)


def _shapes(cfg) -> dict:
    from qpass.models.loading import build
    model = build(cfg, device="meta")
    return {n: tuple(p.shape) for n, p in model.named_parameters(remove_duplicate=False)}


def _child(code: str, *args) -> dict:
    """Run `code` in a fresh interpreter; its JSON line plus that child's own peak RSS (GiB,
    from wait4's rusage of exactly that process) and wall seconds."""
    import tempfile
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)   # reaped here, not by Popen
        wall = time.perf_counter() - t0
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode:
        raise SystemExit(f"child failed ({proc.returncode}): {stderr[-2000:]}")
    result = json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else {}
    result.update(peak_rss_gib=usage.ru_maxrss / 2**20, wall_s=wall)
    return result


QUANTIZE = """
import sys, json, torch
torch.set_num_threads(1)
from qpass.cli import main
rc = main(["quantize", sys.argv[1], "--pipeline", sys.argv[3], "--out", sys.argv[2], "--quiet",
           "--device", "cpu", *sys.argv[4:]])
print(json.dumps({"rc": rc}))
"""


def calibration_args(pipeline: str, work: Path, n: int, seq_len: int) -> list[str]:
    """--calib for pipelines that calibrate: a .txt of seeded random words (the checkpoint is
    random, so any text serves; the cost per block is what is measured)."""
    from qpass import presets
    if not any(p.needs_calibration for p in presets.get(pipeline).passes):
        return []
    import random
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "seven", "light", "code", "sum"]
    text = work / "calib.txt"
    text.write_text("\n".join(" ".join(rng.choice(words) for _ in range(40)) for _ in range(400)))
    return ["--calib", str(text), "--calib-n", str(n), "--seq-len", str(seq_len)]

FORWARD = """
import sys, json, time, torch, qpass
t0 = time.perf_counter()
m = qpass.load_compiled(sys.argv[1])
t1 = time.perf_counter()
ids = torch.randint(0, m.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    y = m(ids)
print(json.dumps({"load_s": t1 - t0, "forward_s": time.perf_counter() - t1,
                  "finite": bool(torch.isfinite(y).all())}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="/tmp/llada-8b-random")
    ap.add_argument("--out", default="/tmp/llada-8b-w4a16")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--pipeline", default="w4a16-rtn", help="a preset (GPTQ ones get --calib)")
    ap.add_argument("--calib-n", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=128)
    args = ap.parse_args()
    src, out = Path(args.dir), Path(args.out)
    if not (src / "config.json").exists():
        t0 = time.perf_counter()
        write_checkpoint(src, args.layers)
        print(f"wrote {src} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if out.exists():
        import shutil
        shutil.rmtree(out)           # the bench's own output from an earlier run
    src_bytes = sum(f.stat().st_size for f in src.glob("*.safetensors"))
    import tempfile
    with tempfile.TemporaryDirectory() as work:
        extra = calibration_args(args.pipeline, Path(work), args.calib_n, args.seq_len)
        q = _child(QUANTIZE, str(src), str(out), args.pipeline, *extra)
    out_bytes = sum(f.stat().st_size for f in out.iterdir())
    f = _child(FORWARD, str(out))
    n_layers = json.loads((src / "config.json").read_text())["n_layers"]
    print(json.dumps({
        "model": f"llada-8b-shaped ({n_layers} layers), random bf16",
        "pipeline": args.pipeline,
        "calibration": None if not extra else {"n": args.calib_n, "seq_len": args.seq_len},
        "input_bytes": src_bytes, "output_bytes": out_bytes,
        "bytes_ratio": out_bytes / src_bytes,
        "quantize": {"peak_rss_gib": round(q["peak_rss_gib"], 2), "wall_s": round(q["wall_s"], 1),
                     "s_per_block": round(q["wall_s"] / n_layers, 2)},
        "load_and_forward_16": {"peak_rss_gib": round(f["peak_rss_gib"], 2),
                                "load_s": round(f["load_s"], 1), "forward_s": round(f["forward_s"], 1),
                                "finite": f["finite"]},
    }, indent=1))


if __name__ == "__main__":
    main()

"""Train an embedded tiny dLLM of the zoo (masked diffusion): `tiny-llada` or `tiny-dream`.

    python scripts/train_tiny.py --corpus data/corpus --out qpass/zoo/tiny-llada
    python scripts/train_tiny.py --family dream --out qpass/zoo/tiny-dream --batch 16 ...

Objective (LLaDA): per sequence t ~ U(eps, 1), each token masked with probability t, loss =
sum over masked positions of CE / t, divided by B·L. The Dream family reads its logits shifted
by one (position i-1 predicts token i, done inside the model) and, as Dream's own likelihood
estimator assumes, never masks the first token (nothing precedes it to predict it from).
Seeded; writes an HF-format checkpoint in the family's naming, the byte tokenizer, held-out
eval files and train_log.json (the curve)."""
from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from qpass.data.sources import ARITH_FILE, CODE_FILE, GENERAL_FILE  # noqa: E402
from qpass.models import ByteTokenizer, ModelConfig, build, save_checkpoint  # noqa: E402

MIXTURE = {"shakespeare_train.txt": 0.45, "python_train.txt": 0.35, "arith_train.txt": 0.20}


def tiny_config() -> ModelConfig:
    tok = ByteTokenizer()
    return ModelConfig(d_model=256, n_layers=6, n_heads=4, n_kv_heads=4, mlp_hidden=768,
                       vocab_size=264, mask_token_id=tok.mask_token_id,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                       rope_theta=10000.0, norm_eps=1e-5, max_seq_len=1024,
                       family="llada", name="tiny-llada")


def tiny_dream_config() -> ModelConfig:
    """Dream/Qwen2 layout: GQA (4 query heads over 2 KV heads), q/k/v biases, logits shifted
    by one. Half tiny-llada's width and 4 blocks (0.86M parameters): it was trained on a
    shared CPU, where this size reaches ~3x the tokens of a 256-wide model in the same
    minutes. Group 128 divides K (128, 384) and the Hadamard sizes 128 and 384 = 32·12 exist."""
    tok = ByteTokenizer()
    return ModelConfig(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, mlp_hidden=384,
                       vocab_size=264, mask_token_id=tok.mask_token_id,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                       rope_theta=10000.0, norm_eps=1e-6, qkv_bias=True, logit_shift=True,
                       max_seq_len=1024, family="dream", name="tiny-dream")


CONFIGS = {"llada": tiny_config, "dream": tiny_dream_config}


def batches(corpus: Path, batch: int, seq: int, gen: torch.Generator, device):
    data = {k: torch.frombuffer(bytearray((corpus / k).read_bytes()), dtype=torch.uint8)
            for k in MIXTURE}
    names = list(MIXTURE)
    probs = torch.tensor([MIXTURE[k] for k in names])
    while True:
        src = torch.multinomial(probs, batch, replacement=True, generator=gen)
        rows = []
        for s in src.tolist():
            d = data[names[s]]
            i = int(torch.randint(0, len(d) - seq, (1,), generator=gen))
            rows.append(d[i:i + seq])
        yield torch.stack(rows).long().to(device)


def diffusion_loss(model, x, mask_id: int, gen: torch.Generator, eps: float = 1e-3,
                   keep_first: bool = False):
    B, L = x.shape
    t = eps + (1 - eps) * torch.rand(B, 1, generator=gen).to(x.device)
    masked = torch.rand(B, L, generator=gen).to(x.device) < t
    if keep_first:
        masked[:, 0] = False
    noisy = torch.where(masked, torch.full_like(x, mask_id), x)
    logits = model(noisy)
    ce = F.cross_entropy(logits.float().transpose(1, 2), x, reduction="none")
    return (ce * masked / t).sum() / (B * L)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=sorted(CONFIGS), default="llada")
    ap.add_argument("--corpus", default="data/corpus")
    ap.add_argument("--out", default="qpass/zoo/tiny-llada")
    ap.add_argument("--steps", type=int, default=12000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-minutes", type=float, default=60.0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    dev = torch.device(a.device)
    cfg = CONFIGS[a.family]()
    model = build(cfg, device="cpu", seed=a.seed).to(dev).train()
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, betas=(0.9, 0.95), weight_decay=0.1)
    warm = max(1, a.steps // 50)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1, (s + 1) / warm) * (
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / a.steps)))))
    gen = torch.Generator().manual_seed(a.seed)
    it = batches(Path(a.corpus), a.batch, a.seq, gen, dev)
    use_amp = dev.type == "cuda"
    log, t0, ema = [], time.time(), None
    for step in range(a.steps):
        x = next(it)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
            loss = diffusion_loss(model, x, cfg.mask_token_id, gen,
                                  keep_first=cfg.logit_shift)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 100 == 0 or step == a.steps - 1:
            el = time.time() - t0
            log.append({"step": step, "loss_nats_per_token": round(ema, 4), "seconds": round(el, 1)})
            print(f"step {step:6d}  loss {ema:.4f}  {el:7.1f}s", flush=True)
            if el > a.max_minutes * 60:
                print(f"stopping at the time budget ({a.max_minutes} min)", flush=True)
                break
    model = model.to("cpu").eval()
    model.tokenizer = ByteTokenizer()
    out = Path(a.out)
    save_checkpoint(model, out, dtype=torch.bfloat16)
    (out / "eval").mkdir(exist_ok=True)
    for name in (GENERAL_FILE, CODE_FILE, ARITH_FILE):
        shutil.copy(Path(a.corpus) / name, out / "eval" / name)
    meta = {"params": n_params, "steps_done": log[-1]["step"] + 1, "args": vars(a),
            "device": str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__, "mixture": MIXTURE, "curve": log}
    (out / "train_log.json").write_text(json.dumps(meta, indent=1))
    print(json.dumps({k: v for k, v in meta.items() if k != "curve"}))


if __name__ == "__main__":
    main()

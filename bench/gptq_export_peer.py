"""A qpass GPTQ-format export read back by GPTQModel's own loader, against qpass; prints JSON.

Two steps, because GPTQModel lives in the bench venv (`pip install -e .[bench]`) and the
exported model's source checkpoint in qpass's:

    qpass quantize HF_DIR --pipeline w4a16-rtn --out Q && qpass export Q --format gptq --out E
    .venv-bench/bin/python bench/gptq_export_peer.py gptqmodel E logits.pt   # GPTQModel, CPU
    .venv/bin/python bench/gptq_export_peer.py compare Q logits.pt          # vs qpass

GPTQModel's CPU kernel (TorchLinear) computes in float16 or bfloat16 only, so its logits
carry half-precision rounding over every layer; the weight check (every linear of the first
and last block run by GPTQModel on an identity input) separates that from the format."""
from __future__ import annotations

import argparse
import json
import sys

import torch


def gptqmodel_side(export_dir: str, out: str, dtype: str) -> None:
    from gptqmodel import BACKEND, GPTQModel
    torch.manual_seed(0)
    m = GPTQModel.load(export_dir, device="cpu", backend=BACKEND.TORCH,
                       dtype=getattr(torch, dtype))
    vocab = m.model.config.vocab_size
    ids = torch.randint(0, vocab, (2, 32), generator=torch.Generator().manual_seed(0))
    weights = {}
    with torch.no_grad():
        logits = m.model(input_ids=ids).logits.float()
        for i in (0, len(m.model.model.layers) - 1):
            layer = m.model.model.layers[i]
            for name, lin in {**_named(layer.self_attn), **_named(layer.mlp)}.items():
                eye = torch.eye(lin.in_features, dtype=lin.scales.dtype)
                weights[f"blocks.{i}.{name}"] = lin(eye).float().t()     # as GPTQModel runs it
    torch.save({"ids": ids, "logits": logits, "weights": weights, "dtype": dtype}, out)


def _named(module) -> dict:
    return {n: getattr(module, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                             "up_proj", "down_proj") if hasattr(module, n)}


def compare_side(compiled_dir: str, saved: str) -> dict:
    import qpass
    d = torch.load(saved, weights_only=True)
    m = qpass.load_compiled(compiled_dir)
    rel = {}
    with torch.no_grad():
        ours = m(d["ids"]).float()
        for name, theirs_w in d["weights"].items():
            q = m.gm.get_submodule(name)
            w = q(torch.eye(q.in_features)[None])[0].float().t()
            rel[name] = float((w - theirs_w).norm() / w.norm())
    theirs = d["logits"]
    return {"gptqmodel_dtype": d["dtype"], "linears_checked": len(rel),
            "weight_rel_diff_max": max(rel.values()),
            "logits_rel_diff": float((ours - theirs).norm() / ours.norm()),
            "logits_max_abs_diff_over_max": float((ours - theirs).abs().max() / theirs.abs().max()),
            "argmax_agreement": float((ours.argmax(-1) == theirs.argmax(-1)).float().mean())}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gptqmodel")
    g.add_argument("export_dir"), g.add_argument("out")
    g.add_argument("--dtype", default="float16", choices=("float16", "bfloat16"))
    c = sub.add_parser("compare")
    c.add_argument("compiled_dir"), c.add_argument("saved")
    a = ap.parse_args(argv)
    if a.cmd == "gptqmodel":
        gptqmodel_side(a.export_dir, a.out, a.dtype)
        return 0
    print(json.dumps(compare_side(a.compiled_dir, a.saved), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

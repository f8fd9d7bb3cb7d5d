"""Streaming against an independent block-by-block reference (issue 13).

The reference shares nothing with qpass's streaming, capture or sequential runner: it reads
each block's tensors from the sharded HF checkpoint by their LLaDA names, runs the block with
the float64 reference ops of tests/models/reference_forward.py, rounds the block's weights
with a hand-written full-range RTN grid (or qpass's public single-matrix GPTQ,
`qpass.passes.gptq.quantize_weight`, on Hessians the loop builds itself from the block's
inputs — those come out of the previous, already-quantized blocks), and feeds the quantized
block forward. The streamed checkpoint must hold the same weights and compute the same logits."""
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import qpass
from qpass import passes as P
from qpass.calibration import CalibrationSet
from qpass.models.loading import save_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from reference_forward import attend, rms, rope  # noqa: E402

GROUP = 32
PARTS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "attn_out", "gate": "ff_proj",
         "up": "up_proj", "down": "ff_out"}                 # LLaDA's names
MODULES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj",
           "up": "up_proj", "down": "down_proj"}            # the compiled graph's module paths


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """tiny-llada as a bf16 HF checkpoint with one shard per block plus an index."""
    flat = tmp_path_factory.mktemp("flat")
    save_checkpoint(qpass.models.load("tiny-llada"), flat, dtype=torch.bfloat16)
    d = tmp_path_factory.mktemp("sharded")
    tensors = load_file(flat / "model.safetensors")
    shards: dict[str, dict] = {}
    for k, t in tensors.items():
        part = k.split(".")[3] if ".blocks." in k else "outer"
        shards.setdefault(f"model-{part}.safetensors", {})[k] = t
    weight_map = {}
    for name, ts in shards.items():
        save_file(ts, str(d / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in ts})
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    for f in flat.iterdir():
        if f.name != "model.safetensors":
            (d / f.name).write_bytes(f.read_bytes())
    return d


class Shards:
    """Reads one tensor at a time from the checkpoint by its HF name, as float64."""

    def __init__(self, d: Path):
        self.d = d
        self.map = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]
        self.cfg = json.loads((d / "config.json").read_text())

    def __getitem__(self, key: str) -> torch.Tensor:
        with safe_open(str(self.d / self.map[key]), framework="pt") as f:
            return f.get_tensor(key).double()


def rtn_int4_sym(W: torch.Tensor) -> torch.Tensor:
    """Full-range symmetric int4 per group of 32 along K (scale = 2·absmax/15, codes in
    [−8, 7]), computed in float32 like a float32 model's weights; returned dequantized."""
    N, K = W.shape
    g = W.float().reshape(N, K // GROUP, GROUP)
    scale = (2 * g.abs().amax(-1, keepdim=True) / 15).clamp(min=torch.finfo(torch.float32).tiny)
    return ((g / scale).round().clamp(-8, 7) * scale).reshape(N, K).double()


def block_forward(x, w, cfg, quant=None):
    """One LLaDA block in float64. w: part -> weight; quant(part, W, X) -> the weight to use
    (called in execution order with that linear's input X, so GPTQ can take its Hessian from
    inputs computed by the already-quantized parts)."""
    B, L, d = x.shape
    H = cfg["n_heads"]
    Hk, hd, eps, theta = cfg["n_kv_heads"], d // H, cfg["rms_norm_eps"], cfg["rope_theta"]

    def lin(part, h):
        if quant is not None:
            w[part] = quant(part, w[part], h)
        return h @ w[part].T

    h = rms(x, w["attn_norm"], eps)
    q = lin("q", h).view(B, L, H, hd).transpose(1, 2)
    k = lin("k", h).view(B, L, Hk, hd).transpose(1, 2)
    v = lin("v", h).view(B, L, Hk, hd).transpose(1, 2)
    a = attend(rope(q, theta), rope(k, theta), v, False).transpose(1, 2).reshape(B, L, d)
    x = x + lin("o", a)
    h = rms(x, w["ff_norm"], eps)
    gate = lin("gate", h)
    return x + lin("down", gate * torch.sigmoid(gate) * lin("up", h))


def reference(src: Shards, ids_batches, quantize, eval_ids):
    """Quantize block by block, each on the outputs of the quantized blocks before it; returns
    ({module path: dequantized weight}, float64 logits of `eval_ids`)."""
    cfg = src.cfg
    stem = "model.transformer."
    emb = src[stem + "wte.weight"]
    xs = [emb[ids] for ids in ids_batches]
    x_eval = emb[eval_ids]
    weights = {}
    for i in range(cfg["n_layers"]):
        w = {p: src[f"{stem}blocks.{i}.{n}.weight"] for p, n in PARTS.items()}
        w.update({n: src[f"{stem}blocks.{i}.{n}.weight"] for n in ("attn_norm", "ff_norm")})
        done = quantize(w, xs, cfg)                 # every linear of block i, in order
        xs = [block_forward(x, done, cfg) for x in xs]
        x_eval = block_forward(x_eval, done, cfg)
        weights.update({f"blocks.{i}.{MODULES[p]}": done[p] for p in PARTS})
    logits = rms(x_eval, src[stem + "ln_f.weight"], cfg["rms_norm_eps"]) @ src[stem + "ff_out.weight"].T
    return weights, logits


def rtn_block(w, xs, cfg):
    return {**w, **{p: rtn_int4_sym(w[p]) for p in PARTS}}


def gptq_block(w, xs, cfg, hessians=None):
    """Sequential GPTQ inside the block: q/k/v share their input, then o, then gate/up, then
    down; each group's H = 2·Σxᵀx/n over the calibration tokens, from inputs produced by
    the block's already-quantized groups (kept in `hessians` by part when given)."""
    from qpass.passes.gptq import quantize_weight
    w = dict(w)
    for grp in (("q", "k", "v"), ("o",), ("gate", "up"), ("down",)):
        gram, rows = {}, {}

        def watch(part, W, X, grp=grp):
            if part in grp:
                X2 = X.reshape(-1, X.shape[-1])
                gram[part] = gram.get(part, 0) + X2.T @ X2
                rows[part] = rows.get(part, 0) + X2.shape[0]
            return W
        for x in xs:
            block_forward(x, dict(w), cfg, watch)
        for part in grp:
            H = 2 * gram[part] / rows[part]
            if hessians is not None:
                hessians[part] = H
            Wq, _ = quantize_weight(w[part].float(), H, f"int4:g{GROUP}:sym")
            w[part] = Wq.double()
    return w


def _streamed(sharded, tmp_path, pass_, calib):
    path = qpass.Pipeline([pass_], scheme=f"int4:g{GROUP}:sym").run(
        str(sharded), calib, out=tmp_path / "q", progress=False).path
    return qpass.load_compiled(path)


def _calib(cfg):
    # 16×64 tokens: more than any linear's K (768), so H is well conditioned
    return CalibrationSet.from_ids(torch.randint(0, 256, (8000,), generator=torch.Generator().manual_seed(4)),
                                   mask_id=cfg["mask_token_id"], n=16, seq_len=64, seed=5)


EVAL = torch.randint(0, 90, (2, 16), generator=torch.Generator().manual_seed(2))


def test_streamed_rtn_equals_block_by_block_reference(sharded, tmp_path):
    src = Shards(sharded)
    loaded = _streamed(sharded, tmp_path, P.RTN(), None)
    ref_w, ref_logits = reference(src, [], rtn_block, EVAL)
    for target, W in ref_w.items():
        got = loaded.gm.get_submodule(target).dequantized_weight(torch.float64)
        assert torch.equal(got, W), target          # same grid, same codes, same scales
    with torch.no_grad():
        out = loaded(EVAL).double()
    rel = float((out - ref_logits).abs().max() / ref_logits.abs().max())
    assert rel < 1e-5, rel                          # float32 model vs float64 reference


def test_streamed_gptq_matches_block_by_block_reference(sharded, tmp_path):
    """GPTQ's codes are not a continuous function of H: fp32 activations (qpass) against
    fp64 (here) flip a few roundings, and the error feedback carries each flip along its row,
    so codes are compared by what GPTQ minimises instead: on the reference's own Hessians
    (inputs from its quantized earlier blocks), the streamed weights must reach the
    reference's output error, well below RTN's; and the logits must agree."""
    src = Shards(sharded)
    calib = _calib(src.cfg)
    # refine=0: the reference is plain GPTQ (quantize_weight without refinement sweeps)
    loaded = _streamed(sharded, tmp_path, P.GPTQ(refine=0), calib)
    hessians: dict[str, torch.Tensor] = {}

    def keep(w, xs, cfg):
        block = len(hessians) // len(PARTS)
        per: dict[str, torch.Tensor] = {}
        out = gptq_block(w, xs, cfg, per)
        hessians.update({f"blocks.{block}.{MODULES[p]}": H for p, H in per.items()})
        return out
    ids = [b[0] for b in calib.batches(8)]
    ref_w, ref_logits = reference(src, ids, keep, EVAL)
    float_w, float_logits = reference(src, [], lambda w, xs, cfg: w, EVAL)
    rtn_w, _ = reference(src, [], rtn_block, EVAL)

    def err(target, Wq):                       # tr((W − Wq)·H·(W − Wq)ᵀ)
        D = float_w[target] - Wq
        return float(((D @ hessians[target]) * D).sum())
    for i in range(src.cfg["n_layers"]):
        names = [f"blocks.{i}.{MODULES[p]}" for p in PARTS]
        got = sum(err(t, loaded.gm.get_submodule(t).dequantized_weight(torch.float64)) for t in names)
        ref = sum(err(t, ref_w[t]) for t in names)
        rtn = sum(err(t, rtn_w[t]) for t in names)
        assert got < 1.1 * ref and got < 0.8 * rtn, (i, got, ref, rtn)
    with torch.no_grad():
        out = loaded(EVAL).double()
    # two int4 realisations differ from each other about as much as from float, so the
    # logits are compared by their distance to the float model's
    drift = lambda x: float((x - float_logits).norm() / float_logits.norm())  # noqa: E731
    got, ref = drift(out), drift(ref_logits)
    rtn = drift(reference(src, [], rtn_block, EVAL)[1])
    # at most 15% further from float than the reference (closer is fine): 0.114, 0.140, 0.153.
    # Calibrated on random tokens unlike EVAL, GPTQ's logit drift is at RTN's level (the
    # per-layer objective above is where it must win): left-looking solve 0.155, RTN 0.153
    assert got < 1.15 * ref and got < 1.05 * rtn, (got, ref, rtn)


def test_a_shard_missing_mid_run_is_one_clear_error_and_resumes(sharded, tmp_path):
    """Block 1's shard disappears (an unmounted disk, a partial download): the run stops at
    that stage with a CheckpointError naming the file, keeps the stages before it, and once
    the shard is back the rerun resumes and equals an uninterrupted run byte for byte."""
    import shutil
    src = tmp_path / "src"
    shutil.copytree(sharded, src)
    gone = src / "model-1.safetensors"
    kept = gone.read_bytes()
    gone.unlink()
    pipe = lambda: qpass.Pipeline([P.RTN()], scheme=f"int4:g{GROUP}:sym")  # noqa: E731
    with pytest.raises(qpass.CheckpointError, match="model-1.safetensors disappeared during the run; restore it"):
        pipe().run(str(src), out=tmp_path / "q", progress=False)
    progress = json.loads((tmp_path / ".q.qpass-stream" / "progress.json").read_text())
    assert len(progress["stages"]) == 2                 # prefix and block 0 were written
    gone.write_bytes(kept)
    resumed = pipe().run(str(src), out=tmp_path / "q", progress=False).path
    clean = pipe().run(str(sharded), out=tmp_path / "clean", progress=False).path
    shards = lambda d: {p.name: p.read_bytes() for p in sorted(d.glob("*.safetensors"))}  # noqa: E731
    assert shards(resumed) == shards(clean)

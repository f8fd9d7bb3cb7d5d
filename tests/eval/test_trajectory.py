"""Trajectory error (qpass.eval.trajectory): exact identities, a hand-computed KL, a
constructed divergence, and the block variants behind the per-block attribution."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

import qpass
from qpass import presets
from qpass.errors import QpassError
from qpass.eval import trajectory
from qpass.eval.trajectory_blocks import block_node_names, block_variants, with_blocks_kept
from qpass.eval.trajectory_metrics import first_divergence, kl_per_position

V, MASK = 4, 3


class Fixed(nn.Module):
    """Context-free logits: the same row `logits` at every position."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("row", torch.tensor(logits, dtype=torch.float64))
        self.config = SimpleNamespace(mask_token_id=MASK, eos_token_id=None, pad_token_id=None,
                                      logit_shift=False, vocab_size=V)
        self.tokenizer = None

    def forward(self, x, attention_mask=None):
        return self.row.expand(x.shape[0], x.shape[1], V).clone()


class SwitchAfter(nn.Module):
    """Proposes token 0 with confidence falling along the sequence (so the low-confidence
    sampler commits left to right, one per step); once `k` generated tokens are committed it
    proposes token 1 instead (k=None: never)."""

    def __init__(self, gen_length, k=None):
        super().__init__()
        self.gen_length, self.k = gen_length, k
        self.register_buffer("dummy", torch.zeros(1))
        self.config = SimpleNamespace(mask_token_id=MASK, eos_token_id=None, pad_token_id=None,
                                      logit_shift=False, vocab_size=V)
        self.tokenizer = None

    def forward(self, x, attention_mask=None):
        B, L = x.shape
        committed = (x[:, L - self.gen_length:] != MASK).sum(dim=1)           # (B,)
        tok = torch.zeros(B, dtype=torch.long)
        if self.k is not None:
            tok = (committed >= self.k).long()
        margin = 4.0 - torch.arange(L, dtype=torch.float32) / L              # falls with i
        logits = torch.zeros(B, L, V)
        logits.scatter_(2, tok[:, None, None].expand(B, L, 1), margin[None, :, None].expand(B, L, 1))
        return logits


def test_fp_against_itself_is_exactly_zero():
    fp = qpass.models.load("tiny-llada-random")
    prompts = [[1, 2, 3, 4], [5, 6]]                       # different lengths: left padding
    for kw in ({}, {"temperature": 0.8}):                  # the replay reproduces Gumbel noise
        rep = trajectory(fp, fp, prompts, gen_length=8, steps=8, block_length=4, **kw).to_dict()
        entry = rep["models"]["quantized"]
        assert len(entry["steps"]) == 8
        for s in entry["steps"]:
            assert s["kl"] == 0.0 and s["kl_max"] == 0.0
            assert s["top1_agreement"] == 1.0
            assert s["commit_jaccard"] == 1.0 and s["commit_token_agreement"] == 1.0
            assert s["masked"] > 0
            assert s["wrong_commits"] == 0 and s["q_committed"] == s["committed"] > 0
        assert entry["summary"]["wrong_commit_rate"] == 0.0
        assert entry["free_running"]["first_divergence"] == [None, None]
        assert entry["free_running"]["final_token_agreement"] == 1.0


def test_dream_sampler_fp_against_itself_and_a_perturbed_copy():
    fp = qpass.models.load("tiny-dream-random")
    other = qpass.models.load("tiny-dream-random", seed=1)     # different weights
    rep = trajectory(fp, {"same": fp, "other": other}, [[1, 2, 3]], gen_length=6, steps=6,
                     block_length=None, alg="maskgit_plus").to_dict()
    assert rep["settings"]["sampler"] == "dream"
    assert all(s["kl"] == 0.0 for s in rep["models"]["same"]["steps"])
    assert all(s["kl"] > 0.0 for s in rep["models"]["other"]["steps"])


def test_hand_computed_kl_and_mask_column_ignored():
    # FP proposes (1/2, 1/4, 1/4), Q (1/4, 1/2, 1/4); the mask logits differ and must not count.
    fp = Fixed([math.log(0.5), math.log(0.25), math.log(0.25), 5.0])
    q = Fixed([math.log(0.25), math.log(0.5), math.log(0.25), -7.0])
    expected = 0.5 * math.log(2) + 0.25 * math.log(0.5)      # = ln(2) / 4
    rep = trajectory(fp, q, [[0, 1]], gen_length=4, steps=4, block_length=4,
                     free_running=False).to_dict()
    for s in rep["models"]["quantized"]["steps"]:
        assert s["kl"] == pytest.approx(expected, abs=1e-12)
        assert s["top1_agreement"] == 0.0                    # argmax 0 vs 1
        assert s["commit_jaccard"] == 1.0                    # same positions (ties) ...
        assert s["commit_token_agreement"] == 0.0            # ... different tokens
        assert s["wrong_commits"] == s["q_committed"] > 0     # so every Q commit is wrong
    assert rep["models"]["quantized"]["summary"]["wrong_commit_rate"] == 1.0


def test_kl_per_position_against_brute_force_float64():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 3, 7, generator=g), torch.randn(2, 3, 7, generator=g)
    got = kl_per_position(a, b, mask_id=2)
    for i in range(2):
        for j in range(3):
            pa = [math.exp(float(v)) for k, v in enumerate(a[i, j]) if k != 2]
            pb = [math.exp(float(v)) for k, v in enumerate(b[i, j]) if k != 2]
            pa = [p / sum(pa) for p in pa]
            pb = [p / sum(pb) for p in pb]
            want = sum(p * math.log(p / r) for p, r in zip(pa, pb))
            assert float(got[i, j]) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize("k", [0, 2, 5])
def test_constructed_divergence_step(k):
    gen = 6
    fp, q = SwitchAfter(gen), SwitchAfter(gen, k=k)
    rep = trajectory(fp, q, [[0, 1, 2], [2, 1, 0]], gen_length=gen, steps=gen,
                     block_length=gen).to_dict()
    entry = rep["models"]["quantized"]
    assert entry["free_running"]["first_divergence"] == [k, k]
    assert entry["free_running"]["earliest"] == k
    # along FP's trajectory the proposals agree exactly until k tokens are committed
    assert [s["top1_agreement"] for s in entry["steps"]] == [1.0] * k + [0.0] * (gen - k)
    assert [s["commit_token_agreement"] for s in entry["steps"]] == [1.0] * k + [0.0] * (gen - k)


def test_first_divergence_handles_unequal_lengths():
    a = [torch.tensor([[1, 3]]), torch.tensor([[1, 2]])]
    b = [torch.tensor([[1, 3]])]                            # stopped after one step
    assert first_divergence(a, b) == [1]
    assert first_divergence(a, a) == [None]


def test_cache_is_refused():
    fp = qpass.models.load("tiny-llada-random")
    with pytest.raises(QpassError, match="cache"):
        trajectory(fp, fp, [[1, 2]], gen_length=4, steps=4, block_length=4, cache="prefix")


def _logits(m, x):
    out = m(x)
    return getattr(out, "logits", out)


def test_block_variants_change_only_their_block():
    fp = qpass.models.load("tiny-llada-random")
    names = block_node_names(fp)
    assert len(names) == fp.config.n_layers
    assert all(any(n.endswith("q_proj") for n in blk) for blk in names)
    x = torch.randint(0, 90, (2, 12), generator=torch.Generator().manual_seed(0))
    make = lambda: presets.get("w4a16-rtn")  # noqa: E731
    full = make().run(fp, None, verify=False, progress=False)
    none_kept = with_blocks_kept(make(), []).run(fp, None, verify=False, progress=False)
    assert torch.equal(_logits(none_kept, x), _logits(full, x))
    variants = block_variants(fp, make, mode="quantize-one")
    for b, v in variants.items():
        quantized = set(v.quantized_linears())
        assert quantized == {n for n in names[b] if n.endswith("_proj")}, b
        assert quantized                                  # the block really is quantized
    # two blocks: restoring block b to FP is quantizing only the other one
    assert len(names) == 2
    restored = block_variants(fp, make, mode="restore-one")
    for b in (0, 1):
        assert torch.equal(_logits(restored[b], x), _logits(variants[1 - b], x))
    rep = trajectory(fp, full, [[1, 2, 3]], gen_length=8, steps=8, block_length=4,
                     attribution={"quantized": variants}).to_dict()
    attr = rep["models"]["quantized"]["attribution"]
    assert [r["block"] for r in attr["blocks"]] == list(range(fp.config.n_layers))
    assert all(r["effect"] > 0 for r in attr["blocks"])
    assert attr["top_block"] == max(attr["blocks"], key=lambda r: r["effect"])["block"]


def test_cli_writes_json_and_png(tmp_path, capsys):
    import json

    from qpass.cli import main
    out_json, out_png, ckpt = tmp_path / "t.json", tmp_path / "t.png", tmp_path / "w4"
    assert main(["quantize", "tiny-llada", "--pipeline", "w4a16-rtn", "--out", str(ckpt),
                 "--quiet"]) == 0
    rc = main(["eval", "tiny-llada", "--trajectory", f"{ckpt},w4a16-rtn", "--n-prompts", "2",
               "--gen-length", "8", "--steps", "8", "--block-length", "4",
               "--json", str(out_json), "--png", str(out_png)])
    assert rc == 0
    data = json.loads(out_json.read_text())
    steps = data["models"]["w4a16-rtn"]["steps"]
    assert len(steps) == 8 and all(s["kl"] > 0 for s in steps)
    # the saved, lowered checkpoint and the in-memory run of the same preset agree
    lowered = data["models"][str(ckpt)]["steps"]
    assert [s["kl"] for s in lowered] == pytest.approx([s["kl"] for s in steps], rel=1e-3)
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "trajectory error vs FP" in capsys.readouterr().out


@pytest.mark.parametrize("argv, needle", [
    (["--trajectory", "w4a16-rtn", "--block-length", "3"], "--block-length 3 must divide"),
    (["--trajectory", " , "], "at least one"),
    (["--trajectory", "w4a16-rtn", "--steps", "3"], "--steps 3 must split evenly"),
    (["--trajectory", "no-such-pipeline"], "unknown pipeline preset"),
])
def test_cli_bad_trajectory_input_is_one_line(tmp_path, capsys, argv, needle):
    from qpass.cli import main
    rc = main(["eval", "tiny-llada", "--gen-length", "8", "--steps", "8", "--block-length", "4",
               *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0]

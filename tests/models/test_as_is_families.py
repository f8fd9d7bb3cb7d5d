"""LLaDA2, LLaDA-MoE and SDAR from checkpoints that ship their own code (issue 27), and
DiffusionGemma streamed: remote code only when trusted, every linear covered, GPTQ closer to
the float model than RTN, streamed == in memory, qpass's samplers on the quantized model."""
import os
import sys
from pathlib import Path

import pytest
import torch

import qpass
from qpass.errors import CheckpointError
from qpass.presets import PRESETS

FIX = Path(__file__).resolve().parents[1] / "fixtures"
sys.path.insert(0, str(FIX))
import diffusion_gemma as dg  # noqa: E402


from remote_fixtures import build as remote, isolation  # noqa: E402

TEXT = open(os.path.join(os.path.dirname(qpass.__file__), "ops.py")).read()
FAMILIES = ["llada2", "llada_moe", "sdar"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Per family: its dir, the in-memory GPTQ result saved, RTN, and a streamed GPTQ run."""
    root = tmp_path_factory.mktemp("families")
    out = {}
    with isolation.private_modules_cache(root / "hf_modules"):
        for fam in FAMILIES:
            d = remote.build(fam, root / fam)
            gptq = PRESETS["w4a16-gptq"]().run(d, calib=TEXT, out=root / f"{fam}-mem",
                                               progress=False, trust_remote_code=True)
            rtn = PRESETS["w4a16-rtn"]().run(d, calib=TEXT, progress=False,
                                             trust_remote_code=True)
            meta = qpass.models.load(d, device="meta", trust_remote_code=True)
            streamed = PRESETS["w4a16-gptq"]().run(meta, calib=TEXT, out=root / f"{fam}-stream",
                                                   progress=False)
            fp = qpass.models.load(d, trust_remote_code=True)
            back = {k: qpass.load_compiled(root / f"{fam}-{k}", trust_remote_code=True)
                    for k in ("mem", "stream")}
            out[fam] = dict(dir=d, gptq=gptq, rtn=rtn, streamed=streamed, fp=fp, back=back)
        yield out


def _ids(seed=0):
    return torch.randint(4, remote.VOCAB, (2, 12), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_remote_code_needs_trust(family, tmp_path):
    with isolation.private_modules_cache(tmp_path / "hf"):
        d = remote.build(family, tmp_path / family)
        with pytest.raises(CheckpointError, match="--trust-remote-code"):
            qpass.models.load(d)
        with pytest.raises(CheckpointError, match="--trust-remote-code"):
            PRESETS["w4a16-rtn"]().run(d, progress=False)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_linear_quantized_or_kept_with_reason(runs, family):
    r = runs[family]
    fp = r["fp"]
    linears = {n for n, m in fp.named_modules() if isinstance(m, torch.nn.Linear)}
    rows = r["gptq"].report["items"] + r["gptq"].report["kept"]
    covered = {a for it in r["gptq"].structure for a in it["aliases"]
               if it["path"] in {x["path"] for x in rows}}
    assert linears <= covered
    assert all(k["reason"] for k in r["gptq"].report["kept"])
    quantized = {x["path"] for x in r["gptq"].report["items"]}
    assert "lm_head" not in quantized and len(quantized) >= 10
    routers = [k["path"] for k in r["gptq"].report["kept"] if k["role"] == "router"]
    if family != "sdar":             # LLaDA2's gate multiplies by its own weight (F.linear)
        assert routers and all(".mlp.gate" in p for p in routers)
    if family != "sdar":             # the MoE families: every expert linear got its tokens
        experts = [x for x in r["gptq"].report["items"] if ".experts." in x["path"]]
        assert experts and all(x["tokens"] > 0 for x in experts)


def _held_out(model):
    """Masked-diffusion states of text the calibration never saw."""
    from qpass.calibration.dataset import CalibrationSet
    from qpass.calibration.model_states import model_states
    src = open(os.path.join(os.path.dirname(qpass.__file__), "sampling", "common.py")).read()
    clean = CalibrationSet.from_texts(src, model.tokenizer, n=16, seq_len=32,
                                      masking="none", seed=5).clean_ids
    return model_states(model, clean, batch_size=16, seed=5)[0]["input_ids"]


@pytest.mark.parametrize("family", FAMILIES)
def test_gptq_closer_than_rtn_and_streamed_equals_memory(runs, family):
    r = runs[family]
    held = _held_out(r["fp"])
    want = _logits(r["fp"], held)
    err = {k: float((_logits(r[k], held) - want).norm() / want.norm()) for k in ("gptq", "rtn")}
    assert 0 < err["gptq"] < err["rtn"]
    ids = _ids(1)
    mem, stream = (_logits(r["back"][k], ids) for k in ("mem", "stream"))
    assert torch.equal(mem, stream)
    assert torch.allclose(mem, _logits(r["gptq"], ids), atol=1e-5)
    assert r["streamed"].report["streamed"]["tensor_reads"] > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_qpass_sampler_runs_on_the_quantized_model(runs, family):
    from qpass.sampling import generate, resolve_sampler
    q = runs[family]["back"]["mem"]
    assert resolve_sampler(q, "auto") == ("block" if family == "sdar" else "llada")
    kw = {} if family == "sdar" else {"block_length": 4}       # SDAR: its own block size
    out = generate(q, torch.tensor([[5, 6, 7, 8]]), gen_length=8, steps=8, **kw)
    assert out.shape == (1, 12) and torch.equal(out[0, :4], torch.tensor([5, 6, 7, 8]))
    assert int((out == remote.MASK).sum()) == 0


def test_diffusion_gemma_streamed_equals_memory(tmp_path):
    d = dg.build(tmp_path / "dg")
    mem = PRESETS["w4a16-gptq"]().run(d, calib=TEXT, out=tmp_path / "mem", progress=False)
    meta = qpass.models.load(d, device="meta")
    assert all(p.is_meta for p in meta.parameters())
    PRESETS["w4a16-gptq"]().run(meta, calib=TEXT, out=tmp_path / "stream", progress=False)
    a, b = qpass.load_compiled(tmp_path / "mem"), qpass.load_compiled(tmp_path / "stream")
    ids, canvas = dg.prompt_and_canvas(4, batch=2)
    with torch.no_grad():
        la = a(input_ids=ids, decoder_input_ids=canvas).logits
        lb = b(input_ids=ids, decoder_input_ids=canvas).logits
    assert torch.equal(la, lb)
    assert mem.report["logits_rel_error"] > 0

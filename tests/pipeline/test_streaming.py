"""Stage-wise execution over a checkpoint directory (DESIGN §12): the streamed checkpoint
equals the in-memory one tensor for tensor for every preset (and a few hand-built pipelines),
a killed run resumes to the same bytes, rotated runs included; both forms go through the one
executor, so a pass that inserts a node read by another stage is one clear error."""
import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import qpass
from qpass import passes as P
from qpass.calibration import CalibrationSet
from qpass.cli.quantize import with_lowering
from qpass.models.loading import save_checkpoint
from qpass.pipeline.pass_base import PASSES


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """Zoo model name -> its bf16 HF checkpoint dir, written once per module on first use."""
    made = {}

    def get(zoo: str):
        if zoo not in made:
            made[zoo] = tmp_path_factory.mktemp("hf") / zoo
            save_checkpoint(qpass.models.load(zoo), made[zoo], dtype=torch.bfloat16)
        return made[zoo]
    return get


@pytest.fixture(scope="module")
def hf_dir(hf_dirs):
    return hf_dirs("tiny-llada")


def _calib(model):
    return CalibrationSet.from_ids(torch.arange(4000) % 90, mask_id=model.config.mask_token_id,
                                   n=4, seq_len=32, seed=3)


def _tensors(d):
    out = {}
    for w in json.loads((d / "manifest.json").read_text()).get("weights", ["model.safetensors"]):
        out.update(load_file(d / w))
    return out


PIPES = {"rtn": lambda: qpass.Pipeline([P.FuseNorms(), P.RTN()], scheme="int4:g32:sym"),
         "rtn-lowered": lambda: qpass.Pipeline([P.RTN(), P.Lower()], scheme="w4a8kv8"),

         "gptq": lambda: qpass.Pipeline([P.FuseNorms(), P.GPTQ(), P.ObserveActivations()],
                                        scheme="w4a8"),
         # QuaRot's Q and DuQuant's transforms in one run; Rotate without online Hadamards
         "rotate-duquant": lambda: qpass.Pipeline([P.FuseNorms(), P.Rotate(seed=5), P.DuQuant(),
                                                   P.RTN(), P.Lower()], scheme="w4a8"),
         "rotate-offline": lambda: qpass.Pipeline([P.FuseNorms(), P.Rotate(online_down=False,
                                                                           online_heads=False),
                                                   P.RTN()], scheme="w8a8"),
         # the two cases that once had no stage-wise form: Hessians from the float model, and
         # static observers (both read the earlier stages as they were before the pass)
         "gptq-float-hessians": lambda: qpass.Pipeline([P.GPTQ(sequential=False)],
                                                       scheme="int4:g32:sym"),
         "gptq-static-observer": lambda: qpass.Pipeline(
             [P.GPTQ("int4:g32:sym"), P.ObserveActivations("int8:tensor:static:mse"),
              P.Lower()])}


# Every preset, as `qpass quantize` runs it (lowered): a new preset is covered automatically.
for _preset in qpass.presets.names():
    PIPES[_preset] = lambda name=_preset: with_lowering(qpass.presets.get(name), "auto")
CASES = [("tiny-llada", name) for name in PIPES]
# the Dream/Qwen2 layout (GQA, q/k/v biases, shifted logits) for the rotations and one
# preset of each other family; MoE models have no HF checkpoint naming in qpass yet
# (qpass.models.naming), so they cannot be streamed from a directory at all
CASES += [("tiny-dream", name) for name in ("w4a4-quarot", "w4a4-duquant", "w8a8-smoothquant",
                                            "w4a16-awq", "w4a4-gptq", "rotate-duquant")]


@pytest.mark.parametrize("zoo,name", CASES)
def test_streamed_equals_in_memory(hf_dirs, tmp_path, zoo, name):
    """Bitwise: the streamed run does the same float operations on the same inputs (stage
    inputs in the state the in-memory pass sees them, Pass.stage_inputs; Q fixed once; the
    same calibration batches), so no tolerance is needed."""
    hf_dir = hf_dirs(zoo)
    model = qpass.models.load(hf_dir)                         # bf16 weights read into fp32
    pipe = PIPES[name]()
    calib = _calib(model) if any(p.needs_calibration for p in pipe.passes) else None
    mem = pipe.run(model, calib, progress=False)
    mem.save(tmp_path / "mem")
    path = PIPES[name]().run(str(hf_dir), calib, out=tmp_path / "st", progress=False).path
    a, b = _tensors(tmp_path / "mem"), _tensors(path)
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    graph = lambda d: json.loads((d / "manifest.json").read_text())["graph"]  # noqa: E731
    assert graph(tmp_path / "mem")["nodes"] == graph(path)["nodes"]        # same ops, same kernels
    loaded = qpass.load_compiled(path)
    ids = torch.randint(0, 90, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(loaded(ids), mem(ids))
    assert not (tmp_path / ".st.qpass-stream").exists()       # the run's state is gone
    report = json.loads((path / "manifest.json").read_text())["report"]
    for rec in report["passes"]:                 # exact passes were checked on every stage
        if PASSES[rec["name"]].exact:
            assert rec["verified_rel_change"] is not None and rec["verified_rel_change"] < 1e-4


def test_whole_model_pass_refuses_a_streamed_run(hf_dirs, tmp_path):
    """LearnedRotate trains on every layer at once: a streamed run (structure only at start)
    is one error saying to run in memory, which `qpass quantize` then does by itself."""
    hf_dir = hf_dirs("tiny-llada")
    model = qpass.models.load(hf_dir)
    pipe = qpass.Pipeline([P.FuseNorms(), P.LearnedRotate(steps=1), P.RTN()], scheme="w4a4")
    with pytest.raises(qpass.PipelineError, match="in memory"):
        pipe.run(str(hf_dir), _calib(model), out=tmp_path / "st", progress=False)


@dataclass(eq=False, repr=False)
class _InsertsANodeReadByTheNextStage(qpass.Pass):
    """Negates the embedding output in the prefix and hands the negation to block 0."""

    def run(self, g, ctx):
        emb = next(n for n in ctx.stage.nodes if n.op == "call_module")
        with g.graph.inserting_after(emb):
            neg = g.graph.call_function(torch.neg, (emb,))
        emb.replace_all_uses_with(neg, delete_user_cb=lambda u: u is not neg)
        return qpass.PassResult()


def test_an_inserted_node_read_by_another_stage_is_refused(hf_dir, tmp_path):
    """Stage boundaries are fixed when the run starts: a node a pass inserts must stay in
    its stage (Rotate's and DuQuant's do), or the run stops naming the node."""
    with pytest.raises(qpass.PipelineError, match="prefix: node neg inserted by a pass is read "
                                                  "outside its stage"):
        qpass.Pipeline([_InsertsANodeReadByTheNextStage(), P.RTN()], scheme="w8a8").run(
            str(hf_dir), out=tmp_path / "o", progress=False)


@dataclass(eq=False, repr=False)
class _RotateMissingAWriter(P.Rotate):
    """A broken rotation: Q is not folded into the last block's last stream writer."""

    def start(self, g, ctx, saved=None):
        state = super().start(g, ctx, saved)
        state.plan.writers.pop()
        return state


def test_a_rotation_that_is_not_exact_fails_its_stage_check(hf_dir, tmp_path):
    """The per-stage check across the change of basis (f'(x·Q) = f(x)·Q) is not vacuous:
    the block whose writer kept its unrotated weight is named."""
    last = qpass.models.load(hf_dir, device="meta").config.n_layers - 1
    with pytest.raises(qpass.VerificationError,
                       match=f"_RotateMissingAWriter is declared exact but changed block {last}'s"):
        qpass.Pipeline([P.FuseNorms(), _RotateMissingAWriter(), P.RTN()], scheme="w8a8").run(
            str(hf_dir), out=tmp_path / "o", progress=False)


SMOOTHED = "qpass.Pipeline([P.FuseNorms(), P.SmoothQuant(0.5), P.RTN(), P.Lower()], scheme='w4a8kv8')"
ROTATED = ("qpass.Pipeline([P.FuseNorms(), P.Rotate(seed=5), P.DuQuant(), P.RTN(), P.Lower()], "
           "scheme='w4a8')")


def _first_sign_flipped(orig):
    """random_signs as a changed qpass might draw them: the first sign flipped."""
    def signs(n, seed):
        s = orig(n, seed).clone()
        s[0] = -s[0]
        return s
    return signs


def _stream_in_subprocess(tmp_path, hf_dir, pipeline: str, out, kill_after=None, env=None):
    """Run `pipeline` (Python source) over hf_dir into out in a fresh process; with
    kill_after, the process SIGKILLs itself once that many stages are recorded; with
    QPASS_TEST_FLIP_SIGNS in env, its Hadamard signs are _first_sign_flipped."""
    script = tmp_path / "run.py"
    script.write_text(
        "import sys, os, signal, qpass\n"
        "from qpass import passes as P\n"
        "from qpass import hadamard\n"
        "from qpass.pipeline.disk_store import DiskStore\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "if os.environ.get('QPASS_TEST_FLIP_SIGNS'):\n"
        "    from test_streaming import _first_sign_flipped\n"
        "    hadamard.random_signs = _first_sign_flipped(hadamard.random_signs)\n"
        "if len(sys.argv) > 4:\n"
        "    orig = DiskStore.save\n"
        "    def save(self, g, stage, records, *caches):\n"
        "        orig(self, g, stage, records, *caches)\n"
        "        if len(records) == int(sys.argv[4]):\n"
        "            os.kill(os.getpid(), signal.SIGKILL)\n"
        "    DiskStore.save = save\n"
        "load = DiskStore.resume\n"
        "def loaded(self, pipeline, calib):\n"
        "    done, shared = load(self, pipeline, calib)\n"
        "    print(f'resumed {len(done)} stages', file=sys.stderr)\n"
        "    return done, shared\n"
        "DiskStore.resume = loaded\n"
        "import torch\n"
        "from qpass.calibration import CalibrationSet\n"
        "calib = CalibrationSet.from_ids(torch.arange(4000) % 90, mask_id=258, n=4, seq_len=32, seed=3)\n"
        "pipe = eval(sys.argv[3])\n"
        "pipe.run(sys.argv[1], calib, out=sys.argv[2], progress=False)\n")
    args = [sys.executable, str(script), str(hf_dir), str(out), pipeline]
    args += [] if kill_after is None else [str(kill_after)]
    return subprocess.run(args, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                          capture_output=True, text=True, timeout=300)


def _assert_resumed_equals_one_run(tmp_path, hf_dir, pipeline: str, env=None) -> tuple[dict, dict]:
    """Kill after prefix, block 0 and block 1 are written, rerun, compare with one
    uninterrupted run (in this process): same tensors, same graph. Returns the graph and
    the progress record the killed run left."""
    killed = _stream_in_subprocess(tmp_path, hf_dir, pipeline, tmp_path / "r", kill_after=3)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    progress = json.loads((tmp_path / ".r.qpass-stream" / "progress.json").read_text())
    assert [s["index"] for s in progress["stages"]] == [0, 1, 2]
    again = _stream_in_subprocess(tmp_path, hf_dir, pipeline, tmp_path / "r", env=env)
    assert again.returncode == 0, again.stderr
    assert "resumed 3 stages" in again.stderr       # skipped, not silently recomputed
    model = qpass.models.load("tiny-llada", device="meta")
    assert model.config.mask_token_id == 258
    once = eval(pipeline).run(str(hf_dir), _calib(model), out=tmp_path / "once", progress=False).path
    a, b = _tensors(tmp_path / "r"), _tensors(once)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    # the graph edits of the stages done before the kill (lowered attention with K/V bits,
    # kernel modules, inserted transforms) are restored from the progress records, not lost
    ga, gb = (json.loads((d / "manifest.json").read_text())["graph"] for d in (tmp_path / "r", once))
    assert ga == gb
    return ga, progress


def test_killed_run_resumes_to_identical_bytes(hf_dir, tmp_path):
    """SIGKILL in the middle (after block 1 is written), rerun: same tensors as one run
    (SmoothQuant's boundary cache of the unquantized stages is restored with the main one)."""
    graph, _ = _assert_resumed_equals_one_run(tmp_path, hf_dir, SMOOTHED)
    layers = qpass.models.load("tiny-llada", device="meta").config.n_layers
    assert sum(m["class"] == "LoweredLinear" for m in graph["modules"].values()) == 7 * layers
    assert sum("kv_bits" in json.dumps(n["kwargs"]) for n in graph["nodes"]) == layers


def test_killed_rotated_run_resumes_with_the_recorded_rotation(hf_dir, tmp_path, monkeypatch):
    """A QuaRot + DuQuant run killed after block 1 and resumed by a process that would draw
    other Hadamard signs: the rerun takes Q from the progress record, so every stage has the
    same Q, DuQuant's transform nodes and buffers of the completed stages come back, and the
    checkpoint equals one uninterrupted run bit for bit."""
    flip = {"QPASS_TEST_FLIP_SIGNS": "1"}
    graph, progress = _assert_resumed_equals_one_run(tmp_path, hf_dir, ROTATED, env=flip)
    recorded = progress["shared"]["1"]                        # Rotate is the pipeline's pass 1
    signs = qpass.hadamard.random_signs(recorded["hidden_size"], 5)
    assert recorded["signs"] == "".join("+" if v > 0 else "-" for v in signs.tolist())
    layers = qpass.models.load("tiny-llada", device="meta").config.n_layers
    names = [n["name"] for n in graph["nodes"]]
    assert sum(n.startswith("hadamard_") for n in names) == 2 * layers   # down and o
    assert sum(n.startswith("duquant_transform_") for n in names) == 4 * layers  # qkv, o, up, down
    # the flipped signs do change the result when nothing is recorded: the rerun's equality
    # above is the recorded Q at work, not an ineffective flip
    monkeypatch.setattr(qpass.hadamard, "random_signs", _first_sign_flipped(qpass.hadamard.random_signs))
    fresh = eval(ROTATED).run(str(hf_dir), _calib(qpass.models.load(hf_dir)), out=tmp_path / "f",
                              progress=False).path
    a, b = _tensors(tmp_path / "r"), _tensors(fresh)
    assert not torch.equal(a["embed.weight"], b["embed.weight"])


def test_full_disk_and_too_little_memory_are_clear_errors(hf_dir, tmp_path, monkeypatch):
    import errno

    from qpass.pipeline import disk_store
    pipe = lambda: qpass.Pipeline([P.FuseNorms(), P.RTN()], scheme="int4:g32:sym")  # noqa: E731
    calls = {"n": 0}
    import safetensors.torch as st

    def full(tensors, path, metadata=None):
        calls["n"] += 1
        if calls["n"] == 3:                       # the third stage's shard hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device")
        return st_save(tensors, path, metadata=metadata)
    st_save = st.save_file
    monkeypatch.setattr(st, "save_file", full)
    with pytest.raises(qpass.CheckpointError, match="disk is full .*resumes after the last"):
        pipe().run(str(hf_dir), out=tmp_path / "o", progress=False)
    monkeypatch.setattr(st, "save_file", st_save)
    progress = json.loads((tmp_path / ".o.qpass-stream" / "progress.json").read_text())
    assert len(progress["stages"]) == 2                       # what was written is kept
    path = pipe().run(str(hf_dir), out=tmp_path / "o", progress=False).path   # resumes, finishes
    assert qpass.load_compiled(path) is not None
    monkeypatch.setattr(disk_store, "available_bytes", lambda device: 1024)
    with pytest.raises(qpass.PipelineError, match=r"prefix needs about [\d.]+ [KMG]iB on cpu, but "
                                                  r"only 1.00 KiB are free"):
        pipe().run(str(hf_dir), out=tmp_path / "p", progress=False)


@dataclass(eq=False, repr=False)
class _ClaimsQuantized(qpass.Pass):
    """Claims WEIGHTS_QUANTIZED and rounds nothing."""
    provides = frozenset({qpass.pipeline.Fact.WEIGHTS_QUANTIZED})

    def run(self, g, ctx):
        return qpass.PassResult()


@dataclass(eq=False, repr=False)
class _QuantizesBlock0Only(qpass.Pass):
    """Rounds block 0's linears and nothing else: the fact holds, witnessed by one stage."""
    provides = frozenset({qpass.pipeline.Fact.WEIGHTS_QUANTIZED})

    def run(self, g, ctx):
        if ctx.stage.name != "block 0":
            return qpass.PassResult()
        return P.RTN("int8:channel").run(g, ctx)


@dataclass(eq=False, repr=False)
class _FusesAllButTheLastBlock(P.FuseNorms):
    """Claims NORMS_FUSED but leaves the last block's norms as they are."""

    def run(self, g, ctx):
        if ctx.stage.block is not None and ctx.stage.block.index == len(g.blocks()) - 1:
            return qpass.PassResult()
        return super().run(g, ctx)


CLAIMS = "qpass.Pipeline([__import__('test_streaming')._ClaimsQuantized()])"
BLOCK0 = "qpass.Pipeline([__import__('test_streaming')._QuantizesBlock0Only()], allow_uncovered=True)"
LAST = "qpass.Pipeline([__import__('test_streaming')._FusesAllButTheLastBlock()])"


@pytest.mark.parametrize("pipeline, match", [
    (CLAIMS, "_ClaimsQuantized claims WEIGHTS_QUANTIZED, but it does not hold after the pass: "
             "no linear has quantized weights"),
    (LAST, "_FusesAllButTheLastBlock claims NORMS_FUSED, but it does not hold after the pass: "
           "norm blocks.5.attn_norm still has a weight .*block 5")])
def test_a_false_fact_is_one_error_in_memory_streamed_and_resumed(hf_dir, tmp_path, pipeline, match):
    """The same PipelineError whichever form runs the pipeline, also when the run resumes
    after its first three stages were written by a killed process."""
    calib = _calib(qpass.models.load(hf_dir, device="meta"))
    with pytest.raises(qpass.PipelineError, match=match):
        eval(pipeline).run(qpass.models.load(hf_dir), calib, progress=False)
    with pytest.raises(qpass.PipelineError, match=match):
        eval(pipeline).run(str(hf_dir), calib, out=tmp_path / "s", progress=False)
    assert not (tmp_path / "s").exists()
    killed = _stream_in_subprocess(tmp_path, hf_dir, pipeline, tmp_path / "r", kill_after=3)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    again = _stream_in_subprocess(tmp_path, hf_dir, pipeline, tmp_path / "r")
    assert again.returncode != 0 and "resumed 3 stages" in again.stderr
    assert "PipelineError" in again.stderr and re.search(match, again.stderr), again.stderr


def test_a_fact_witnessed_by_a_completed_stage_holds_on_resume(hf_dir, tmp_path):
    """Block 0 alone witnesses WEIGHTS_QUANTIZED; killed after it, the resumed run counts the
    witness its record keeps and finishes."""
    killed = _stream_in_subprocess(tmp_path, hf_dir, BLOCK0, tmp_path / "r", kill_after=3)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    again = _stream_in_subprocess(tmp_path, hf_dir, BLOCK0, tmp_path / "r")
    assert again.returncode == 0 and "resumed 3 stages" in again.stderr, again.stderr
    graph = json.loads((tmp_path / "r" / "manifest.json").read_text())["graph"]
    assert {k for k, m in graph["modules"].items() if m["class"] == "QuantLinear"} == \
        {f"blocks.0.{n}" for n in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                    "up_proj", "down_proj")}

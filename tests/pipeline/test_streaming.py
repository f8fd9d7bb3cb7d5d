"""Stage-wise execution over a checkpoint directory (DESIGN §12): the streamed checkpoint
equals the in-memory one tensor for tensor, a killed run resumes to the same bytes, and
pipelines without a stage-wise form are one clear error."""
import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import qpass
from qpass import passes as P
from qpass.calibration import CalibrationSet
from qpass.cli.quantize import with_lowering
from qpass.models.loading import save_checkpoint


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf") / "tiny"
    save_checkpoint(qpass.models.load("tiny-llada"), d, dtype=torch.bfloat16)
    return d


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
                                        scheme="w4a8")}
for _preset in ("w4a16-gptq", "w8a8-smoothquant", "w4a16-awq", "w4a4-gptq"):   # one per family
    PIPES[_preset] = lambda name=_preset: with_lowering(qpass.presets.get(name), "auto")
# (a static observer after GPTQ is the one case that differs by design: streamed, each block's
# GPTQ calibrates on earlier blocks whose static activation scales are already set)


@pytest.mark.parametrize("name", PIPES)
def test_streamed_equals_in_memory(hf_dir, tmp_path, name):
    model = qpass.models.load(hf_dir)                         # bf16 weights read into fp32
    pipe = PIPES[name]()
    calib = _calib(model) if any(p.needs_calibration for p in pipe.passes) else None
    mem = pipe.run(model, calib, progress=False)
    mem.save(tmp_path / "mem")
    path = PIPES[name]().run(str(hf_dir), calib, out=tmp_path / "st", progress=False)
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


def test_a_pipeline_without_stage_wise_passes_is_refused(hf_dir, tmp_path):
    with pytest.raises(qpass.PipelineError, match="pass\\(es\\) Rotate have no stage-wise form"):
        qpass.Pipeline([P.FuseNorms(), P.Rotate(), P.RTN()], scheme="w4a8").run(str(hf_dir), out=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_killed_run_resumes_to_identical_bytes(hf_dir, tmp_path):
    """SIGKILL in the middle (after block 1 is written), rerun: same tensors as one run
    (SmoothQuant's boundary cache of the unquantized stages is restored with the main one)."""
    script = tmp_path / "run.py"
    script.write_text(
        "import sys, os, signal, qpass\n"
        "from qpass import passes as P\n"
        "from qpass.pipeline import streaming\n"
        "if len(sys.argv) > 3:\n"
        "    orig = streaming.StreamingRun._save_progress\n"
        "    def save(self, key, records):\n"
        "        orig(self, key, records)\n"
        "        if len(records) == int(sys.argv[3]):\n"
        "            os.kill(os.getpid(), signal.SIGKILL)\n"
        "    streaming.StreamingRun._save_progress = save\n"
        "import torch\n"
        "from qpass.calibration import CalibrationSet\n"
        "calib = CalibrationSet.from_ids(torch.arange(4000) % 90, mask_id=258, n=4, seq_len=32, seed=3)\n"
        "pipe = qpass.Pipeline([P.FuseNorms(), P.SmoothQuant(0.5), P.RTN(), P.Lower()], scheme='w4a8kv8')\n"
        "pipe.run(sys.argv[1], calib, out=sys.argv[2], progress=False)\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, str(script), str(hf_dir), str(tmp_path / "r"), "3"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    progress = json.loads((tmp_path / ".r.qpass-stream" / "progress.json").read_text())
    assert [s["index"] for s in progress["stages"]] == [0, 1, 2]
    again = subprocess.run([sys.executable, str(script), str(hf_dir), str(tmp_path / "r")],
                           env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    model = qpass.models.load("tiny-llada", device="meta")
    assert model.config.mask_token_id == 258
    once = qpass.Pipeline([P.FuseNorms(), P.SmoothQuant(0.5), P.RTN(), P.Lower()],
                          scheme="w4a8kv8").run(str(hf_dir), _calib(model), out=tmp_path / "once",
                                                progress=False)
    a, b = _tensors(tmp_path / "r"), _tensors(once)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    # the graph edits of the stages done before the kill (lowered attention with K/V bits,
    # kernel modules) are restored from the progress records, not lost
    ga, gb = (json.loads((d / "manifest.json").read_text())["graph"] for d in (tmp_path / "r", once))
    assert ga == gb
    layers = model.config.n_layers
    assert sum(m["class"] == "LoweredLinear" for m in ga["modules"].values()) == 7 * layers
    assert sum("kv_bits" in json.dumps(n["kwargs"]) for n in ga["nodes"]) == layers


def test_full_disk_and_too_little_memory_are_clear_errors(hf_dir, tmp_path, monkeypatch):
    import errno

    from qpass.pipeline import streaming
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
    path = pipe().run(str(hf_dir), out=tmp_path / "o", progress=False)   # resumes and finishes
    assert qpass.load_compiled(path) is not None
    monkeypatch.setattr(streaming, "available_bytes", lambda device: 1024)
    with pytest.raises(qpass.PipelineError, match=r"prefix needs about .* GiB on cpu, but only"):
        pipe().run(str(hf_dir), out=tmp_path / "p", progress=False)

"""Floating-point models as compiled checkpoints: `qpass quantize tiny-llada --pipeline
w8a8-fp8 --out X` (lowered by default onto qpass::linear_fp8) reloads with the same logits;
an nvfp4 model keeps its uint8 E4M3 block scales and float32 global scale; a tampered float
scale is one CheckpointError at load."""
import json

import pytest
import torch

import qpass
from qpass import passes as P
from qpass import presets
from qpass.cli import main
from qpass.errors import CheckpointError
from tamper import tampered_tensors

Q = "blocks.0.q_proj"


@pytest.fixture(scope="module")
def llada():
    model = qpass.models.load("tiny-llada")
    ids = torch.randint(0, 256, (2, 48), generator=torch.Generator().manual_seed(0))
    return model, ids


def _logits(m, ids):
    with torch.no_grad():
        return m(ids)


def test_cli_quantize_w8a8_fp8_reloads_with_the_same_logits(llada, tmp_path, capsys):
    model, ids = llada
    out = tmp_path / "fp8"
    assert main(["quantize", "tiny-llada", "--pipeline", "w8a8-fp8", "--out", str(out)]) == 0
    loaded = qpass.load_compiled(out)
    in_memory = presets.get("w8a8-fp8").run(model, progress=False)
    assert torch.equal(_logits(loaded, ids), _logits(in_memory, ids))
    man = json.loads((out / "manifest.json").read_text())
    kw = man["graph"]["modules"][Q]["kwargs"]
    assert man["graph"]["modules"][Q]["class"] == "LoweredFloatLinear"
    assert (kw["weight_spec"], kw["act_spec"]) == ("fp8:channel", "fp8:token:dyn")
    lower = [p for p in man["report"]["passes"] if p["name"] == "Lower"][0]
    assert lower["metrics"]["kept_simulated"] == 0
    assert "linear_fp8" in capsys.readouterr().err
    assert loaded.specs()[Q] == {"weight": "fp8:channel", "act": "fp8:token:dyn"}


@pytest.fixture(scope="module")
def nvfp4_dir(llada, tmp_path_factory):
    model, _ = llada
    out = tmp_path_factory.mktemp("nvfp4") / "w4a4"
    c = qpass.Pipeline([P.RTN(), P.Lower()], scheme="w4a4-nvfp4").run(model, progress=False)
    c.save(out)
    return c, out


def test_nvfp4_checkpoint_round_trip(llada, nvfp4_dir):
    _, ids = llada
    c, out = nvfp4_dir
    loaded = qpass.load_compiled(out)
    assert torch.equal(_logits(loaded, ids), _logits(c, ids))
    m = loaded.gm.get_submodule(Q)
    assert m.scales.dtype == torch.uint8 and m.scales.shape == (256, 16)
    assert m.global_scale.dtype == torch.float32 and m.global_scale.shape == (1,)
    assert m.qweight.shape == (256, 32)                  # 4-bit codes, 8 per int32 along K
    assert torch.equal(m.dequantized_weight(), c.gm.get_submodule(Q).dequantized_weight())


@pytest.mark.parametrize("lie, words", [
    (lambda t: t.__setitem__(f"{Q}.scales", torch.full_like(t[f"{Q}.scales"], 0x7F)),
     "scale codes"),
    (lambda t: t.__setitem__(f"{Q}.scales", t[f"{Q}.scales"].float()), "uint8"),
    (lambda t: t.__setitem__(f"{Q}.global_scale", -t[f"{Q}.global_scale"]), "not positive"),
    (lambda t: t.__setitem__(f"{Q}.global_scale", t[f"{Q}.global_scale"].reshape(1, 1)),
     "shape"),
])
def test_a_tampered_nvfp4_scale_is_refused(nvfp4_dir, tmp_path, lie, words):
    _, src = nvfp4_dir
    bad = tampered_tensors(src, tmp_path / "bad", lie)
    with pytest.raises(CheckpointError, match=words) as ei:
        qpass.load_compiled(bad)
    assert Q in str(ei.value)


@pytest.mark.parametrize("fmt, words", [
    ("gptq", "floating-point format"),
    ("gguf", "floating-point"),
])
def test_float_models_are_not_exported_as_integer_formats(llada, tmp_path, capsys, fmt, words):
    """No integer-only exporter writes a float model's codes as integer ones (an mxfp4 model,
    4-bit in 32-blocks, fits Q4_0's shape): one error line, nothing written (compressed-tensors
    writes it as mxfp4-pack-quantized: tests/interop/test_export_nvfp4_w4a4_mx.py)."""
    model, _ = llada
    src = tmp_path / "mx"
    qpass.Pipeline([P.RTN()], scheme="w4a16-mxfp4").run(model, progress=False).save(src)
    out = tmp_path / "out"
    assert main(["export", str(src), "--format", fmt, "--out", str(out)]) != 0
    assert words in capsys.readouterr().err and not out.exists()


def test_static_fp8_activations_calibrate_save_and_reload(llada, tmp_path):
    """fp8:tensor activations: ObserveActivations calibrates one float32 scale per linear
    input (amax/448 of what it saw), the forward uses it, and the checkpoint keeps it."""
    from qpass.calibration import CalibrationSet
    model, ids = llada
    calib = CalibrationSet.from_ids(torch.arange(2000) % 250, mask_id=258, n=4, seq_len=64)
    c = qpass.Pipeline([P.RTN("fp8:channel"), P.ObserveActivations("fp8:tensor")]).run(
        model, calib, progress=False)
    m = c.gm.get_submodule(Q)
    assert str(m.act_spec) == "fp8:tensor" and m.act_scale.shape == (1, 1)
    assert float(m.act_scale) > 0 and int(m.act_zero) == 0
    c.save(tmp_path / "static")
    assert torch.equal(_logits(qpass.load_compiled(tmp_path / "static"), ids), _logits(c, ids))


def test_lowered_nvfp4_checkpoint_reloads_and_refuses_a_lie(llada, tmp_path):
    """A lowered nvfp4 weight-only linear (qpass::linear_fp4a16) keeps the QuantLinear's
    tensors: the checkpoint reloads them and refuses a lie about them."""
    model, ids = llada
    low = qpass.Pipeline([P.RTN(), P.Lower()], scheme="w4a16-nvfp4").run(model, progress=False)
    low.save(tmp_path / "c")
    loaded = qpass.load_compiled(tmp_path / "c")
    assert type(loaded.gm.get_submodule(Q)).__name__ == "LoweredFloatLinear"
    assert torch.equal(_logits(loaded, ids), _logits(low, ids))
    bad = tampered_tensors(tmp_path / "c", tmp_path / "bad", lambda t: t.__setitem__(
        f"{Q}.scales", t[f"{Q}.scales"].float()))
    with pytest.raises(CheckpointError, match="uint8"):
        qpass.load_compiled(bad)

"""Floating-point compressed-tensors checkpoints load into qpass (issue 28 item 5): FP8
(float-quantized W8A8 / naive-quantized weight-only; channel, tensor, group, block scales)
and NVFP4A16 (nvfp4-pack-quantized), as qpass's exporter writes them and as compressed-
tensors' own apply_quantization_config + ModelCompressor.compress_model write them from
llm-compressor's FP8_DYNAMIC / NVFP4A16 presets. The imported compiled model holds the file's
codes and scales: its weights equal compressed-tensors' float32 decompression of the file
exactly, and its logits the exported model's."""
import json
import os
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

import qpass
from qpass import Pipeline, models, passes
from qpass.errors import CheckpointError
from qpass.interop import export_compressed_tensors, read_source
from qpass.ir.qlinear import QuantLinear, is_quantized_module
from qpass.models.naming import key_map
from qpass.specs import Scheme

sys.path.insert(0, os.path.dirname(__file__))
from test_import_quantized import _compress_with_compressed_tensors  # noqa: E402

from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8
from compressed_tensors.quantization import QuantizationArgs
from compressed_tensors.quantization.lifecycle.forward import dequantize
from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES


def _run(model, scheme):
    return Pipeline([passes.RTN()], scheme=scheme).run(model, progress=False, verify=False)


def _ids(vocab):
    return torch.randint(0, vocab - 8, (2, 24), generator=torch.Generator().manual_seed(0))


def _file_weights(out) -> dict[str, torch.Tensor]:
    """compressed-tensors' own float32 dequantization of every quantized linear in `out`."""
    from qpass.interop.import_compressed_tensors import scheme_for, targets_map
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    t = load_file(str(out / "model.safetensors"))
    got = {}
    for k in t:
        if k.endswith(".weight_scale"):
            m = k[: -len(".weight_scale")]
            args = QuantizationArgs.model_validate(
                scheme_for(m, targets_map(qc), qc.get("ignore"))["weights"])
            if m + ".weight_packed" in t:
                p = t[m + ".weight_packed"]
                q = unpack_fp4_from_uint8(p, p.shape[0], p.shape[1] * 2, dtype=torch.float32)
                got[m] = dequantize(x_q=q, scale=t[k].float(), args=args, dtype=torch.float32,
                                    global_scale=t[m + ".weight_global_scale"])
            else:
                got[m] = dequantize(x_q=t[m + ".weight"].float(), scale=t[k], args=args,
                                    dtype=torch.float32)
    return got


def _check_equal_to_file(imp, out):
    to_hf = {g: h for h, g in key_map(imp.config).items()}
    want = _file_weights(out)
    mods = {n: m for n, m in imp.gm.named_modules() if is_quantized_module(m)}
    assert len(mods) == len(want) > 0
    for n, m in mods.items():
        assert isinstance(m, QuantLinear)
        assert torch.equal(m.dequantized_weight(), want[to_hf[n + ".weight"][: -7]]), n


@pytest.fixture(scope="module")
def zoo():
    return {n: models.load(n) for n in ("tiny-llada", "tiny-dream-random", "tiny-llama-random")}


@pytest.mark.parametrize("name", ["tiny-llada", "tiny-dream-random"])
@pytest.mark.parametrize("scheme", [
    "w8a8-fp8", "w8a16-fp8", "w4a16-nvfp4",
    Scheme("fp8-b32", "fp8:b32", "fp8:token:dyn"), Scheme("fp8-tensor", "fp8:tensor"),
    Scheme("fp8-g32", "fp8:g32")], ids=lambda x: getattr(x, "name", x))
def test_qpass_float_export_round_trip(zoo, tmp_path, name, scheme):
    model = zoo[name]
    c = _run(model, scheme)
    out = export_compressed_tensors(read_source(c), tmp_path / "ct")
    imp = qpass.load_compiled(out)
    _check_equal_to_file(imp, out)
    a = {n: m for n, m in c.gm.named_modules() if is_quantized_module(m)}
    for n, m in imp.gm.named_modules():
        if is_quantized_module(m):
            assert m.weight_spec == a[n].weight_spec and m.act_spec == a[n].act_spec, n
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():
        assert torch.equal(imp(ids), c(ids))


def _fp8_block32():
    """FP8_BLOCK with 32x32 blocks and 32-groups (tiny-llama's K = 64 has no 128 blocks)."""
    p = {k: v.model_copy() for k, v in PRESET_SCHEMES["FP8_BLOCK"].items()}
    p["weights"].block_structure = [32, 32]
    p["input_activations"].group_size = 32
    return p


@pytest.mark.parametrize("scheme,preset,fmt", [
    ("w8a8-fp8", "FP8_DYNAMIC", "float-quantized"),
    (Scheme("fp8-block", "fp8:b32", "fp8:g32:dyn"), "FP8_BLOCK32", "float-quantized"),
    ("w4a16-nvfp4", "NVFP4A16", "nvfp4-pack-quantized")], ids=lambda x: getattr(x, "name", x))
def test_compressed_by_compressed_tensors_imports_exactly(zoo, tmp_path, scheme, preset, fmt):
    model = zoo["tiny-llama-random"]
    c = _run(model, scheme)
    # apply_quantization_config with llm-compressor's preset, parameters set to qpass's,
    # compressed by ModelCompressor.compress_model and saved as llm-compressor saves it
    args = _fp8_block32() if preset == "FP8_BLOCK32" else PRESET_SCHEMES[preset]
    out = _compress_with_compressed_tensors(c, model, tmp_path, args, fmt)
    assert json.loads((out / "config.json").read_text())["quantization_config"]["format"] == fmt
    imp = qpass.load_compiled(out)
    _check_equal_to_file(imp, out)
    a = {n: m for n, m in c.gm.named_modules() if is_quantized_module(m)}
    for n, m in imp.gm.named_modules():
        if is_quantized_module(m):
            assert torch.equal(m.dequantized_weight(), a[n].dequantized_weight()), n
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():
        assert torch.equal(imp(ids), c(ids))


@pytest.fixture(scope="module")
def nvfp4_export(zoo, tmp_path_factory):
    return export_compressed_tensors(read_source(_run(zoo["tiny-llada"], "w4a16-nvfp4")),
                                     tmp_path_factory.mktemp("nv") / "ct")


def _variant(src, tmp_path, edit_qc=None, edit_t=None):
    import shutil
    d = tmp_path / "x"
    shutil.copytree(src, d)
    if edit_qc:
        cfg = json.loads((d / "config.json").read_text())
        edit_qc(cfg["quantization_config"]["config_groups"]["group_0"])
        (d / "config.json").write_text(json.dumps(cfg))
    if edit_t:
        t = load_file(str(d / "model.safetensors"))
        edit_t(t)
        save_file(t, str(d / "model.safetensors"))
    return d


Q = "model.transformer.blocks.0.q_proj"


@pytest.mark.parametrize("edit_qc,edit_t,words", [
    (lambda g: g.update(input_activations=dict(PRESET_SCHEMES["NVFP4"]["input_activations"]
                                               .model_dump())), None, "input_global_scale"),
    (lambda g: g["weights"].update(group_size=32, strategy="group"), None, "MXFP4 / MXFP8"),
    (None, lambda t: t.__setitem__(Q + ".weight_scale", t[Q + ".weight_scale"].float()),
     "float8_e4m3fn weight_scale"),
    (None, lambda t: t.pop(Q + ".weight_global_scale"), "weight_global_scale"),
])
def test_nvfp4_refusals(nvfp4_export, tmp_path, edit_qc, edit_t, words):
    d = _variant(nvfp4_export, tmp_path, edit_qc, edit_t)
    with pytest.raises(CheckpointError, match=words):
        qpass.load_compiled(d)


def test_static_fp8_activations_round_trip(zoo, tmp_path):
    from qpass.calibration import CalibrationSet
    model = zoo["tiny-llama-random"]
    calib = CalibrationSet.from_ids(torch.arange(2000) % 80, masking="none", n=4, seq_len=32)
    c = Pipeline([passes.RTN("fp8:tensor"), passes.ObserveActivations("fp8:tensor")]).run(
        model, calib, progress=False, verify=False)
    out = export_compressed_tensors(read_source(c), tmp_path / "ct")
    imp = qpass.load_compiled(out)
    _check_equal_to_file(imp, out)
    a = dict(c.gm.named_modules())
    for n, m in imp.gm.named_modules():
        if is_quantized_module(m):
            assert str(m.act_spec) == "fp8:tensor" and torch.equal(m.act_scale, a[n].act_scale)
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():
        assert torch.equal(imp(ids), c(ids))

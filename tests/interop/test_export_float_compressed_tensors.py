"""Floating-point compressed-tensors exports (issue 28 item 3): FP8 as float-quantized (W8A8,
FP8_DYNAMIC's config) / naive-quantized (weight-only, as compressed-tensors infers it) and
NVFP4A16 as nvfp4-pack-quantized. Read back with compressed-tensors' own decompression and
compared with qpass's dequantized weights: FP8 bit for bit; NVFP4's compressor unpacks E2M1
into bfloat16 (unpack_fp4_from_uint8's default), so its output is qpass's float32 weight
rounded to bfloat16 exactly, and its own unpack + dequantize in float32 equal qpass's weight
bit for bit. The config equals what ModelCompressor.update_config writes for the parsed config
and for llm-compressor's presets (FP8_DYNAMIC, NVFP4A16); transformers loads a tiny LLaMA."""
import json
import os
import sys

import pytest
import torch
from safetensors.torch import load_file

from qpass import Pipeline, models, passes
from qpass.errors import CheckpointError
from qpass.interop import export_compressed_tensors, read_source
from qpass.specs import Scheme

from compressed_tensors.compressors import ModelCompressor
from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8
from compressed_tensors.quantization import (QuantizationArgs, QuantizationConfig,
                                             QuantizationScheme)
from compressed_tensors.quantization.lifecycle.forward import dequantize
from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "fixtures"))
from test_export_compressed_tensors import ct_weights, qpass_weights  # noqa: E402
from hf_loading import causal_lm  # noqa: E402

LLADA_DENSE = ["model.transformer.wte", "model.transformer.ln_f"]


def _run(model, scheme):
    return Pipeline([passes.RTN()], scheme=scheme).run(model, progress=False, verify=False)


def _qc(out):
    return json.loads((out / "config.json").read_text())["quantization_config"]


def _update_config(qc: dict, tmp_path, name="ref") -> dict:
    (tmp_path / name).mkdir()
    (tmp_path / name / "config.json").write_text("{}")
    ModelCompressor(quantization_config=QuantizationConfig.model_validate(qc)).update_config(
        str(tmp_path / name))
    return json.loads((tmp_path / name / "config.json").read_text())["quantization_config"]


@pytest.fixture(scope="module")
def tiny():
    return models.load("tiny-llada")


@pytest.mark.parametrize("scheme,fmt,strategy", [
    ("w8a8-fp8", "float-quantized", "channel"),
    ("w8a16-fp8", "naive-quantized", "channel"),
    (Scheme("fp8-tensor", "fp8:tensor", "fp8:token:dyn"), "float-quantized", "tensor"),
    (Scheme("fp8-b32", "fp8:b32", "fp8:token:dyn"), "float-quantized", "block"),
    (Scheme("fp8-g32", "fp8:g32"), "naive-quantized", "group")],
    ids=lambda x: getattr(x, "name", x))
def test_fp8_exact(tiny, tmp_path, scheme, fmt, strategy):
    c = _run(tiny, scheme)
    out = export_compressed_tensors(read_source(c), tmp_path / "ct")
    qc = _qc(out)
    assert qc["format"] == fmt and qc["config_groups"]["group_0"]["weights"]["strategy"] == strategy
    assert _update_config(qc, tmp_path) == qc
    t = load_file(str(out / "model.safetensors"))
    assert t["model.transformer.blocks.0.q_proj.weight"].dtype == torch.float8_e4m3fn
    got = ct_weights(out, LLADA_DENSE)
    want = qpass_weights(c)
    assert len(want) == 6 * 7
    for name, w in want.items():
        assert torch.equal(got[name], w), name


def test_nvfp4_exact(tiny, tmp_path):
    c = _run(tiny, "w4a16-nvfp4")
    out = export_compressed_tensors(read_source(c), tmp_path / "ct")
    qc = _qc(out)
    assert qc["format"] == "nvfp4-pack-quantized"
    assert _update_config(qc, tmp_path) == qc
    t = load_file(str(out / "model.safetensors"))
    got = ct_weights(out, LLADA_DENSE)      # the registered compressor: bfloat16 arithmetic
    args = QuantizationArgs.model_validate(qc["config_groups"]["group_0"]["weights"])
    for name, w in qpass_weights(c).items():
        m = name[: -len(".weight")]
        p, s = t[m + ".weight_packed"], t[m + ".weight_scale"]
        assert p.dtype == torch.uint8 and s.dtype == torch.float8_e4m3fn
        assert tuple(p.shape) == (w.shape[0], w.shape[1] // 2)
        assert tuple(s.shape) == (w.shape[0], w.shape[1] // 16)
        assert t[m + ".weight_global_scale"].shape == (1,)
        assert torch.equal(got[name], w.to(torch.bfloat16).float()), name
        u = unpack_fp4_from_uint8(p, p.shape[0], p.shape[1] * 2, dtype=torch.float32)
        d = dequantize(x_q=u, scale=s.float(), args=args,
                       global_scale=t[m + ".weight_global_scale"], dtype=torch.float32)
        assert torch.equal(d, w), name


@pytest.mark.parametrize("scheme,preset", [("w8a8-fp8", "FP8_DYNAMIC"),
                                           ("w4a16-nvfp4", "NVFP4A16")])
def test_config_is_llm_compressor_preset(tiny, tmp_path, scheme, preset):
    # the group llm-compressor's preset serializes to (format inferred per module)
    ours = _qc(export_compressed_tensors(read_source(_run(tiny, scheme)), tmp_path / "ct"))
    theirs = _qc_of_preset(preset, ours, tmp_path)
    g_ours, g_theirs = ours["config_groups"]["group_0"], theirs["config_groups"]["group_0"]
    assert g_ours["weights"] == g_theirs["weights"]
    assert g_ours["input_activations"] == g_theirs["input_activations"]
    assert {k: v for k, v in ours.items() if k != "config_groups"} == \
        {k: v for k, v in theirs.items() if k != "config_groups"}


def test_nvfp4_activations_refused(tiny, tmp_path):
    # nvfp4:token:dyn takes a global scale per token at run time; compressed-tensors' NVFP4
    # one static input_global_scale: an engine would quantize differently
    with pytest.raises(CheckpointError, match="input_global_scale"):
        export_compressed_tensors(read_source(_run(tiny, "w4a4-nvfp4")), tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("scheme", ["w8a16-fp8", "w8a8-fp8", "w4a16-nvfp4",
                                    Scheme("fp8-block", "fp8:b32", "fp8:g32:dyn")],
                         ids=lambda x: getattr(x, "name", x))
def test_transformers_loads_float_export(tmp_path, scheme):
    model = models.load("tiny-llama-random")
    c = _run(model, scheme)
    out = export_compressed_tensors(read_source(c), tmp_path / "ct")
    ids = torch.randint(0, 88, (2, 16), generator=torch.Generator().manual_seed(0))
    # compressed-tensors decompresses NVFP4 into bfloat16 weights, which a float32 model
    # cannot multiply: the engine runs NVFP4A16 in bfloat16
    dtype = torch.bfloat16 if "nvfp4" in str(scheme) else torch.float32
    hf = causal_lm(out, dtype=dtype)
    with torch.no_grad():
        theirs, ours = hf(ids).logits.float(), c(ids)
    rel = float((theirs - ours).norm() / ours.norm())
    assert rel < (1e-2 if dtype == torch.bfloat16 else 1e-5), rel


def test_static_fp8_activations_as_the_fp8_preset(tmp_path):
    # fp8:tensor activations calibrated by ObserveActivations: llm-compressor's FP8 preset,
    # one float32 input_scale per linear; transformers runs the same activation codes
    from qpass.calibration import CalibrationSet
    model = models.load("tiny-llama-random")
    calib = CalibrationSet.from_ids(torch.arange(2000) % 80, masking="none", n=4, seq_len=32)
    c = Pipeline([passes.RTN("fp8:tensor"), passes.ObserveActivations("fp8:tensor")]).run(
        model, calib, progress=False, verify=False)
    out = export_compressed_tensors(read_source(c), tmp_path / "ct")
    qc = _qc(out)
    assert qc["format"] == "float-quantized"
    ref = _qc_of_preset("FP8", qc, tmp_path)
    assert qc["config_groups"]["group_0"]["input_activations"] == \
        ref["config_groups"]["group_0"]["input_activations"]
    assert qc["config_groups"]["group_0"]["weights"] == ref["config_groups"]["group_0"]["weights"]
    t = load_file(str(out / "model.safetensors"))
    lin = c.gm.get_submodule("blocks.0.q_proj")
    assert torch.equal(t["model.layers.0.self_attn.q_proj.input_scale"],
                       lin.act_scale.reshape(1))
    ids = torch.randint(0, 80, (2, 16), generator=torch.Generator().manual_seed(0))
    hf = causal_lm(out)
    with torch.no_grad():
        theirs, ours = hf(ids).logits, c(ids)
    assert float((theirs - ours).norm() / ours.norm()) < 1e-5


def _qc_of_preset(preset, ours, tmp_path):
    ref = QuantizationConfig(
        config_groups={"group_0": QuantizationScheme(targets=["Linear"],
                                                     **PRESET_SCHEMES[preset])},
        format=ours["format"], ignore=ours["ignore"], quantization_status="compressed")
    (tmp_path / preset).mkdir()
    (tmp_path / preset / "config.json").write_text("{}")
    ModelCompressor(quantization_config=ref).update_config(str(tmp_path / preset))
    return json.loads((tmp_path / preset / "config.json").read_text())["quantization_config"]


@pytest.mark.parametrize("preset", ["w8a8-fp8", "w4a16-nvfp4"])
def test_as_is_float_export_loads_in_transformers(tmp_path, preset):
    # a model captured as it is (DiffusionGemma, encoder/decoder sharing linears) exports its
    # float linears the same way; transformers' logits: fp8 equal, nvfp4 in bfloat16
    import test_as_is_export as A
    from qpass.interop.as_is_export import export_as_is_compressed_tensors
    from qpass.presets import PRESETS
    from transformers import DiffusionGemmaForBlockDiffusion
    tiny = A.dg.build(tmp_path / "tiny")
    q = PRESETS[preset]().run(tiny, calib=A.TEXT, out=tmp_path / "q", progress=False)
    out = export_as_is_compressed_tensors(q, tmp_path / "ct")
    fmt = _qc(out)["format"]
    if preset == "w8a8-fp8":
        assert fmt == "float-quantized" and A._rel_gap(q, A._hf_load(out)) <= 1e-6
    else:
        # NVFP4 decompresses into bfloat16 weights: the model runs in bfloat16, which on this
        # tiny DiffusionGemma alone moves the float model's logits ~10%; the decompressed
        # weights are qpass's rounded to bfloat16, every one, and the gap is bf16's size
        from qpass.ir.qlinear import QuantLinear
        assert fmt == "nvfp4-pack-quantized"
        load = DiffusionGemmaForBlockDiffusion.from_pretrained
        hf = load(str(out), dtype=torch.bfloat16).eval()
        gap = A._rel_gap(q, hf)                 # (decompresses on this first forward)
        bf16_gap = A._rel_gap(load(str(tmp_path / "tiny"), dtype=torch.float32).eval(),
                              load(str(tmp_path / "tiny"), dtype=torch.bfloat16).eval())
        assert gap <= 2 * bf16_gap, (gap, bf16_gap)
        theirs = dict(hf.named_modules())
        n = 0
        for name, m in q.model.named_modules():
            if isinstance(m, QuantLinear) and m.weight_spec is not None and name in theirs:
                n += 1
                assert torch.equal(theirs[name].weight.float(),
                                   m.dequantized_weight().to(torch.bfloat16).float()), name
        assert n > 0

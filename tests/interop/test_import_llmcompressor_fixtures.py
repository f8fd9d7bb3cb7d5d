"""Checkpoints llm-compressor 0.14 wrote itself (tests/fixtures/llmcompressor: FP8_DYNAMIC,
NVFP4A16 and NVFP4 W4A4 of a tiny random LlamaForCausalLM, bench/llmcompressor_fixtures.py)
load into qpass with the file's codes and scales kept (issue 28 item 5). Checked against the
two libraries an engine reads them with, no llm-compressor needed:
  - compressed-tensors' own float32 dequantization of every quantized linear equals qpass's
    imported weight exactly, and qpass holds the stored bits (E4M3 / E2M1 codes, E4M3 block
    scale codes, global scales, NVFP4's input_global_scale) unchanged;
  - transformers' own load of the folder (compressed-tensors' quantizer: FP8 weights and
    per-token FP8 activations in float32; NVFP4 decompressed into bfloat16) gives qpass's
    logits within 1e-5 relative for FP8 and 1e-2 for NVFP4A16. For W4A4 NVFP4 an input off
    by bfloat16's weight rounding flips 4-bit activation codes, so the same comparison is made
    with compressed-tensors' float32 dequantization of the same file in transformers' modules:
    then its run-time NVFP4 activation quantization (16-block scales under the calibrated
    global scale) gives qpass's logits within 1e-5; as loaded it stays nearer to qpass than
    activation quantization moves the model."""
import json
import os
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import qpass
from qpass.formats.packing import unpack
from qpass.ir.qlinear import QuantLinear, is_quantized_module
from qpass.models.naming import key_map

pytest.importorskip("compressed_tensors")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "fixtures"))
from hf_loading import causal_lm  # noqa: E402
from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8  # noqa: E402
from compressed_tensors.quantization import QuantizationArgs  # noqa: E402
from compressed_tensors.quantization.lifecycle.forward import dequantize  # noqa: E402

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "llmcompressor"
FOLDERS = ["fp8_dynamic", "nvfp4a16", "nvfp4"]


def _ids():
    return torch.randint(3, 98, (2, 24), generator=torch.Generator().manual_seed(0))


def _ct_dequantized(folder: Path) -> dict[str, torch.Tensor]:
    """{HF module name: compressed-tensors' float32 dequantization of its stored weight} (the
    bfloat16 FP8 scales taken as float32, exactly, as transformers' float32 load does)."""
    t = load_file(str(folder / "model.safetensors"))
    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    args = QuantizationArgs.model_validate(qc["config_groups"]["group_0"]["weights"])
    names = [k[: -len(".weight_scale")] for k in t if k.endswith(".weight_scale")]
    return {m: dequantize(x_q=_stored_values(t, m), scale=t[m + ".weight_scale"].float(),
                          args=args, dtype=torch.float32,
                          global_scale=t.get(m + ".weight_global_scale")) for m in names}


def _stored_values(t, m: str) -> torch.Tensor:
    if m + ".weight_packed" in t:                       # NVFP4: E2M1 pairs, even low
        p = t[m + ".weight_packed"]
        return unpack_fp4_from_uint8(p, p.shape[0], p.shape[1] * 2, dtype=torch.float32)
    return t[m + ".weight"].float()                     # FP8 E4M3


def _quantized(model) -> dict[str, QuantLinear]:
    to_hf = {g: h for h, g in key_map(model.config).items()}
    return {to_hf[n + ".weight"][: -len(".weight")]: m for n, m in model.gm.named_modules()
            if is_quantized_module(m)}


@pytest.fixture(scope="module")
def imported():
    return {f: qpass.load_compiled(FIX / f) for f in FOLDERS}


@pytest.mark.parametrize("folder", FOLDERS)
def test_weights_equal_compressed_tensors_decompression(imported, folder):
    want = _ct_dequantized(FIX / folder)
    got = _quantized(imported[folder])
    assert sorted(got) == sorted(want) and len(got) == 14       # 7 linears x 2, lm_head not
    for name, m in got.items():
        assert torch.equal(m.dequantized_weight(torch.float32), want[name]), name


@pytest.mark.parametrize("folder", FOLDERS)
def test_stored_codes_and_scales_kept(imported, folder):
    t = load_file(str(FIX / folder / "model.safetensors"))
    for name, m in _quantized(imported[folder]).items():
        qw = m.quantized_weight()
        N, K = qw.shape
        codes = unpack(qw.packed, qw.spec.bits, K)
        if folder == "fp8_dynamic":
            assert str(m.weight_spec) == "fp8:channel" and str(m.act_spec) == "fp8:token:dyn"
            assert torch.equal(codes, t[name + ".weight"].view(torch.uint8)), name
            assert torch.equal(qw.scale.reshape(N), t[name + ".weight_scale"].float()
                               .reshape(N)), name
            continue
        p = t[name + ".weight_packed"]
        assert torch.equal(codes, torch.stack((p & 15, p >> 4), -1).reshape(N, K)), name
        assert torch.equal(qw.scale, t[name + ".weight_scale"].view(torch.uint8)), name
        assert torch.equal(qw.global_scale.reshape(1), t[name + ".weight_global_scale"]), name
        if folder == "nvfp4a16":
            assert str(m.weight_spec) == "nvfp4" and m.act_spec is None
        else:
            assert str(m.act_spec) == "nvfp4:tensor"
            assert torch.equal(m.act_scale.reshape(1), t[name + ".input_global_scale"]), name


def _transformers(folder: Path, dtype):
    return causal_lm(folder, dtype)


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def test_fp8_dynamic_logits_equal_transformers(imported):
    hf = _transformers(FIX / "fp8_dynamic", torch.float32)
    with torch.no_grad():
        assert _rel(imported["fp8_dynamic"](_ids()), hf(_ids()).logits) < 1e-5


def _nvfp4_in_float32(folder: Path, exact: bool):
    """transformers' load of an NVFP4 folder (it decompresses into bfloat16 on the first
    forward), then in float32: as decompressed, or with compressed-tensors' float32
    dequantization of the same file as the weights (`exact`)."""
    hf = _transformers(folder, torch.bfloat16)
    with torch.no_grad():
        hf(_ids()[:, :2])                       # decompresses every quantized linear
    torch.nn.Module.float(hf)                   # PreTrainedModel.float refuses quantized models
    if exact:
        want = _ct_dequantized(folder)
        for name, m in hf.named_modules():
            if name in want:
                m.weight.data = want[name]
    return hf


def test_nvfp4a16_logits_equal_transformers(imported):
    with torch.no_grad():
        ours = imported["nvfp4a16"](_ids())
        loaded = _nvfp4_in_float32(FIX / "nvfp4a16", exact=False)(_ids()).logits
        exact = _nvfp4_in_float32(FIX / "nvfp4a16", exact=True)(_ids()).logits
    assert _rel(ours, loaded) < 1e-2
    assert _rel(ours, exact) < 1e-5


def test_nvfp4_w4a4_logits_equal_transformers(imported):
    hf = _nvfp4_in_float32(FIX / "nvfp4", exact=True)
    with torch.no_grad():
        ours = imported["nvfp4"](_ids())
        exact = hf(_ids()).logits
        for m in hf.modules():          # compressed-tensors' activation quantization off
            if hasattr(m, "quantization_scheme"):
                m.quantization_enabled = False
        no_act = hf(_ids()).logits
        loaded = _nvfp4_in_float32(FIX / "nvfp4", exact=False)(_ids()).logits
    assert _rel(ours, exact) < 1e-5
    act_gap = _rel(no_act, exact)
    assert act_gap > 0.05                   # activations are quantized, on both sides
    assert _rel(ours, loaded) < act_gap

"""compressed-tensors exports of NVFP4 W4A4 and MXFP4 / MXFP8 (issue 28 item 3), and their import.

NVFP4 W4A4 is llm-compressor's NVFP4: activations with one calibrated static global scale per
tensor (`input_global_scale`, qpass's nvfp4:tensor set by ObserveActivations) and 16-block E4M3
scales taken from each input. MX formats are 32-groups with E8M0 (uint8) scales
(mxfp4-pack-quantized, mxfp8-quantized), dynamic 32-group activations. Checked against
compressed-tensors' own code: its activation rule (compute_dynamic_scales_and_zp +
fake_quantize) equals qpass's bit for bit, its decompression of the files equals qpass's
weights exactly, the config is what its update_config writes for llm-compressor's presets,
transformers runs the files (activations quantized by compressed-tensors' forward) to qpass's
logits, and the files (also those compressed-tensors compresses itself) import back into
qpass with the codes kept and the logits unchanged."""
import json
import os
import sys

import pytest
import torch
from safetensors.torch import load_file

import qpass
from qpass import Pipeline, models, passes, presets
from qpass.calibration import CalibrationSet
from qpass.errors import CheckpointError, PipelineError
from qpass.formats import compute_qparams, fake_quantize
from qpass.interop import export_compressed_tensors, read_source
from qpass.ir.qlinear import is_quantized_module
from qpass.models.naming import key_map
from qpass.specs import Scheme

from compressed_tensors.compressors.nvfp4.helpers import unpack_fp4_from_uint8
from compressed_tensors.entrypoints.convert import CompressedTensorsDequantizer
from compressed_tensors.quantization import QuantizationArgs
from compressed_tensors.quantization.lifecycle.forward import dequantize
from compressed_tensors.quantization.lifecycle.forward import fake_quantize as ct_fake_quantize
from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES
from compressed_tensors.quantization.utils import compute_dynamic_scales_and_zp, generate_gparam

sys.path.insert(0, os.path.dirname(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "fixtures"))
from test_export_compressed_tensors import qpass_weights  # noqa: E402
from test_export_float_compressed_tensors import LLADA_DENSE, _qc, _qc_of_preset  # noqa: E402
from test_import_quantized import _compress_with_compressed_tensors  # noqa: E402
from test_import_float_compressed_tensors import _variant  # noqa: E402
from hf_loading import causal_lm  # noqa: E402

# qpass scheme -> (llm-compressor preset, compressed-tensors format)
CASES = {"w4a4-nvfp4-static": ("NVFP4", "nvfp4-pack-quantized"),
         "w4a16-mxfp4": ("MXFP4A16", "mxfp4-pack-quantized"),
         "w4a4-mxfp4": ("MXFP4", "mxfp4-pack-quantized"),
         "w8a8-mxfp8": ("MXFP8", "mxfp8-quantized")}
LLAMA_DENSE = ["model.embed_tokens", "model.norm", "lm_head"]


def ct_weights(out, dense) -> dict[str, torch.Tensor]:
    """compressed-tensors' registered compressors' float32 decompression of `out`'s weights
    (its weight converter counts NVFP4's input_global_scale, an activation parameter, as an
    orphan, so that one is left out of what it reads)."""
    t = {k: v for k, v in load_file(str(out / "model.safetensors")).items()
         if not k.endswith(".input_global_scale")}
    return CompressedTensorsDequantizer(str(out), ignore=dense, dtype=torch.float32).validate(t)


def ct_float32_weights(out, dense) -> dict[str, torch.Tensor]:
    """ct_weights, but NVFP4 unpacked and dequantized in float32 by compressed-tensors'
    unpack_fp4_from_uint8 + dequantize (its compressor unpacks into bfloat16, which rounds the
    E4M3 / global scale quotients)."""
    got = ct_weights(out, dense)
    t = load_file(str(out / "model.safetensors"))
    qc = _qc(out)
    args = QuantizationArgs.model_validate(qc["config_groups"]["group_0"]["weights"])
    for k in t:
        if k.endswith(".weight_global_scale"):
            m = k[: -len(".weight_global_scale")]
            p = t[m + ".weight_packed"]
            u = unpack_fp4_from_uint8(p, p.shape[0], p.shape[1] * 2, dtype=torch.float32)
            got[m + ".weight"] = dequantize(x_q=u, scale=t[m + ".weight_scale"].float(),
                                            args=args, global_scale=t[k], dtype=torch.float32)
    return got


def _calib(model):
    cfg = model.config
    return CalibrationSet.from_ids(torch.arange(2000) % 60, n=4, seq_len=32,
                                   mask_id=cfg.mask_token_id,
                                   masking="none" if cfg.causal else "diffusion")


def _quantize(model, scheme):
    """RTN under `scheme`, with ObserveActivations when its activations are static (the
    w4a4-nvfp4-static preset's passes)."""
    ps = [passes.RTN()] + ([passes.ObserveActivations()] if scheme.endswith("static") else [])
    return Pipeline(ps, scheme=scheme).run(model, _calib(model), progress=False, verify=False)


@pytest.fixture(scope="module")
def zoo():
    return {n: models.load(n) for n in ("tiny-llada", "tiny-dream-random", "tiny-llama-random")}


@pytest.fixture(scope="module")
def llada_exports(zoo, tmp_path_factory):
    d = tmp_path_factory.mktemp("ct")
    out = {}
    for scheme in CASES:
        c = _quantize(zoo["tiny-llada"], scheme)
        out[scheme] = (c, export_compressed_tensors(read_source(c), d / scheme))
    return out


def test_activation_rules_are_compressed_tensors():
    # NVFP4: qpass's calibrated global (minmax) is generate_gparam of the calibration range,
    # and its run-time blocks equal compressed-tensors' dynamic "local" scales + fake_quantize;
    # MX: its dynamic 32-groups equal compressed-tensors' MXFP4 / MXFP8 activations
    gen = torch.Generator().manual_seed(0)
    nv = PRESET_SCHEMES["NVFP4"]["input_activations"]
    for t in range(6):
        x = torch.randn(3, 5, 128, generator=gen) * 10.0 ** (3 * torch.rand(1, generator=gen) - 1)
        x[0, 0, :32] = 0                                      # an all-zero block
        calib = torch.randn(40, 128, generator=gen) * (t + 1)
        g, _ = compute_qparams(calib, "nvfp4:tensor")
        assert torch.equal(g.reshape(1), generate_gparam(calib.min(), calib.max()))
        s, z = compute_dynamic_scales_and_zp(x, nv, torch.nn.Module(), global_scale=g.reshape(1))
        want = ct_fake_quantize(x, s, z, nv, global_scale=g.reshape(1))
        assert torch.equal(fake_quantize(x, "nvfp4:tensor", g), want)
        for preset, spec in (("MXFP4", "mxfp4:token:dyn"), ("MXFP8", "mxfp8:token:dyn")):
            a = PRESET_SCHEMES[preset]["input_activations"]
            s, z = compute_dynamic_scales_and_zp(x, a, torch.nn.Module())
            assert torch.equal(fake_quantize(x, spec), ct_fake_quantize(x, s, z, a)), preset


@pytest.mark.parametrize("scheme", list(CASES))
def test_export_is_the_preset_and_decompresses_exactly(llada_exports, tmp_path, scheme):
    c, out = llada_exports[scheme]
    preset, fmt = CASES[scheme]
    qc = _qc(out)
    assert qc["format"] == fmt
    ref = _qc_of_preset(preset, qc, tmp_path)["config_groups"]["group_0"]
    for part in ("weights", "input_activations"):
        assert qc["config_groups"]["group_0"][part] == ref[part], part
    t = load_file(str(out / "model.safetensors"))
    want = qpass_weights(c)
    assert len(want) == 6 * 7
    got = ct_weights(out, LLADA_DENSE)      # compressed-tensors' registered compressor
    exact = ct_float32_weights(out, LLADA_DENSE)
    for name, w in want.items():
        m = name[: -len(".weight")]
        assert torch.equal(exact[name], w), name
        # NVFP4's registered compressor works in bfloat16: qpass's weight rounded to it; MX
        # weights (2^e times 2- or 4-bit significands) are exact in bfloat16
        bf16 = "nvfp4" in scheme
        assert torch.equal(got[name], w.to(torch.bfloat16).float() if bf16 else w), name
        if scheme.startswith("w8"):
            assert t[m + ".weight"].dtype == torch.float8_e4m3fn
        else:
            assert t[m + ".weight_packed"].dtype == torch.uint8
        scale = t[m + ".weight_scale"]
        if "mx" in scheme:                  # E8M0 codes, one per 32 along K
            assert scale.dtype == torch.uint8 and scale.shape == (w.shape[0], w.shape[1] // 32)
    if scheme == "w4a4-nvfp4-static":       # input_global_scale: the calibrated global
        lin = c.gm.get_submodule("blocks.0.q_proj")
        assert torch.equal(t["model.transformer.blocks.0.q_proj.input_global_scale"],
                           lin.act_scale.reshape(1))


def _transformers_float32(out):
    """transformers' model of `out` computing in float32: compressed-tensors decompresses
    NVFP4 / MX weights into bfloat16 (its fp4 unpack's and E8M0 scale's default dtype), which a
    float32 model cannot multiply, so after its decompression the weights become compressed-
    tensors' own float32 decompression of the file; activations stay with its forward hooks."""
    hf = causal_lm(out, dtype=torch.float32)
    hf.hf_quantizer.compressor.decompress_model(hf)
    w = ct_float32_weights(out, LLAMA_DENSE)
    n = 0
    for name, mod in hf.named_modules():
        if name + ".weight" in w and getattr(mod, "quantization_scheme", None) is not None:
            mod.weight.data = w[name + ".weight"].float()
            n += 1
    assert n == 14
    return hf


@pytest.mark.parametrize("scheme", list(CASES))
def test_transformers_runs_the_export(zoo, tmp_path, scheme):
    model = zoo["tiny-llama-random"]
    c = _quantize(model, scheme)
    out = export_compressed_tensors(read_source(c), tmp_path / "ct")
    ids = torch.randint(0, 60, (2, 16), generator=torch.Generator().manual_seed(0))
    hf = _transformers_float32(out)
    with torch.no_grad():
        theirs, ours = hf(ids).logits, c(ids)
    assert float((theirs - ours).norm() / ours.norm()) < 1e-5
    if scheme != "w4a16-mxfp4":
        # without its activation quantization transformers would be far off: it does run it
        for mod in hf.modules():
            if getattr(mod, "quantization_scheme", None) is not None:
                mod.quantization_enabled = False
        with torch.no_grad():
            assert float((hf(ids).logits - ours).norm() / ours.norm()) > 1e-3


# tiny-dream's K = 112 has no 32-blocks: it takes NVFP4 only
@pytest.mark.parametrize("name,scheme", [("tiny-llada", s) for s in CASES] +
                         [("tiny-dream-random", "w4a4-nvfp4-static")])
def test_round_trip(zoo, tmp_path, name, scheme):
    c = _quantize(zoo[name], scheme)
    out = export_compressed_tensors(read_source(c), tmp_path / "ct")
    imp = qpass.load_compiled(out)
    a = {n: m for n, m in c.gm.named_modules() if is_quantized_module(m)}
    seen = 0
    for n, m in imp.gm.named_modules():
        if is_quantized_module(m):
            seen += 1
            assert m.weight_spec == a[n].weight_spec and m.act_spec == a[n].act_spec, n
            assert torch.equal(m.quantized_weight().codes(), a[n].quantized_weight().codes())
            assert torch.equal(m.dequantized_weight(), a[n].dequantized_weight()), n
            if scheme.endswith("static"):
                assert torch.equal(m.act_scale, a[n].act_scale), n
    assert seen == len(a) > 0
    ids = torch.randint(0, 60, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(imp(ids), c(ids))


@pytest.mark.parametrize("scheme", list(CASES))
def test_compressed_by_compressed_tensors_imports(zoo, tmp_path, scheme):
    # llm-compressor's preset applied and compressed by compressed-tensors itself, its
    # parameters set to qpass's: the import holds qpass's codes and computes its logits
    model = zoo["tiny-llama-random"]
    c = _quantize(model, scheme)
    preset, fmt = CASES[scheme]
    out = _compress_with_compressed_tensors(c, model, tmp_path, PRESET_SCHEMES[preset], fmt)
    assert _qc(out)["format"] == fmt
    imp = qpass.load_compiled(out)
    a = dict(c.gm.named_modules())
    t = load_file(str(out / "model.safetensors"))
    to_hf = {g: h for h, g in key_map(imp.config).items()}
    for n, m in imp.gm.named_modules():
        if is_quantized_module(m):
            # the file's codes kept (its fp4 packing writes −0 as +0: values, not codes, are
            # qpass's), its weights qpass's
            hf = to_hf[n + ".weight"][: -len(".weight")]
            if hf + ".weight_packed" in t:
                p = t[hf + ".weight_packed"]
                codes = torch.stack((p & 0x0F, p >> 4), dim=-1).reshape(p.shape[0], -1)
            else:
                codes = t[hf + ".weight"].view(torch.uint8)
            assert torch.equal(m.quantized_weight().codes(), codes), n
            assert torch.equal(m.dequantized_weight(), a[n].dequantized_weight()), n
            assert m.act_spec == a[n].act_spec, n
    ids = torch.randint(0, 60, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(imp(ids), c(ids))


def test_refusals(zoo, tmp_path):
    tiny = zoo["tiny-llada"]
    # per-token dynamic NVFP4 globals: no compressed-tensors layout; the message names the
    # scheme that has one
    c = Pipeline([passes.RTN()], scheme="w4a4-nvfp4").run(tiny, progress=False, verify=False)
    with pytest.raises(CheckpointError, match="w4a4-nvfp4-static"):
        export_compressed_tensors(read_source(c), tmp_path / "a")
    # mse-observed MX activations: an engine computes plain absmax scales
    c = Pipeline([passes.RTN()], scheme=Scheme("mx-mse", "mxfp4", "mxfp4:token:dyn:mse")).run(
        tiny, progress=False, verify=False)
    with pytest.raises(CheckpointError, match="mxfp4 / mxfp8"):
        export_compressed_tensors(read_source(c), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # a static activation spec is calibrated: a weight pass alone leaves it unset
    with pytest.raises(PipelineError, match="ObserveActivations"):
        Pipeline([passes.RTN()], scheme="w4a4-nvfp4-static")
    assert [type(p).__name__ for p in presets.get("w4a4-nvfp4-static").passes] == \
        ["RTN", "ObserveActivations"]


Q = "model.transformer.blocks.0.q_proj"


@pytest.mark.parametrize("scheme,edit,words", [
    ("w4a4-nvfp4-static", lambda t: t.pop(Q + ".input_global_scale"), "input_global_scale"),
    ("w4a4-nvfp4-static", lambda t: t[Q + ".input_global_scale"].fill_(-1.0),
     "positive finite"),
    ("w4a16-mxfp4", lambda t: t[Q + ".weight_scale"].__setitem__((0, 0), 255), "NaN code"),
    ("w8a8-mxfp8", lambda t: t.__setitem__(Q + ".weight_scale", t[Q + ".weight_scale"].float()),
     "uint8"),
])
def test_import_refusals(llada_exports, tmp_path, scheme, edit, words):
    d = _variant(llada_exports[scheme][1], tmp_path, edit_t=edit)
    with pytest.raises(CheckpointError, match=words):
        qpass.load_compiled(d)


def test_cli_exports_a_saved_mxfp4_checkpoint(zoo, tmp_path):
    from qpass.cli import main
    Pipeline([passes.RTN()], scheme="w4a16-mxfp4").run(zoo["tiny-llada"], progress=False,
                                                       verify=False).save(tmp_path / "mx")
    out = tmp_path / "ct"
    assert main(["export", str(tmp_path / "mx"), "--format", "compressed-tensors", "--out",
                 str(out)]) == 0
    assert _qc(out)["format"] == "mxfp4-pack-quantized"


def test_static_nvfp4_checkpoint_reloads(llada_exports, tmp_path):
    # the calibrated global scale is the linear's act_scale (1, 1): saved, checked, reloaded
    c = llada_exports["w4a4-nvfp4-static"][0]
    c.save(tmp_path / "ck")
    back = qpass.load_compiled(tmp_path / "ck")
    lin = back.gm.get_submodule("blocks.0.q_proj")
    assert str(lin.act_spec) == "nvfp4:tensor" and lin.act_scale.shape == (1, 1)
    ids = torch.randint(0, 60, (2, 24), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(back(ids), c(ids))

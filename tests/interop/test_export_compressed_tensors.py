"""compressed-tensors export, read back with compressed-tensors' own model-free decompression
(CompressedTensorsDequantizer: config.json → QuantizationConfig → the registered compressor's
decompress) and compared with qpass's dequantized weights exactly (torch.equal, fp32)."""
import json

import pytest
import torch
from safetensors.torch import load_file

from qpass import Pipeline, models, passes
from qpass.cli.main import main
from qpass.errors import CheckpointError
from qpass.interop import export_compressed_tensors, read_source
from qpass.ir.qlinear import is_quantized_module
from qpass.models.naming import key_map
from qpass.specs import Scheme

# the interop extra (make's bootstrap installs it): a missing reader is a failure, not a skip
from compressed_tensors.compressors import ModelCompressor
from compressed_tensors.entrypoints.convert.converters.ct_dequantizer import (
    CompressedTensorsDequantizer)
from compressed_tensors.quantization import QuantizationConfig


def qpass_weights(compiled) -> dict[str, torch.Tensor]:
    to_hf = {d: s for s, d in key_map(compiled.config).items()}
    return {to_hf[name + ".weight"]: m.dequantized_weight(torch.float32)
            for name, m in compiled.gm.named_modules() if is_quantized_module(m)}


def ct_weights(out, dense_names) -> dict[str, torch.Tensor]:
    # The model-free reader matches modules by name only (it cannot see that an embedding or
    # LLaDA's ln_f is not a Linear), so those are passed as its documented extra ignore list.
    deq = CompressedTensorsDequantizer(str(out), ignore=dense_names, dtype=torch.float32)
    return deq.validate(load_file(str(out / "model.safetensors")))


def _run(model, scheme, lower=False):
    ps = [passes.RTN()] + ([passes.Lower()] if lower else [])
    return Pipeline(ps, scheme=scheme).run(model, progress=False, verify=False)


@pytest.fixture(scope="module")
def tiny():
    return models.load("tiny-llada")


@pytest.fixture(scope="module")
def dream():
    return models.load("tiny-dream-random")


@pytest.mark.parametrize("scheme,fmt", [
    ("w4a16g128", "pack-quantized"), ("w8a8", "int-quantized"),
    ("int4:g128:asym", "pack-quantized"), ("int8:channel", "pack-quantized"),
    ("int8:tensor:asym", "pack-quantized"),        # tensor zero point: stored unpacked
    (Scheme("w8a8-asym", "int8:channel:asym", "int8:token:dyn"), "int-quantized"),
    (Scheme("w8a8-tensor", "int8:tensor", "int8:token:dyn"), "int-quantized")],
    ids=lambda x: getattr(x, "name", x))    # stable across xdist workers (str(Scheme) is not)
def test_round_trip_exact_llada(tiny, tmp_path, scheme, fmt):
    c = _run(tiny, scheme)
    out = export_compressed_tensors(read_source(c), tmp_path / "ct")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["format"] == fmt and qc["quant_method"] == "compressed-tensors"
    assert qc["ignore"] == ["model.transformer.ff_out"]          # LLaDA's head stays float
    got = ct_weights(out, ["model.transformer.wte", "model.transformer.ln_f"])
    want = qpass_weights(c)
    assert len(want) == 6 * 7
    for name, w in want.items():
        assert got[name].dtype == torch.float32
        assert torch.equal(got[name], w), name
    sd = c.gm.state_dict()
    assert torch.equal(got["model.transformer.wte.weight"], sd["embed.weight"])
    assert torch.equal(got["model.transformer.ff_out.weight"], sd["head.weight"])


@pytest.mark.parametrize("scheme", ["w8a8", "int4:channel:asym", "w4a16g128"])
def test_round_trip_exact_dream_naming(dream, tmp_path, scheme):
    # Dream/Qwen2 names, qkv biases, K = 112 (the packed stream is cut to ceil(K·b/32) words),
    # 16 KV output rows (asymmetric zero points packed along N); g128 falls back per layer
    c = _run(dream, scheme)
    out = export_compressed_tensors(read_source(c), tmp_path / "ct")
    t = load_file(str(out / "model.safetensors"))
    assert "model.layers.0.self_attn.q_proj.bias" in t
    got = ct_weights(out, ["model.embed_tokens"])
    for name, w in qpass_weights(c).items():
        assert torch.equal(got[name], w), name


def test_config_is_what_compressed_tensors_writes(tiny, tmp_path):
    c = _run(tiny, "w8a8")
    out = export_compressed_tensors(read_source(c), tmp_path / "ct")
    ours = json.loads((out / "config.json").read_text())["quantization_config"]
    parsed = QuantizationConfig.model_validate(ours)
    g = parsed.config_groups["group_0"]
    assert g.targets == ["Linear"] and g.weights.num_bits == 8 and g.weights.symmetric
    assert g.weights.strategy == "channel"
    a = g.input_activations
    assert (a.num_bits, a.strategy, a.dynamic, a.symmetric) == (8, "token", True, True)
    # compressed-tensors' own serializer, fed the parsed config, writes the same dict
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "config.json").write_text("{}")
    ModelCompressor(quantization_config=parsed).update_config(str(tmp_path / "ref"))
    theirs = json.loads((tmp_path / "ref" / "config.json").read_text())["quantization_config"]
    assert ours == theirs


def test_mixed_schemes_get_named_groups(tiny, tmp_path):
    # an override keeps one layer float and gives another 8 bits: two groups with explicit
    # targets, the float one in `ignore`
    s = Scheme("mix", "int4:g128:sym", overrides=(("blocks.0.q_proj", None),
                                                  ("blocks.1.*", "int8:channel")))
    c = _run(tiny, s)
    out = export_compressed_tensors(read_source(c), tmp_path / "ct")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    parsed = QuantizationConfig.model_validate(qc)
    assert len(parsed.config_groups) == 2
    assert "model.transformer.blocks.0.q_proj" in qc["ignore"]
    eight = [g for g in parsed.config_groups.values() if g.weights.num_bits == 8][0]
    assert len(eight.targets) == 7 and all(".blocks.1." in t for t in eight.targets)
    got = ct_weights(out, ["model.transformer.wte", "model.transformer.ln_f"])
    for name, w in qpass_weights(c).items():
        assert torch.equal(got[name], w), name


def test_lowered_checkpoint_via_cli(tiny, tmp_path):
    c = _run(tiny, "w8a8", lower=True)
    c.save(tmp_path / "ck")
    assert main(["export", str(tmp_path / "ck"), "--format", "compressed-tensors",
                 "--out", str(tmp_path / "out")]) == 0
    got = ct_weights(tmp_path / "out", ["model.transformer.wte", "model.transformer.ln_f"])
    for name, w in qpass_weights(_run(tiny, "w8a8")).items():
        assert torch.equal(got[name], w), name


def test_static_activation_scales_refused(tiny, tmp_path):
    from qpass.calibration import CalibrationSet
    calib = CalibrationSet.from_ids(torch.arange(128) % 250, mask_id=tiny.config.mask_token_id,
                                    n=2, seq_len=32, seed=0)
    c = Pipeline([passes.RTN(), passes.ObserveActivations("int8:tensor")], scheme="w8a16").run(
        tiny, calib, progress=False, verify=False)
    with pytest.raises(CheckpointError, match="static tensor scales"):
        export_compressed_tensors(read_source(c), tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("lower", [False, True])
def test_quantized_attention_refused(tiny, lower):
    # kv8 quantizes K/V per token inside attention; no format carries it (all exporters share
    # read_source, so none writes a model that would compute attention differently)
    with pytest.raises(CheckpointError, match="quantizes attention"):
        read_source(_run(tiny, "w4a16g128kv8", lower=lower))


@pytest.mark.parametrize("name,why", [("tiny-moe-random", "mixture-of-experts"),
                                      ("tiny-sdar-random", "block-causal attention")])
def test_families_without_an_export_layout_refused(name, why):
    # MoE and block diffusion: no exporter maps them yet, so all refuse before writing
    with pytest.raises(CheckpointError, match=why):
        read_source(_run(models.load(name), "w4a16g128"))

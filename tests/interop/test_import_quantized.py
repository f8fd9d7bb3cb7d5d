"""Bring quantized models in (issue 28, item 5): compressed-tensors and GPTQ folders and GGUF
files load through qpass.load_compiled as CompiledDenoisers whose QuantLinear modules hold the
file's codes and scales. Round trips qpass export → import compute the original compiled
model's logits exactly (float32 scales; GGUF's float16 scales are exact for :f16scale specs)
and within fp16-scale rounding where the export rounds scales; a checkpoint written by
compressed-tensors' own compressor imports identically; the commands run on imported paths;
bad or partial files are one CheckpointError."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import qpass
from qpass import Pipeline, models, passes
from qpass.cli.main import main
from qpass.errors import CheckpointError
from qpass.interop import (export_compressed_tensors, export_gguf, export_gptq, load_quantized,
                           read_source)
from qpass.ir.qlinear import QuantLinear, is_quantized_module
from qpass.runtime.loading import is_compiled_dir, load_any

EXPORT = {"ct": lambda s, o: export_compressed_tensors(s, o),
          "gptq": lambda s, o: export_gptq(s, o, scale_dtype="float32"),
          "gguf": lambda s, o: export_gguf(s, o.with_suffix(".gguf"))}


def _run(model, scheme, fuse=False, lower=False):
    ps = ([passes.FuseNorms()] if fuse else []) + [passes.RTN()] + \
         ([passes.Lower()] if lower else [])
    return Pipeline(ps, scheme=scheme).run(model, progress=False, verify=False)


def _ids(vocab):
    return torch.randint(0, vocab - 8, (2, 24), generator=torch.Generator().manual_seed(0))


def _same_codes(a, b):
    """Every quantized linear of `b` holds `a`'s dequantized weight exactly."""
    mods = {n: m for n, m in a.gm.named_modules() if is_quantized_module(m)}
    got = {n: m for n, m in b.gm.named_modules() if is_quantized_module(m)}
    assert set(mods) == set(got)
    for n, m in got.items():
        assert isinstance(m, QuantLinear)
        assert torch.equal(m.dequantized_weight(), mods[n].dequantized_weight()), n


@pytest.fixture(scope="module")
def zoo():
    return {n: models.load(n) for n in ("tiny-llada", "tiny-dream", "tiny-llama-random")}


CASES = [  # (model, scheme, formats, FuseNorms)
    ("tiny-llada", "int4:g32:sym:f16scale", ("ct", "gptq", "gguf"), False),
    ("tiny-llada", "int8:channel:f16scale", ("ct", "gptq", "gguf"), True),
    ("tiny-llada", "w8a8", ("ct",), False),
    ("tiny-llada", "int4:g64:asym", ("ct",), False),
    ("tiny-dream", "int4:g32:sym:f16scale", ("ct", "gptq", "gguf"), False),
    ("tiny-dream", "int8:tensor:asym", ("ct",), False),
    ("tiny-llama-random", "int4:g32:sym:f16scale", ("ct", "gptq", "gguf"), True),   # untied
    ("tiny-llama-random", "w8a8", ("ct",), True),
]


@pytest.mark.parametrize("name,scheme,formats,fuse", CASES,
                         ids=[f"{c[0]}-{c[1]}-{'fused' if c[3] else 'plain'}" for c in CASES])
def test_round_trip_exact(zoo, tmp_path, name, scheme, formats, fuse):
    model = zoo[name]
    c = _run(model, scheme, fuse)
    src = read_source(c)
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():
        want = c(ids)
    for fmt in formats:
        out = EXPORT[fmt](src, tmp_path / fmt)
        assert is_compiled_dir(out)
        imp = qpass.load_compiled(out)
        assert imp.manifest["imported"]["format"] == {"ct": "compressed-tensors"}.get(fmt, fmt)
        _same_codes(c, imp)
        with torch.no_grad():
            assert torch.equal(imp(ids), want), fmt
        assert imp.config.family == model.config.family
        assert type(imp.tokenizer) is type(model.tokenizer)


def test_lowered_source_and_fp16_scales(zoo, tmp_path):
    # a lowered checkpoint (qpass quantize's default) exports and imports to the same logits;
    # GPTQ's default float16 (scales and float tensors) rounds qpass's float32 ones: logits
    # within that rounding (2.8e-4 relative here), far inside the quantization error (18 %)
    model = zoo["tiny-llada"]
    c = _run(model, "w4a16g128", lower=True)
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():
        want, fp = c(ids), model(ids)
    imp = qpass.load_compiled(export_compressed_tensors(read_source(c), tmp_path / "ct"))
    with torch.no_grad():
        assert torch.equal(imp(ids), want)
    half = qpass.load_compiled(export_gptq(read_source(c), tmp_path / "gptq"))   # float16
    assert all(m.weight_spec.scale_dtype == "float16" for m in half.gm.modules()
               if isinstance(m, QuantLinear))
    with torch.no_grad():
        got = half(ids)
    gap = (got - want).norm() / want.norm()
    assert 0 < gap < 1e-3 and gap < 0.01 * (want - fp).norm() / fp.norm()


def test_saved_import_and_reexport(zoo, tmp_path):
    # an imported model saves as an ordinary compiled checkpoint and exports to another format
    model = zoo["tiny-llada"]
    c = _run(model, "int4:g32:sym:f16scale")
    imp = qpass.load_compiled(export_gptq(read_source(c), tmp_path / "gptq",
                                          scale_dtype="float32"))
    imp.save(tmp_path / "saved")
    again = qpass.load_compiled(tmp_path / "saved")
    assert again.manifest["imported"]["format"] == "gptq"
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():
        assert torch.equal(again(ids), c(ids))
    assert main(["export", str(tmp_path / "gptq"), "--format", "gguf",
                 "--out", str(tmp_path / "m.gguf")]) == 0
    with torch.no_grad():
        assert torch.equal(qpass.load_compiled(tmp_path / "m.gguf")(ids), c(ids))
    cov = {r.name: r for r in imp.report.coverage}
    assert cov["blocks.0.q_proj"].status == "quantized" and cov["head"].status == "kept"


def test_commands_run_on_imported_paths(zoo, tmp_path, capsys):
    c = _run(zoo["tiny-llada"], "int4:g32:sym:f16scale")
    src = read_source(c)
    ct = export_compressed_tensors(src, tmp_path / "ct")
    g = export_gguf(src, tmp_path / "m.gguf")
    for path in (ct, g):
        assert main(["generate", str(path), "--prompt", "12+5=", "--gen-length", "8",
                     "--steps", "8", "--device", "cpu"]) == 0
        assert main(["inspect", str(path), "--device", "cpu"]) == 0
    assert main(["eval", str(g), "--tasks", "math", "--limit", "2", "--device", "cpu"]) == 0
    assert isinstance(load_any(str(ct)), qpass.CompiledDenoiser)
    # quantizing an imported checkpoint again is refused before any work
    assert main(["quantize", str(ct), "--pipeline", "w4a16-rtn",
                 "--out", str(tmp_path / "q")]) == 2
    assert "compressed-tensors checkpoint" in capsys.readouterr().err


# ---- written by compressed-tensors' own compressor -----------------------------------------
def _compress_with_compressed_tensors(c, fp_model, tmp_path, scheme_args, fmt):
    """The HF LLaMA model of `fp_model` quantized by compressed-tensors itself to qpass's scales
    (its weights set to qpass's dequantized weights, so its own rounding gives qpass's codes),
    compressed by ModelCompressor and saved as llm-compressor saves it."""
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (QuantizationConfig, QuantizationScheme,
                                                 apply_quantization_config)
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from qpass.models.loading import save_checkpoint
    from qpass.models.naming import key_map
    save_checkpoint(fp_model, tmp_path / "fp")
    hf_logging.set_verbosity_error()
    hf = AutoModelForCausalLM.from_pretrained(str(tmp_path / "fp"), dtype=torch.float32)
    qc = QuantizationConfig(config_groups={"group_0": QuantizationScheme(targets=["Linear"],
                                                                          **scheme_args)},
                            ignore=["lm_head"])
    apply_quantization_config(hf, qc)
    to_hf = {g: k for k, g in key_map(c.config).items()}
    for name, m in c.gm.named_modules():
        if not is_quantized_module(m):
            continue
        lin = hf.get_submodule(to_hf[name + ".weight"][: -len(".weight")])
        qw = m.quantized_weight()
        with torch.no_grad():
            lin.weight.copy_(m.dequantized_weight(torch.float32))
            if qw.global_scale is not None:      # nvfp4: E4M3 block scale codes, global scale
                lin.weight_scale.copy_(qw.scale.view(torch.float8_e4m3fn)
                                       .to(lin.weight_scale.dtype))
                lin.weight_global_scale.copy_(qw.global_scale.reshape(
                    lin.weight_global_scale.shape))
            elif qw.spec.is_float and qw.spec.format != "fp8":   # mx: the 2^e scales
                lin.weight_scale.copy_(qw.float_scale().reshape(lin.weight_scale.shape))
            else:
                lin.weight_scale.copy_(qw.scale.reshape(lin.weight_scale.shape))
            if hasattr(lin, "input_global_scale"):   # NVFP4 activations: the calibrated global
                lin.input_global_scale.copy_(m.act_scale.reshape(1))
            if qw.zero is not None:
                half = 1 << (qw.spec.bits - 1)
                lin.weight_zero_point.copy_((qw.zero - half).reshape(lin.weight_zero_point.shape))
    comp = ModelCompressor.from_pretrained_model(hf, fmt)
    comp.compress_model(hf)
    out = tmp_path / "ct"
    out.mkdir()
    sd = {k: v.contiguous() for k, v in hf.state_dict().items() if k != "lm_head.weight"}
    save_file(sd, str(out / "model.safetensors"))
    (out / "config.json").write_text(json.dumps(hf.config.to_dict()))
    comp.update_config(str(out))
    return out


@pytest.mark.parametrize("scheme,fmt", [("int4:g32:asym", "pack-quantized"),
                                        ("w4a16:g32", "pack-quantized"),
                                        ("w8a8", "int-quantized")])
def test_compressed_by_compressed_tensors_imports_identically(zoo, tmp_path, scheme, fmt):
    from compressed_tensors.quantization import QuantizationArgs
    model = zoo["tiny-llama-random"]
    c = _run(model, scheme)
    spec = next(m for m in c.gm.modules() if isinstance(m, QuantLinear)).weight_spec
    args = {"weights": QuantizationArgs(
        num_bits=spec.bits, symmetric=spec.symmetric, strategy=spec.granularity,
        group_size=spec.group_size)}
    if scheme == "w8a8":
        args["input_activations"] = QuantizationArgs(num_bits=8, strategy="token", dynamic=True,
                                                     symmetric=True)
    out = _compress_with_compressed_tensors(c, model, tmp_path, args, fmt)
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["format"] == fmt
    imp = qpass.load_compiled(out)
    _same_codes(c, imp)
    ids = _ids(model.config.vocab_size)
    with torch.no_grad():
        assert torch.equal(imp(ids), c(ids))


# ---- bad and partial files ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(zoo, tmp_path_factory):
    d = tmp_path_factory.mktemp("exp")
    c = _run(zoo["tiny-llada"], "int4:g32:sym:f16scale")
    src = read_source(c)
    return {"ct": export_compressed_tensors(src, d / "ct"),
            "gptq": export_gptq(src, d / "gptq", scale_dtype="float32"),
            "gguf": export_gguf(src, d / "m.gguf")}


def _copy(src, tmp_path, name="x"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def _edit_tensors(d, fn):
    t = load_file(str(d / "model.safetensors"))
    fn(t)
    save_file(t, str(d / "model.safetensors"))


def _edit_qc(d, **changes):
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"].update(changes)
    (d / "config.json").write_text(json.dumps(cfg))


def _refused(path, *words):
    with pytest.raises(CheckpointError) as e:
        qpass.load_compiled(path)
    msg = str(e.value)
    assert all(w in msg for w in words), msg
    return msg


def test_partial_compressed_tensors(exported, tmp_path):
    d = _copy(exported["ct"], tmp_path)
    _edit_tensors(d, lambda t: t.pop("model.transformer.blocks.1.q_proj.weight_scale"))
    _refused(d, "model.transformer.blocks.1.q_proj", "weight_scale", "missing")


def test_foreign_tensor_refused(exported, tmp_path):
    d = _copy(exported["ct"], tmp_path)
    _edit_tensors(d, lambda t: t.update({"model.transformer.blocks.0.extra.weight":
                                         torch.zeros(2)}))
    _refused(d, "blocks.0.extra.weight", "no part of")


@pytest.mark.parametrize("change,words", [
    ({"quantization_status": "frozen"}, ("quantization_status", "frozen")),
    ({"kv_cache_scheme": {"num_bits": 8, "type": "float"}}, ("KV cache",)),
    ({"transform_config": {"config_groups": {"u": {}}}}, ("transform",)),
])
def test_compressed_tensors_config_refusals(exported, tmp_path, change, words):
    d = _copy(exported["ct"], tmp_path)
    _edit_qc(d, **change)
    _refused(d, *words)


def test_float_weights_refused(exported, tmp_path):
    d = _copy(exported["ct"], tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"]["config_groups"]["group_0"]["weights"]["type"] = "float"
    (d / "config.json").write_text(json.dumps(cfg))
    # FP8, NVFP4 and MX import (test_import_float_compressed_tensors.py,
    # test_export_nvfp4_w4a4_mx.py); 4-bit float g32 without uint8 (E8M0) scales is none of them
    _refused(d, "4-bit float weights", "MXFP4 / MXFP8 (32-groups, uint8 scales)")


def test_gptq_act_order_refused(exported, tmp_path):
    d = _copy(exported["gptq"], tmp_path)
    key = "model.transformer.blocks.0.q_proj.g_idx"
    _edit_tensors(d, lambda t: t.update({key: t[key].flip(0).contiguous()}))
    _refused(d, "g_idx", "act-order", "desc_act")


def test_gptq_asymmetric_zero_wrap_refused(exported, tmp_path):
    d = _copy(exported["gptq"], tmp_path)
    _edit_qc(d, sym=False)
    key = "model.transformer.blocks.0.q_proj.qzeros"
    _edit_tensors(d, lambda t: t.update({key: torch.full_like(t[key], -1)}))   # nibbles 15
    _refused(d, "zero point", "16")


def test_gptq_sym_contradiction_and_bits(exported, tmp_path):
    d = _copy(exported["gptq"], tmp_path)
    key = "model.transformer.blocks.0.q_proj.qzeros"
    _edit_tensors(d, lambda t: t.update({key: torch.zeros_like(t[key])}))
    _refused(d, "sym is true")
    d = _copy(exported["gptq"], tmp_path, "b3")
    _edit_qc(d, bits=3)
    _refused(d, "3-bit GPTQ")


def test_gptq_asymmetric_imports(zoo, exported, tmp_path):
    # sym: false keeps the file's zero points (an asymmetric qpass spec), same weights
    d = _copy(exported["gptq"], tmp_path)
    _edit_qc(d, sym=False)
    a, b = qpass.load_compiled(exported["gptq"]), qpass.load_compiled(d)
    assert not next(m for m in b.gm.modules() if isinstance(m, QuantLinear)).weight_spec.symmetric
    ids = _ids(264)
    with torch.no_grad():
        torch.testing.assert_close(a(ids), b(ids), rtol=0, atol=0)


def test_unknown_quant_method(exported, tmp_path):
    d = _copy(exported["gptq"], tmp_path)
    _edit_qc(d, quant_method="awq")
    _refused(d, "quant_method 'awq'", "compressed-tensors, gptq")


def test_truncated_safetensors(exported, tmp_path):
    d = _copy(exported["ct"], tmp_path)
    data = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(data[: len(data) // 2])
    _refused(d, "model.safetensors")


def test_load_quantized_names_what_it_reads(tmp_path):
    with pytest.raises(CheckpointError, match="GGUF file"):
        load_quantized(tmp_path)


def test_float_loader_points_at_the_import(exported):
    with pytest.raises(CheckpointError, match="load_compiled"):
        models.load(str(exported["ct"]))

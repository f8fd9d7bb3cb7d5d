"""GPTQ-format export: read back with an unpack written here from the format's definition
(AutoGPTQ v1: qweight packed along K, qzeros = zero - 1 packed along N, w = s·(q - (z + 1)))
and compare with qpass's own dequantized weights, exactly."""
import json

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from qpass import Pipeline, models, passes
from qpass.cli.main import main
from qpass.errors import CheckpointError
from qpass.interop import export_gptq, read_source
from qpass.ir.qlinear import is_quantized_module


def _nibbles(words: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """Codes of int32 words packed `32/bits` per word along `axis`, lowest bits first."""
    per = 32 // bits
    w = words.astype(np.int64) & 0xFFFFFFFF
    parts = [(w >> (bits * j)) & ((1 << bits) - 1) for j in range(per)]
    st = np.stack(parts, axis=axis + 1)          # (..., words, per, ...)
    shape = list(words.shape)
    shape[axis] *= per
    return st.reshape(shape)


def _gptq_dequant(t: dict, name: str, bits: int) -> np.ndarray:
    q = _nibbles(t[f"{name}.qweight"], bits, axis=0)           # (K, N)
    z = _nibbles(t[f"{name}.qzeros"], bits, axis=1) + 1        # (G, N)
    g_idx = t[f"{name}.g_idx"].astype(np.int64)
    s = t[f"{name}.scales"].astype(np.float32)
    w = (q - z[g_idx]).astype(np.float32) * s[g_idx]
    return w.T                                                 # (N, K)


def _qpass_weights(compiled) -> dict:
    from qpass.models.naming import key_map
    to_hf = {d: s for s, d in key_map(compiled.config).items()}
    out = {}
    for name, m in compiled.gm.named_modules():
        if is_quantized_module(m):
            out[to_hf[name + ".weight"][:-7]] = m.dequantized_weight(torch.float32).numpy()
    return out


@pytest.fixture(scope="module")
def tiny():
    return models.load("tiny-llada")


def _run(model, scheme, lower=False):
    ps = [passes.FuseNorms(), passes.RTN()] + ([passes.Lower()] if lower else [])
    return Pipeline(ps, scheme=scheme).run(model, progress=False, verify=False)


@pytest.mark.parametrize("scheme,bits,group", [("w4a16g128", 4, 128), ("int4:g32:sym", 4, 32),
                                               ("w8a16", 8, -1)])
def test_gptq_round_trip_exact(tiny, tmp_path, scheme, bits, group):
    c = _run(tiny, scheme)
    out = export_gptq(read_source(c), tmp_path / "gptq", scale_dtype="float32")
    t = load_file(str(out / "model.safetensors"))
    cfg = json.loads((out / "config.json").read_text())
    qc = cfg["quantization_config"]
    assert qc["bits"] == bits and qc["group_size"] == group and qc["sym"] is True
    assert qc == json.loads((out / "quantize_config.json").read_text())
    want = _qpass_weights(c)
    assert len(want) == 6 * 7
    for name, w in want.items():
        got = _gptq_dequant(t, name, bits)
        np.testing.assert_array_equal(got, w, err_msg=name)
    # float tensors (embedding, norms, head) under their HF names, as qpass holds them
    sd = c.gm.state_dict()
    np.testing.assert_array_equal(t["model.transformer.wte.weight"], sd["embed.weight"].numpy())
    np.testing.assert_array_equal(t["model.transformer.ff_out.weight"], sd["head.weight"].numpy())


def test_fp16_scales_keep_codes(tiny, tmp_path):
    c = _run(tiny, "w4a16g128")
    out = export_gptq(read_source(c), tmp_path / "g16")
    t = load_file(str(out / "model.safetensors"))
    name = "model.transformer.blocks.0.q_proj"
    assert t[f"{name}.scales"].dtype == np.float16
    m = c.gm.get_submodule("blocks.0.q_proj")
    qw = m.quantized_weight()
    np.testing.assert_array_equal(_nibbles(t[f"{name}.qweight"], 4, 0).T, qw.codes().numpy())


def test_lowered_checkpoint_via_cli(tiny, tmp_path):
    c = _run(tiny, "w4a16g128", lower=True)
    c.save(tmp_path / "ck")
    assert main(["export", str(tmp_path / "ck"), "--format", "gptq", "--scale-dtype", "float32",
                 "--out", str(tmp_path / "out")]) == 0
    t = load_file(str(tmp_path / "out" / "model.safetensors"))
    ref = _qpass_weights(_run(tiny, "w4a16g128"))
    for name, w in ref.items():
        np.testing.assert_array_equal(_gptq_dequant(t, name, 4), w, err_msg=name)
    # an existing directory is never replaced
    assert main(["export", str(tmp_path / "ck"), "--format", "gptq",
                 "--out", str(tmp_path / "out")]) == 2


@pytest.mark.parametrize("scheme,why", [("w8a8", "weight-only"), ("int4:g128:asym", "asymmetric"),
                                        ("int3:g128:sym", "3-bit")])
def test_unrepresentable_schemes_refused(tiny, tmp_path, scheme, why):
    c = _run(tiny, scheme)
    with pytest.raises(CheckpointError, match=why):
        export_gptq(read_source(c), tmp_path / "x")
    assert not (tmp_path / "x").exists()

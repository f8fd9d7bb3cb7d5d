"""':f16scale': weight scales rounded to float16 before the codes are chosen with them (what
GGUF's fp16 block scales need), checked against a float64/numpy computation of the same rule."""
import numpy as np
import pytest
import torch

from qpass.errors import SpecError
from qpass.formats import QuantizedWeight
from qpass.passes.gptq import quantize_weight
from qpass.specs import QuantSpec


def test_parse_and_text_form():
    s = QuantSpec.parse("int4:g32:sym:f16scale")
    assert s.scale_dtype == "float16" and str(s) == "int4:g32:sym:f16scale"
    assert QuantSpec.parse(str(s)) == s
    assert QuantSpec.parse("int4:g32:sym").scale_dtype == "float32"
    assert "f16scale" not in str(QuantSpec.parse("int8:channel"))
    with pytest.raises(SpecError, match="per-token"):
        QuantSpec.parse("int8:token:dyn:f16scale")


@pytest.mark.parametrize("text", ["int4:g32:sym:f16scale", "int8:channel:f16scale",
                                  "int4:g32:restricted:f16scale"])
def test_codes_chosen_with_the_fp16_scale(text):
    spec = QuantSpec.parse(text)
    w = torch.randn(16, 128, generator=torch.Generator().manual_seed(0)) * 0.05
    q = QuantizedWeight.from_float(w, spec)
    # independent: absmax per group in float64, / divisor, rounded to fp16 by numpy
    g = spec.group_size if spec.granularity == "group" else 128
    wg = w.double().numpy().reshape(16, -1, g)
    s16 = (np.abs(wg).max(-1) / spec.sym_divisor).astype(np.float16).astype(np.float64)
    np.testing.assert_array_equal(q.scale.numpy(), s16.astype(np.float32))
    half = 1 << (spec.bits - 1)
    u = np.clip(np.round(wg / s16[..., None]), -half, half - 1) + half
    np.testing.assert_array_equal(q.codes().numpy(), u.reshape(16, 128).astype(np.uint8))


def test_zero_group_and_overflow():
    q = QuantizedWeight.from_float(torch.zeros(2, 32), "int4:g32:sym:f16scale")
    assert float(q.scale.min()) == 2.0 ** -24 and not q.dequantize().any()
    with pytest.raises(SpecError, match="65504"):
        QuantizedWeight.from_float(torch.full((1, 32), 1e6), "int4:g32:sym:f16scale")


def test_asymmetric_zero_from_the_fp16_scale():
    w = torch.rand(4, 64, generator=torch.Generator().manual_seed(1)) + 0.1
    q = QuantizedWeight.from_float(w, "int4:g32:asym:f16scale")
    assert torch.equal(q.scale.half().float(), q.scale)
    lo = np.minimum(w.double().numpy().reshape(4, 2, 32).min(-1), 0)
    z = np.clip(np.round(-lo / q.scale.double().numpy()), 0, 15)
    np.testing.assert_array_equal(q.zero.numpy(), z.astype(np.int32))


@pytest.mark.parametrize("act_order", [False, True, "group"])
def test_gptq_keeps_fp16_scales(act_order):
    gen = torch.Generator().manual_seed(2)
    W = torch.randn(32, 64, generator=gen)
    X = torch.randn(64, 256, generator=gen)
    _, info = quantize_weight(W, X @ X.T, "int4:g32:sym:f16scale", act_order=act_order)
    s = info.qweight.scale
    assert torch.equal(s.half().float(), s)

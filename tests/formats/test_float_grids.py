"""fp8 / nvfp4 / mxfp4 / mxfp8 grids (qpass/formats/floating.py): dequant(quant(x)) against a
brute-force nearest-value search in float64, the scale conventions against compressed-tensors'
own functions (bit for bit: what an export must hold), layouts, observers, QuantizedWeight's
state dict, and activations fake-quantized per token."""
import math

import pytest
import torch

from qpass.errors import CheckpointError, SpecError
from qpass.formats import (QuantizedWeight, compute_qparams, dequantize, fake_quantize,
                           float_qparams, quantize)
from qpass.formats.minifloat import E2M1, E4M3, decode, table
from qpass.specs import QuantSpec

WEIGHT_SPECS = ["fp8:channel", "fp8:tensor", "fp8:g64", "fp8:b128", "nvfp4", "mxfp4", "mxfp8"]


def weight(N=96, K=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(N, K, generator=g) * 0.05
    W[3, 7] = 1.9                               # an outlier
    W[5, 32:64] = 0.0                           # an all-zero block
    W[6, :16] *= 1e-6                           # a tiny one
    return W


def element_values(spec: QuantSpec) -> list[float]:
    fmt = E2M1 if spec.format in ("nvfp4", "mxfp4") else E4M3
    return [float(v) for v in table(fmt)[:fmt.max_code + 1].double()], fmt.max


def brute_dequant(x: torch.Tensor, s: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """y = x / s in float32 (one rounding), the nearest element value in float64 (ties: even
    magnitude code), saturated, times s in float32 — element by element, no vector tricks."""
    vals, top = element_values(spec)
    y = (x.float() / s.float()).double().flatten().tolist()
    out = []
    for v in y:
        a = min(abs(v), top)
        i = min(range(len(vals)), key=lambda j: (abs(vals[j] - a), j % 2))
        out.append(math.copysign(vals[i], v))
    q = torch.tensor(out, dtype=torch.float32).reshape(x.shape)
    return q * s.float()


def per_element_scale(qw: QuantizedWeight) -> torch.Tensor:
    """The effective scale of every weight element, expanded from its cell."""
    N, K = qw.shape
    s = qw.float_scale()
    spec = qw.spec
    if spec.granularity == "block":
        b = spec.group_size
        return s.repeat_interleave(b, 0)[:N].repeat_interleave(b, 1)[:, :K]
    return s.repeat_interleave(K // s.shape[1], 1).expand(N, K)


@pytest.mark.parametrize("spec", WEIGHT_SPECS + ["fp8:b64", "fp8:channel:mse",
                                                 "mxfp4:clip0.9"])
def test_dequant_quant_equals_brute_force_nearest_value(spec):
    W = weight(N=40 if "b" in spec else 24, K=192 if spec == "fp8:b128" else 128)
    qw = QuantizedWeight.from_float(W, spec)
    s = per_element_scale(qw)
    assert torch.equal(qw.dequantize(), brute_dequant(W, s, qw.spec))
    # the generic API agrees: codes from the effective scales, dequantized the same way
    scale, zero = compute_qparams(W, spec)
    assert torch.equal(scale, qw.float_scale())
    assert torch.equal(dequantize(quantize(W, spec, scale, zero), scale, zero, spec),
                       qw.dequantize())
    assert torch.equal(fake_quantize(W, spec), qw.dequantize())


def test_fp8_scales_are_amax_over_448_per_layout():
    W = weight(N=200, K=300)
    for spec, amax in [("fp8:channel", W.abs().amax(1, keepdim=True)),
                       ("fp8:tensor", W.abs().amax().reshape(1, 1)),
                       ("fp8:g60", W.abs().reshape(200, 5, 60).amax(-1))]:
        qw = QuantizedWeight.from_float(W, spec)
        want = (amax / torch.full_like(amax, 448.0)).clamp(min=torch.finfo(torch.float32).tiny)
        assert qw.scale.dtype == torch.float32 and torch.equal(qw.scale, want), spec
    qw = QuantizedWeight.from_float(W, "fp8:b128")          # 2 x 3 blocks, partial at the edges
    assert qw.scale.shape == (2, 3)
    assert float(qw.scale[1, 2]) == float(W[128:, 256:].abs().amax() / 448.0)
    with pytest.raises(SpecError, match="K=300"):
        QuantizedWeight.from_float(W, "fp8:g64")


def test_nvfp4_and_mx_match_compressed_tensors_bit_for_bit():
    """Scales, global scale, codes, dequantized weights and the packed bytes are what
    compressed-tensors 0.20 computes (calculate_qparams / generate_gparam / quantize /
    dequantize / pack_fp4_to_uint8 / generate_mx_scales)."""
    ct = pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors.nvfp4.helpers import pack_fp4_to_uint8
    from compressed_tensors.quantization.lifecycle.forward import dequantize as ct_dequant
    from compressed_tensors.quantization.lifecycle.forward import quantize as ct_quant
    from compressed_tensors.quantization.quant_scheme import (FP8_DYNAMIC, MXFP4A16,
                                                              NVFP4A16)
    from compressed_tensors.quantization.utils import calculate_qparams, generate_gparam
    from compressed_tensors.quantization.utils.mxfp_utils import generate_mx_scales
    assert ct.__version__.startswith("0.")
    W = weight(N=64, K=256)
    # nvfp4
    args = NVFP4A16["weights"]
    gs = generate_gparam(W.amin().reshape(1), W.amax().reshape(1))
    g = W.reshape(64, 16, 16)
    s, z = calculate_qparams(g.amin(-1), g.amax(-1), args, global_scale=gs)
    qw = QuantizedWeight.from_float(W, "nvfp4")
    assert qw.global_scale.shape == (1,) and torch.equal(qw.global_scale, gs)
    assert qw.scale.dtype == torch.uint8 and torch.equal(qw.scale.view(torch.float8_e4m3fn),
                                                         s.to(torch.float8_e4m3fn))
    assert torch.equal(decode(qw.scale, E4M3), s)
    x_q = ct_quant(W, s, z, args, global_scale=gs)
    assert torch.equal(qw.dequantize(),
                       ct_dequant(x_q, s, z, args=args, global_scale=gs, dtype=torch.float32))
    assert torch.equal(qw.packed.view(torch.uint8), pack_fp4_to_uint8(x_q))
    # mxfp4 (E8M0 exponents with compressed-tensors' round-up at mantissa >= 1.75)
    args = MXFP4A16["weights"]
    g = W.reshape(64, 8, 32)
    s, z = calculate_qparams(g.amin(-1), g.amax(-1), args)
    qw = QuantizedWeight.from_float(W, "mxfp4")
    e = generate_mx_scales(g.abs().amax(-1), 4).clamp(0, 254)
    assert torch.equal(qw.scale.float(), e) and torch.equal(qw.float_scale(), s)
    x_q = ct_quant(W, s, z, args)
    assert torch.equal(qw.dequantize(), ct_dequant(x_q, s, z, args=args, dtype=torch.float32))
    # mxfp8: the same exponent rule, E4M3 elements
    qw = QuantizedWeight.from_float(W, "mxfp8")
    assert torch.equal(qw.scale.float(), generate_mx_scales(g.abs().amax(-1), 8).clamp(0, 254))
    # fp8 per channel (FP8_DYNAMIC's weights)
    args = FP8_DYNAMIC["weights"]
    s, z = calculate_qparams(W.amin(1, keepdim=True), W.amax(1, keepdim=True), args)
    qw = QuantizedWeight.from_float(W, "fp8:channel")
    assert torch.equal(qw.scale, s)
    x_q = ct_quant(W, s, z, args)
    assert torch.equal(qw.codes().view(torch.float8_e4m3fn).float(), x_q.float())
    assert torch.equal(qw.dequantize(), ct_dequant(x_q, s, z, args=args, dtype=torch.float32))


def test_mx_exponent_rule_at_the_binade_edges():
    """e = floor(log2 amax) + [mantissa >= 1.75] − emax(element): 1.74·2^k keeps k, 1.75·2^k
    and 1.99·2^k go up (so the block max is never clipped by more than a quarter binade)."""
    for mant, up in [(1.0, 0), (1.5, 0), (1.74, 0), (1.75, 1), (1.99, 1)]:
        for k in (-3, 0, 5):
            amax = mant * 2.0 ** k
            W = torch.zeros(1, 32)
            W[0, 3] = -amax
            for spec, emax in (("mxfp4", 2), ("mxfp8", 8)):
                qw = QuantizedWeight.from_float(W, spec)
                assert int(qw.scale) - 127 == k + up - emax, (mant, k, spec)
    assert int(QuantizedWeight.from_float(torch.zeros(2, 32), "mxfp4").scale[0, 0]) == 0


def test_nvfp4_zero_blocks_and_tensors():
    W = weight(N=8, K=64)
    qw = QuantizedWeight.from_float(W, "nvfp4")
    zero_block = decode(qw.scale, E4M3)[5, 2]              # W[5, 32:48] == 0
    assert float(zero_block) == 0.125 and (qw.dequantize()[5, 32:64] == 0).all()
    qz = QuantizedWeight.from_float(torch.zeros(4, 32), "nvfp4")
    assert float(qz.global_scale) == 1.0 and (qz.dequantize() == 0).all()


def test_observers_and_clip():
    W = weight(N=32, K=128)
    for fmt in ("fp8:channel", "nvfp4", "mxfp4", "mxfp8"):
        base = QuantizedWeight.from_float(W, fmt)
        mse = QuantizedWeight.from_float(W, fmt + ":mse")
        e_base = (base.dequantize() - W).pow(2).sum()
        e_mse = (mse.dequantize() - W).pow(2).sum()
        assert e_mse <= e_base, fmt
    clipped = QuantizedWeight.from_float(W, "fp8:channel:clip0.5")
    assert torch.equal(clipped.scale, QuantizedWeight.from_float(W, "fp8:channel").scale * 0.5)


@pytest.mark.parametrize("spec", ["fp8:token:dyn", "nvfp4:token:dyn", "mxfp4:token:dyn",
                                  "mxfp8:token:dyn", "fp8:tensor"])
def test_activation_fake_quant_per_token(spec):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 7, 64, generator=g)
    x[0, 3] *= 50.0                                           # one loud token
    y = fake_quantize(x, spec)
    assert y.shape == x.shape and y.dtype == x.dtype
    if "token" in spec:      # per token: each row is quantized alone (batch-invariant)
        rows = torch.stack([fake_quantize(r[None], spec)[0] for r in x.reshape(-1, 64)])
        assert torch.equal(y.reshape(-1, 64), rows)
        fs = float_qparams(x, spec)
        if spec.startswith("nvfp4"):
            assert fs.global_scale.shape == (14, 1)
            amax = x.reshape(-1, 64).abs().amax(-1, keepdim=True)
            assert torch.equal(fs.global_scale, 2688.0 / amax)     # torch's own rounding
    # float64 input is computed in float64 and stays float64
    assert fake_quantize(x.double(), spec).dtype == torch.float64
    rel = float((y - x).norm() / x.norm())
    assert rel < (0.04 if "fp8" in spec else 0.15), (spec, rel)
    # a static scale (what ObserveActivations calibrates for fp8:tensor) is used as given
    s = torch.tensor([[0.5]])
    if spec == "fp8:tensor":
        assert torch.equal(fake_quantize(x, spec, s), (x / 0.5).clamp(-448, 448)
                           .to(torch.float8_e4m3fn).float() * 0.5)


@pytest.mark.parametrize("spec", WEIGHT_SPECS)
def test_state_dict_round_trip_and_checks(spec):
    W = weight(N=40, K=128)
    qw = QuantizedWeight.from_float(W, spec)
    sd = qw.state_dict("blocks.0.q_proj")
    assert set(sd) >= {"blocks.0.q_proj.qweight", "blocks.0.q_proj.scales"}
    assert ("blocks.0.q_proj.global_scale" in sd) == (spec == "nvfp4")
    back = QuantizedWeight.from_state_dict(sd, "blocks.0.q_proj", spec, (40, 128))
    assert torch.equal(back.dequantize(), qw.dequantize())
    assert qw.nbytes() == sum(t.numel() * t.element_size() for t in sd.values())
    bad = dict(sd)
    bad["blocks.0.q_proj.scales"] = sd["blocks.0.q_proj.scales"].to(torch.float64)
    with pytest.raises(CheckpointError, match="scales"):
        QuantizedWeight.from_state_dict(bad, "blocks.0.q_proj", spec, (40, 128))
    if spec == "nvfp4":
        bad = dict(sd)
        del bad["blocks.0.q_proj.global_scale"]
        with pytest.raises(CheckpointError, match="global_scale"):
            QuantizedWeight.from_state_dict(bad, "blocks.0.q_proj", spec, (40, 128))


def test_storage_cost():
    W = weight(N=256, K=768)
    nb = {s: QuantizedWeight.from_float(W, s).nbytes() for s in WEIGHT_SPECS}
    assert nb["nvfp4"] == 256 * 768 // 2 + 256 * 48 + 4           # codes + E4M3 scales + global
    assert nb["mxfp4"] == 256 * 768 // 2 + 256 * 24
    assert nb["fp8:channel"] == 256 * 768 + 256 * 4
    assert nb["mxfp8"] == 256 * 768 + 256 * 24

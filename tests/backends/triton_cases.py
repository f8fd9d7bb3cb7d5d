"""Triton kernels under TRITON_INTERPRET=1 (run by test_triton_interpret.py in a subprocess so
the interpreter setting never leaks into other tests). Integer paths must be bit-exact against
the reference backend; float paths within fp16/fp32 tolerance against float64. Shapes stay
tiny (M, N, K <= 64): the interpreter is slow."""
import os

import pytest
import torch

from interpreter_cases import rel, require_interpreter  # noqa: E402,F401

require_interpreter()

import qpass  # noqa: E402
import qpass.backends.op_schemas  # noqa: E402,F401
from qpass import formats, hadamard  # noqa: E402
from qpass.backends import registry  # noqa: E402

ops = torch.ops.qpass


def test_triton_is_selected_under_the_interpreter():
    b = registry.select("linear_w8a8", "cpu", {"K": 64, "N": 48}, torch.float32)
    assert b.name == "triton"
    # shapes the kernels decline fall back to the reference with the reason
    b, skipped = registry.explain("hadamard", "cpu", {"n": 96}, torch.float32)
    assert b.name == "reference" and "96" in dict(skipped)["triton"]


@pytest.mark.parametrize("spec", ["int4:g32:sym", "int3:g32:asym", "int8:channel", "int2:channel:asym"])
def test_w4a16_float_paths(spec):
    torch.manual_seed(0)
    x, w, bias = torch.randn(2, 9, 64), torch.randn(40, 64), torch.randn(40)
    qw = formats.QuantizedWeight.from_float(w, spec)
    gs = qw.spec.group_size or 64
    scales = qw.scale.expand(40, -1).contiguous()
    zeros = None if qw.zero is None else qw.zero.expand(40, -1).contiguous()
    ref = torch.nn.functional.linear(x.double(), qw.dequantize(torch.float64), bias.double())
    y32 = ops.linear_w4a16(x, qw.packed, scales, zeros, qw.spec.bits, gs, bias, "triton")
    assert y32.shape == (2, 9, 40) and rel(y32, ref) < 1e-5
    y16 = ops.linear_w4a16(x.half(), qw.packed, scales, zeros, qw.spec.bits, gs, bias, "triton")
    assert y16.dtype == torch.float16 and rel(y16, ref) < 2e-3


def test_integer_linears_bit_exact_vs_reference():
    torch.manual_seed(1)
    x, w, bias = torch.randn(21, 64), torch.randn(48, 64), torch.randn(48)
    q8 = formats.QuantizedWeight.from_float(w, "int8:channel")
    w8 = formats.to_signed(q8.codes(), 8)
    for grid in ("full", "restricted"):
        assert torch.equal(ops.linear_w8a8(x, w8, q8.scale, bias, "triton", grid),
                           ops.linear_w8a8(x, w8, q8.scale, bias, "reference", grid))
    for spec, gs in (("int4:channel", 0), ("int4:g32:sym", 32), ("int4:g32:sym:restricted", 32)):
        q4 = formats.QuantizedWeight.from_float(w, spec)
        for op in (ops.linear_w4a8, ops.linear_w4a4):
            for grid in ("full", "restricted"):
                t = op(x, q4.packed, q4.scale, bias, gs, "triton", grid)
                r = op(x, q4.packed, q4.scale, bias, gs, "reference", grid)
                assert torch.equal(t, r), (spec, op, grid)


def test_quant_per_token_bit_exact_including_ties():
    x = torch.randn(7, 64)
    x[0, :4] = torch.tensor([127.0, 0.5, 1.5, -2.5])   # exact .5 ties: round half to even
    x[1] = 0.0                                         # all-zero row: scale floor
    x[2, :2] = torch.tensor([-7.5, 7.5])               # full grid at 4 bits: s = 1, ±absmax ties
    for bits in (8, 4):
        for grid in ("full", "restricted"):
            qt, st = ops.quant_per_token(x, bits, False, None, "triton", grid)
            qr, sr = ops.quant_per_token(x, bits, False, None, "reference", grid)
            assert torch.equal(qt, qr) and torch.equal(st, sr), (bits, grid)
    q, s = ops.quant_per_token(x, 4, False, None, "triton", "full")
    assert float(s[2]) == 1.0 and q[2, :2].tolist() == [-8, 7]


def test_hadamard_and_fused_quant():
    torch.manual_seed(2)
    x = torch.randn(3, 256)
    s = hadamard.random_signs(256, 0)
    ref = hadamard.transform(x.double(), signs=s)
    assert rel(ops.hadamard(x, s.float(), "triton"), ref) < 1e-6
    assert rel(ops.hadamard(x, None, "triton"), hadamard.transform(x.double())) < 1e-6
    qt, st = ops.quant_per_token(x, 4, True, s.float(), "triton")
    qr, sr = ops.quant_per_token(x, 4, True, s.float(), "reference")
    # transforms round differently in fp32: a code may move by one at a rounding boundary
    assert (qt.int() - qr.int()).abs().max() <= 1 and (qt != qr).float().mean() < 0.02
    assert torch.allclose(st, sr, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_vs_float64(causal):
    torch.manual_seed(3)
    q, k, v = torch.randn(1, 4, 20, 16), torch.randn(1, 2, 20, 16), torch.randn(1, 2, 20, 16)
    km = torch.ones(1, 20, dtype=torch.bool)
    km[0, :3] = False
    ref = ops.attention(q.double(), k.double(), v.double(), km, causal, False, "reference")
    assert rel(ops.attention(q, k, v, km, causal, False, "triton"), ref) < 1e-5
    assert rel(ops.attention(q.half(), k.half(), v.half(), km, causal, False, "triton"), ref) < 3e-3
    t8 = ops.attention(q, k, v, km, causal, True, "triton")
    r8 = ops.attention(q, k, v, km, causal, True, "reference")
    assert rel(t8, r8) < 1e-5 and rel(t8, ref) < 3e-2


def _window_qkv(seed, pad_row):
    """Queries of a 9-row cache window over 30 keys (GQA 4/2 heads), some keys padded."""
    torch.manual_seed(seed)
    q, k, v = torch.randn(2, 4, 9, 16), torch.randn(2, 2, 30, 16), torch.randn(2, 2, 30, 16)
    km = torch.ones(2, 30, dtype=torch.bool)
    km[pad_row, :5] = False
    return q, k, v, km


def test_attention_over_a_cache_window():
    """L_q < L_k: the query rows of a K/V-cache window against the whole sequence."""
    q, k, v, km = _window_qkv(4, 1)
    ref = ops.attention(q.double(), k.double(), v.double(), km, False, False, "reference")
    assert rel(ops.attention(q, k, v, km, False, False, "triton"), ref) < 1e-5
    assert rel(ops.attention(q, k, v, None, False, False, "triton"),
               ops.attention(q.double(), k.double(), v.double(), None, False, False,
                             "reference")) < 1e-5


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_kv_attention_vs_reference(bits):
    q, k, v, km = _window_qkv(5, 0)
    kc, ks = ops.quant_per_token(k, bits, False, None, "triton")
    vc, vs = ops.quant_per_token(v, bits, False, None, "triton")
    rc, rs = formats.quantize_kv(k, bits)
    assert torch.equal(kc, rc) and torch.equal(ks, rs)     # the cache codes are the same
    got = ops.attention_kv(q, kc, ks, vc, vs, km, "triton")
    want = ops.attention_kv(q, kc, ks, vc, vs, km, "reference")
    assert rel(got, want) < 1e-4
    exact = ops.attention(q.double(), k.double(), v.double(), km, False, False, "reference")
    assert rel(got, exact) < (3e-2 if bits == 8 else 2.5e-1)


SAVE_SCRIPT = """
import sys, torch, qpass
from qpass import passes as P
from qpass.models import Denoiser, init_weights, tiny_llada
m = init_weights(Denoiser(tiny_llada()), seed=7).eval()
c = qpass.Pipeline([P.RTN('w8a8kv8'), P.Lower()]).run(m, progress=False)
c.save(sys.argv[1])
x = torch.randint(0, 90, (2, 12), generator=torch.Generator().manual_seed(0))
with torch.no_grad():
    torch.save({'x': x, 'logits': c(x)}, sys.argv[2])
"""


def test_checkpoint_saved_on_reference_rebinds_to_triton(tmp_path):
    """Saved where only the reference backend runs (no interpreter, no CUDA), loaded here
    where Triton runs: load_compiled(device=) binds Triton kernels, same logits."""
    import json
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    d, ref = tmp_path / "ckpt", tmp_path / "ref.pt"
    subprocess.run([sys.executable, "-c", SAVE_SCRIPT, str(d), str(ref)], env=env, check=True,
                   timeout=300)
    saved = json.loads((d / "manifest.json").read_text())
    lower = [p for p in saved["report"]["passes"] if p["name"] == "Lower"][0]
    assert {r["backend"] for r in lower["metrics"]["kernels"]} == {"reference"}
    m = qpass.load_compiled(d, device="cpu")
    bound = {r["op"]: r["backend"] for r in m.kernels}
    # o_proj (fed by attention) quantizes its input itself; the other linears get codes from
    # their fused producer (RMSNorm / silu·mul)
    assert bound == {"linear_w8a8": "triton", "attention_kv": "triton",
                     "linear_int_codes": "triton", "rmsnorm_quant": "triton",
                     "silu_mul_quant": "triton"}
    qpass.backends.op_schemas.reset_kernel_calls()
    want = torch.load(ref)
    with torch.no_grad():
        got = m(want["x"])
    ran = {(op, b) for op, b, _ in qpass.backends.op_schemas.kernel_calls()}
    assert ran == {("linear_w8a8", "triton"), ("attention_kv", "triton"),
                   ("quant_per_token", "triton"), ("linear_int_codes", "triton"),
                   ("rmsnorm_quant", "triton"), ("silu_mul_quant", "triton")}
    assert rel(got, want["logits"]) < 1e-4

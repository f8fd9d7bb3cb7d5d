"""The Triton kernels refuse operands that do not fit together (issue 25, part 3) under
TRITON_INTERPRET=1, run by test_triton_interpret.py in a subprocess. Before the checks, the
W4A16 kernel given a 1-element bias for 256 outputs read 255 floats past its end (garbage in
the output under the interpreter, an out-of-bounds device read on a GPU)."""
import pytest
import torch

from interpreter_cases import require_interpreter

require_interpreter()

import qpass.backends.op_schemas  # noqa: E402,F401
from bound_cases import LIES, lying, valid  # noqa: E402
from qpass import formats  # noqa: E402
from qpass.backends import triton as T  # noqa: E402
from qpass.backends.triton import fused_quant, gemm_int, quant  # noqa: E402
from qpass.backends.triton.attention import flash_attention  # noqa: E402
from qpass.backends.triton.attention_kv import kv_attention  # noqa: E402
from qpass.backends.triton.gemm_w4a16 import w4a16_gemm  # noqa: E402
from qpass.backends.triton.gemm_w4a16_mma import w4a16_mma  # noqa: E402
from qpass.backends.triton.w4_layout import repack  # noqa: E402
from qpass.errors import BackendError  # noqa: E402

ops = torch.ops.qpass


@pytest.mark.parametrize("bits", [4, 3])
def test_w4a16_refuses_a_short_bias_instead_of_reading_past_it(bits):
    torch.manual_seed(0)
    N, K = 256, 64
    qw = formats.QuantizedWeight.from_float(torch.randn(N, K), f"int{bits}:g32:asym")
    x, bias = torch.randn(3, K), torch.randn(N)
    args = (x, qw.packed, qw.scale.contiguous(), qw.zero.contiguous(), bits, 32)
    good = ops.linear_w4a16(*args, bias, "triton")            # the repacked (4) / canonical (3) kernel
    assert torch.isfinite(good).all()
    with pytest.raises(BackendError, match="bias"):
        ops.linear_w4a16(*args, bias[:1].clone(), "triton")


@pytest.mark.parametrize("lie", sorted(LIES))
def test_triton_kernel_refuses_lying_operands(lie):
    op, args, named = lying(lie)
    with pytest.raises(BackendError, match=named):
        T.TritonBackend.kernels[op](*args)        # the kernel the registry would run


def test_launchers_check_their_own_operands():
    a = valid("linear_w4a16")
    x, q, s, z, b = a["x"], a["qweight"], a["scales"], a["zeros"], a["bias"]
    with pytest.raises(BackendError, match="bias"):
        w4a16_gemm(x, q, s, z, 4, 32, b[:1].clone())
    with pytest.raises(BackendError, match="x"):
        w4a16_gemm(x.t(), q, s, z, 4, 32, b)                   # column stride != 1
    r = repack(q, s, z, 64)
    with pytest.raises(BackendError, match="bias"):
        w4a16_mma(x, r, b[:1].clone())
    with pytest.raises(BackendError, match="K=64"):
        w4a16_mma(torch.randn(3, 96), r, b)                    # a weight repacked for another K
    c = valid("linear_int_codes")
    with pytest.raises(BackendError, match="bias"):
        gemm_int.int_gemm(c["xq"], c["xs"], c["qweight"], c["w_scales"], c["bias"][:1].clone(),
                          torch.float32, 4, 32)
    with pytest.raises(BackendError, match="w_scales"):     # 64-groups: one scale per row
        gemm_int.int_gemm(c["xq"], c["xs"], c["qweight"], c["w_scales"], c["bias"],
                          torch.float32, 4, 64)
    with pytest.raises(BackendError, match="x"):
        quant.quant_rows(torch.randn(2, 3, 64), 8)
    with pytest.raises(BackendError, match="n=96"):
        quant.hadamard_rows(torch.randn(3, 96), None, None)
    with pytest.raises(BackendError, match="norm weight"):
        fused_quant.rmsnorm_quant_rows(torch.randn(3, 64), torch.ones(8), 1e-5, 8, "full")
    with pytest.raises(BackendError, match="up"):
        fused_quant.silu_mul_quant_rows(torch.randn(3, 64), torch.randn(2, 64), 8, "full")
    at = valid("attention")
    with pytest.raises(BackendError, match="head dims"):
        flash_attention(*(t[..., :12].contiguous() for t in (at["q"], at["k"], at["v"])), None,
                        False, False)
    kv = valid("attention_kv")
    with pytest.raises(BackendError, match="v_scales"):
        kv_attention(kv["q"], kv["k_codes"], kv["k_scales"], kv["v_codes"],
                     kv["v_scales"][:, :1].contiguous(), kv["key_mask"])

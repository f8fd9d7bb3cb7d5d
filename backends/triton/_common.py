"""Shared bits of the Triton backend: import guard, launch helpers, autotune config lists.

Autotune configs cover Hopper (sm_90: large tiles, 3–4 stages, 8 warps) and Ampere (sm_80:
smaller tiles, fewer stages); the interpreter gets one tiny config so CPU tests stay fast."""
from __future__ import annotations

import os

try:
    import triton
    import triton.language as tl
    HAVE_TRITON, IMPORT_ERROR = True, ""
except Exception as e:  # pragma: no cover - depends on the platform
    triton = tl = None
    HAVE_TRITON, IMPORT_ERROR = False, repr(e)

# kernels may only read globals that are tl.constexpr
_constexpr = tl.constexpr if HAVE_TRITON else (lambda v: v)
ROUND_MAGIC = _constexpr(12582912.0)   # 1.5·2^23: (v + M) − M rounds |v| < 2^22 half-to-even
SCALE_FLOOR = _constexpr(1.1754943508222875e-38)   # formats.SCALE_FLOOR (float32 tiny)


if HAVE_TRITON:
    @triton.jit
    def split_k_epilogue(acc, bias_ptr, c_ptr, ws_ptr, rm, rn, mask_m, mask_n, stride_cm, pid_k,
                         HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr):
        """Float GEMM epilogue: + bias (once, by the first K split), then a store in the output
        dtype, or with split-K an fp32 atomic add into the zeroed workspace."""
        if HAS_BIAS:
            if pid_k == 0:
                acc += tl.load(bias_ptr + rn, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        offs = rm[:, None] * stride_cm + rn[None, :]
        cmask = mask_m[:, None] & mask_n[None, :]
        if SPLIT_K == 1:
            tl.store(c_ptr + offs, acc.to(c_ptr.dtype.element_ty), mask=cmask)
        else:
            tl.atomic_add(ws_ptr + offs, acc, mask=cmask)
else:  # pragma: no cover - depends on the platform
    split_k_epilogue = None


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def configs(full: list[dict], tiny: dict) -> list:
    """triton.Config list: the full sweep on a GPU, one small config under the interpreter.
    QPASS_TRITON_AUTOTUNE=0 keeps only the first and last configs (fast correctness runs)."""
    rows = [tiny] if interpreting() else full
    if os.environ.get("QPASS_TRITON_AUTOTUNE", "1") == "0" and len(rows) > 2:
        rows = [rows[0], rows[-1]]
    out = []
    for r in rows:
        r = dict(r)
        warps, stages = r.pop("num_warps", 4), r.pop("num_stages", 3)
        out.append(triton.Config(r, num_warps=warps, num_stages=stages))
    return out


def hadamard_split(n: int) -> tuple[int, int] | None:
    """(A, B) with A·B = n, both powers of two in [16, 128], or None."""
    if n <= 0 or n & (n - 1):
        return None
    for a in (16, 32, 64, 128):
        b = n // a
        if a * b == n and 16 <= b <= 128 and b >= a:
            return a, b
    return None

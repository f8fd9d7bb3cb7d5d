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

    @triton.jit
    def grouped_tile(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
        """(rows, columns) of this program's output tile in grouped ordering: neighbouring
        programs share B tiles in L2."""
        pid = tl.program_id(0)
        num_m, num_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
        per_group = GROUP_M * num_n
        first_m = (pid // per_group) * GROUP_M
        size_m = tl.minimum(num_m - first_m, GROUP_M)
        pid_m = first_m + (pid % per_group) % size_m
        pid_n = (pid % per_group) // size_m
        return pid_m * BLOCK_M + tl.arange(0, BLOCK_M), pid_n * BLOCK_N + tl.arange(0, BLOCK_N)

    @triton.jit
    def nibble_tile(q_ptr, rn, mask_n, stride_qn, k0, K, BLOCK_K: tl.constexpr,
                    BLOCK_N: tl.constexpr):
        """(BLOCK_K, BLOCK_N) int32 codes k0 .. k0+BLOCK_K of the canonical packed 4-bit stream
        (code k at bits 4·(k mod 8) of word k/8): one load per word (BK/8, BN), 8 nibbles
        each in registers; (BK/8, 8, BN) -> (BK, BN) keeps k = 8·word + nibble."""
        rw = k0 // 8 + tl.arange(0, BLOCK_K // 8)
        words = tl.load(q_ptr + rn[None, :] * stride_qn + rw[:, None],
                        mask=mask_n[None, :] & (rw < (K + 7) // 8)[:, None], other=0)
        nib = (words[:, None, :] >> (tl.arange(0, 8) * 4)[None, :, None]) & 0xF
        return tl.reshape(nib, (BLOCK_K, BLOCK_N))

    @triton.jit
    def rows_absmax(x_ptr, rm, mask_m, stride_xm, K, BLOCK_M: tl.constexpr,
                    BLOCK_K: tl.constexpr):
        """|x|max over K of rows rm, in fp32, in chunks of BLOCK_K."""
        rk = tl.arange(0, BLOCK_K)
        amax = tl.zeros((BLOCK_M,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + rk
            x = tl.load(x_ptr + rm[:, None] * stride_xm + kk[None, :],
                        mask=mask_m[:, None] & (kk < K)[None, :], other=0.0).to(tl.float32)
            amax = tl.maximum(amax, tl.max(tl.abs(x), axis=1))
        return amax
else:  # pragma: no cover - depends on the platform
    split_k_epilogue = grouped_tile = nibble_tile = rows_absmax = None


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

"""Coordinate-descent refinement of GPTQ's codes on the objective GPTQ itself minimizes.

GPTQ decides each column once, greedily (Babai's nearest plane on the lattice of H): a column's
code never sees the columns decided after it. A sweep of exact coordinate descent revisits
every column with all others fixed and moves it to the grid point that minimizes

    f(Q) = tr((W − Q) Hd (W − Q)ᵀ),   Hd = H + λI (λ: the damping GPTQ used),

which for one column is a 1-D convex quadratic per row: its minimizer over the whole line is
q + G_j / Hd_jj (G = (W − Q)·Hd), and the best grid point is that value rounded and clamped, so
no step can raise f (the current code is one of the candidates). Group scales and zeros stay as
GPTQ fixed them: only codes change, the grid and the packed layout are the same (QuantEase,
Behdin et al. 2023, is the same idea with a different update schedule).

Cost. The first sweep starts from GPTQ's own state: with Hd = A·Aᵀ (A = Ã·diag(a), the
solve's factor) and the solve's scaled errors E = R·A, the gradient is G = R·Hd = E·Aᵀ, a triangular product (half of R·Hd). The
columns a sweep has already moved change G by ΔR·Hd; one sweep moves only a few percent of the
codes, so ΔR is kept per block as a sparse matrix (CSR on CPU) and that correction costs a
fraction of a dense product. Later sweeps take G = R·Hd per block. Inside a block, rank-1
updates within 32-column slabs as in the solve. The damped objective matters: with fewer
calibration tokens than inputs H is rank-deficient, and descent on the undamped objective
would move codes along directions no calibration token sees.
"""
from __future__ import annotations

import warnings

import torch

# torch marks CSR as beta; the two ops used here (to_sparse_csr, addmm with a CSR left factor)
# are checked, in both the CSR and the dense form, against a brute-force sweep in
# tests/passes/test_gptq_refine.py
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")

SUB = 32       # columns per rank-1 slab; a slab's changes reach the rest of its block by one GEMM
SPARSE_MAX_DENSITY = 0.3   # above it a dense product is faster than CSR (measured at 4096²)


def _moved(D: torch.Tensor) -> torch.Tensor:
    """A block's residual changes D (B, N) as the (N, B) left factor of its correction product:
    CSR when few codes moved (CPU), else dense."""
    Dt = D.t()
    if D.device.type != "cpu":
        return Dt.contiguous()
    nnz = int(torch.count_nonzero(D))
    if nnz > SPARSE_MAX_DENSITY * D.numel():
        return Dt.contiguous()
    return Dt.contiguous().to_sparse_csr()


def refine_walk(RT: torch.Tensor, CT: torch.Tensor, ET: torch.Tensor, A: torch.Tensor,
                Hd: torch.Tensor, col_group: list[int], s_rows, z_rows, snap_, sweeps: int,
                block: int = 128) -> float:
    """Refine the codes CT (K, N, floats) and residuals RT = Wᵀ − (CT − z)·s (K, N), all in the
    walk order of Hd (K, K), in place. A, ET: the solve's unit factor Ã (Hd = Ã·diag(a)²·Ãᵀ)
    and its errors scaled by a² (so that R·Hd = ET'·Ãᵀ), read by the first sweep. s_rows/z_rows:
    per group (N,) scale and zero rows; col_group: the group of each walk column; snap_(t):
    a code-scale value to the nearest grid point, in place (passes/_gptq_grid.py). Returns the
    decrease of f."""
    K, N = RT.shape
    dvec = torch.diagonal(Hd)
    inv_d = (1.0 / dvec).tolist()
    tmp = torch.empty(N, dtype=RT.dtype, device=RT.device)
    delta = torch.empty(min(block, K), N, dtype=RT.dtype, device=RT.device)
    c_rows, r_rows = CT.unbind(0), RT.unbind(0)
    gain = torch.zeros((), dtype=torch.float64, device=RT.device)
    for sweep in range(sweeps):
        moved = []                                          # (start, end, ΔR of that block)
        for i1 in range(0, K, block):
            i2 = min(i1 + block, K)
            if sweep == 0:      # G = R·Hd at the solve's state, then this sweep's moves
                GT = A[i1:i2, i1:] @ ET[i1:]
                if moved:
                    corr = torch.zeros(N, i2 - i1, dtype=RT.dtype, device=RT.device)
                    for b1, b2, M in moved:
                        corr.addmm_(M, Hd[b1:b2, i1:i2])
                    GT += corr.t()
            else:
                GT = Hd[i1:i2] @ RT                         # this block's gradients, current
            D = delta[:i2 - i1]
            for j1 in range(i1, i2, SUB):
                j2 = min(j1 + SUB, i2)
                for col in range(j1, j2):
                    k, s, u, e = col - i1, s_rows[col_group[col]], c_rows[col], D[col - i1]
                    # the column's minimizer q + G_j/d on the code scale, to the nearest grid point
                    snap_(torch.addcdiv(u, GT[k], s, value=inv_d[col], out=tmp))
                    torch.sub(u, tmp, out=e).mul_(s)        # change of the residual w − q
                    u.copy_(tmp)
                    r_rows[col].add_(e)
                    if col + 1 < j2:
                        GT[k + 1:j2 - i1].addr_(Hd[col + 1:j2, col], e)
                if j2 < i2:
                    GT[j2 - i1:].addmm_(Hd[j2:i2, j1:j2], D[j1 - i1:j2 - i1])
            # f(r + e) − f(r) = 2 e·G_j + d e·e per column (≤ 0 by construction); a row of GT
            # is not touched after its column was decided, so it still holds that G_j
            gain -= 2.0 * (D * GT).sum(dtype=torch.float64) + \
                (D.square().sum(1, dtype=torch.float64) * dvec[i1:i2]).sum()
            if sweep == 0 and i2 < K:
                moved.append((i1, i2, _moved(D)))
    return float(gain)

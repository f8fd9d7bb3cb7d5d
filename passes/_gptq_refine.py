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

Cost of a sweep: one (B, K)·(K, N) product per block of B columns for the block's gradients
(N·K² in all, about GPTQ's own matmul work), plus rank-1 updates inside sub-blocks. The damped
objective matters: with fewer calibration tokens than inputs H is rank-deficient, and descent
on the undamped objective would move codes along directions no calibration token sees.
"""
from __future__ import annotations

import torch

SUB = 32       # columns per rank-1 slab; a slab's changes reach the rest of its block by one GEMM


def refine_walk(WT: torch.Tensor, QT: torch.Tensor, CT: torch.Tensor, Hd: torch.Tensor,
                col_group: list[int], s_rows, z_rows, top: float, sweeps: int,
                block: int = 128) -> float:
    """Refine the codes CT (K, N) and dequantized columns QT (K, N) of the original weights WT
    (K, N), all in the walk order of Hd (K, K), in place. s_rows/z_rows: per group (N,) scale
    and zero rows; col_group: the group of each walk column. Returns the decrease of f."""
    K, N = WT.shape
    RT = WT - QT                                            # residuals, one row per column
    d = torch.diagonal(Hd).tolist()
    tmp = torch.empty(N, dtype=WT.dtype, device=WT.device)
    delta = torch.empty(min(block, K), N, dtype=WT.dtype, device=WT.device)
    q_rows, c_rows, r_rows = QT.unbind(0), CT.unbind(0), RT.unbind(0)
    gain = torch.zeros((), dtype=torch.float64, device=WT.device)
    for _ in range(sweeps):
        for i1 in range(0, K, block):
            i2 = min(i1 + block, K)
            GT = Hd[i1:i2] @ RT                             # this block's gradients, current
            D = delta[:i2 - i1]
            for j1 in range(i1, i2, SUB):
                j2 = min(j1 + SUB, i2)
                for col in range(j1, j2):
                    g, k = col_group[col], col - i1
                    s, z, q, e = s_rows[g], z_rows[g], q_rows[col], D[k]
                    grad = GT[k]
                    # the column's minimizer q + G_j/d, rounded onto its group's grid
                    torch.div(grad, d[col], out=tmp).add_(q).div_(s).round_().add_(z).clamp_(0.0, top)
                    c_rows[col].copy_(tmp)
                    tmp.sub_(z).mul_(s)
                    torch.sub(q, tmp, out=e)                # change of the residual w − q
                    # f(r + e) − f(r) = 2 e·G_j + d e·e  (≤ 0 by construction)
                    gain -= (2.0 * torch.dot(e, grad) + d[col] * torch.dot(e, e)).double()
                    q.copy_(tmp)
                    r_rows[col].add_(e)
                    if col + 1 < j2:
                        GT[k + 1:j2 - i1].addr_(Hd[col + 1:j2, col], e)
                if j2 < i2:
                    GT[j2 - i1:].addmm_(Hd[j2:i2, j1:j2], D[j1 - i1:j2 - i1])
    return float(gain)

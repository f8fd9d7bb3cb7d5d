"""GPTQ's column solve over Wᵀ, from a factored Hessian (the math: passes/_gptq_math.py).

quantize_weight (passes/_gptq_math.py) checks its arguments and factors H, then hands over:
`plan_walk` decides where the groups take their parameters and how long a block is,
`ColumnSolve` holds Wᵀ in walk order and runs the left-looking blocked solve in place (and the
refinement sweeps on the solve's own state, passes/_gptq_refine.py), and `ColumnSolve.result`
builds the dequantized weight and its QuantizedWeight back in the original K order.
"""
from __future__ import annotations

import contextlib
import dataclasses

import torch

from qpass.formats import QuantizedWeight
from qpass.specs import QuantSpec

from ._gptq_grid import column_grid, k_cell, k_group
from ._gptq_refine import refine_walk

SUB_BLOCK = 32     # columns per rank-1 slab inside a block; the rest of the block by one GEMM


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device):
    """The per-column work is many tiny memory-bound ops: on CPU, thread fan-out costs more
    than it saves (10-100x on a loaded machine), so run it on one thread."""
    n = torch.get_num_threads()
    if device.type != "cpu" or n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _group_now(WT, A, P, i1: int, col: int, gs: int) -> torch.Tensor:
    """(N, gs) optimal values of the group starting at walk column `col` given every earlier
    column: w_g + P_g·Ã_gg⁻¹ (transposed here: WT rows still hold the original weights, P the
    block's current left-looking sums, Ã_gg the group's diagonal block of the unit factor)."""
    Agg = A[col:col + gs, col:col + gs]
    # the (gs, gs) inverse then one GEMM: a triangular solve with N right-hand sides runs
    # several times slower than the GEMM on CPU
    inv_t = torch.linalg.solve_triangular(Agg, torch.eye(gs, dtype=A.dtype, device=A.device),
                                          upper=True, unitriangular=True).t()
    return torch.addmm(WT[col:col + gs], inv_t, P[col - i1:col - i1 + gs]).t()


def _sub_blocks(i1: int, i2: int, gs: int, dynamic_groups: bool):
    """[j1, j2) column ranges covering [i1, i2); a dynamic group's first column always starts
    one, so its parameters are taken after every earlier in-block update has landed."""
    j1 = i1
    while j1 < i2:
        j2 = min(j1 + SUB_BLOCK, i2)
        if dynamic_groups:
            j2 = min(j2, (j1 // gs + 1) * gs)      # the next group start after j1
        yield j1, j2
        j1 = j2


@dataclasses.dataclass(frozen=True)
class WalkPlan:
    """How the solve walks K: gs columns per group (K when not grouped), n_groups of them;
    dynamic_groups: a group takes its parameters when the walk reaches it, from the updated
    weights (else all before the walk, from the original weights); block: columns per block;
    forced: act-order + groups made the groups static (see passes/_gptq_math.py); cell: columns
    per scale inside a group (a K-quant's sub-block; gs otherwise), n_cells of them along K."""
    gs: int
    n_groups: int
    dynamic_groups: bool
    block: int
    forced: bool
    cell: int = 0
    n_cells: int = 0


def plan_walk(spec: QuantSpec, K: int, act_order, static_groups: bool,
              block_size: int) -> WalkPlan:
    grouped = k_group(spec) is not None
    gs = k_group(spec) if grouped else K
    group_aware = act_order == "group" and grouped
    forced = bool(act_order and grouped and not static_groups and not group_aware)
    dynamic_groups = grouped and not static_groups and (not act_order or group_aware)
    if dynamic_groups:      # whole groups per block: a group's values need only its block's P
        block_size = max(1, block_size // gs) * gs
    n_groups = K // gs if grouped else 1
    cell = k_cell(spec) if grouped else K
    return WalkPlan(gs, n_groups, dynamic_groups, min(block_size, K), forced, cell, K // cell)


def _walk_weight(W: torch.Tensor, factor, spec: QuantSpec, plan: WalkPlan, dt: torch.dtype,
                 importance: torch.Tensor | None = None,
                 global_scale: torch.Tensor | None = None):
    """Wᵀ (K, N) in walk order, a copy in dt with the dead inputs zeroed, the grid (made from
    those weights: nvfp4's global scale; `importance` (K,): a K-quant's scale-search weights)
    and the (N, n_cells) scale/aux, filled here from those weights unless the groups are
    dynamic."""
    N, K = W.shape
    gs = plan.gs
    W = W.detach().to(dt)
    if factor.n_dead:
        W = W.clone()
        W[:, factor.dead] = 0.0
    grid = column_grid(spec, W, importance, global_scale=global_scale)
    scale = torch.empty(N, plan.n_cells, dtype=torch.float32, device=W.device)
    zero = torch.empty(N, plan.n_cells, dtype=grid.aux_dtype, device=W.device)
    per = gs // plan.cell
    if not plan.dynamic_groups:
        # static groups / channel / tensor: parameters from the (dead-zeroed) original weights
        for g in range(plan.n_groups):
            cols = W[:, g * gs:(g + 1) * gs]
            scale[:, g * per:(g + 1) * per], zero[:, g * per:(g + 1) * per] = \
                grid.params(cols, g * gs)
    if factor.perm is not None:
        W = W[:, factor.perm]
    # a copy always: for N == 1, W.t().contiguous() would be the caller's own tensor
    return torch.empty(K, N, dtype=dt, device=W.device).copy_(W.t()), grid, scale, zero


class ColumnSolve:
    """Wᵀ (K, N) in walk order, solved in place. A row of WT holds the original weight until
    its column is decided, then its residual w − q (what the block's left-looking sums P read);
    CT holds the codes, as floats while they can still move (a float grid's element values);
    ET the errors e_j = current w_j − q_j (GPTQ's objective is Σ a_j²·e_j²), one block's, or
    all when the refinement reads them. `grid` rounds (passes/_gptq_grid.py); `zero` holds
    each group's aux (integer zero points, or a float format's stored scale codes), `zero_t`
    the zero points the arithmetic subtracts (0 for float grids)."""

    def __init__(self, W: torch.Tensor, factor, spec: QuantSpec, plan: WalkPlan,
                 dt: torch.dtype, keep_errors: bool, importance: torch.Tensor | None = None,
                 global_scale: torch.Tensor | None = None):
        N, K = W.shape
        self.spec, self.plan, self.factor, self.keep_errors = spec, plan, factor, keep_errors
        self.WT, self.grid, self.scale, self.zero = _walk_weight(W, factor, spec, plan, dt,
                                                                 importance, global_scale)
        dev = self.WT.device
        self.CT = torch.empty_like(self.WT)
        self.P = torch.empty(plan.block, N, dtype=dt, device=dev)   # the block's Σ_{i<j} R_i Ã_ij
        self.ET = torch.empty(K if keep_errors else plan.block, N, dtype=dt, device=dev)
        self.cur = torch.empty(N, dtype=dt, device=dev)
        self.tmp = torch.empty(N, dtype=dt, device=dev)
        walk = factor.perm if factor.perm is not None else torch.arange(K, device=dev)
        self.walk = walk.tolist()
        self.col_group = (walk // plan.cell).tolist()        # each walk column's scale cell
        self.scale_t = self.scale.t().to(dt).contiguous()
        self.zero_t = self.grid.arith_zero(self.zero).t().to(dt).contiguous()
        self.a2 = factor.a.square()
        # row views made once: indexing a tensor per column costs more than the column's arithmetic
        self.w_rows, self.c_rows = self.WT.unbind(0), self.CT.unbind(0)
        self.p_rows, self.e_rows = self.P.unbind(0), self.ET.unbind(0)
        self.a_rows = factor.A.unbind(0)
        self.s_rows, self.z_rows = self.scale_t.unbind(0), self.zero_t.unbind(0)

    def run(self) -> float:
        """The solve, block by block; returns GPTQ's objective tr(R·Hd·Rᵀ) = Σ_j a_j²·‖e_j‖²."""
        K, B = self.WT.shape[0], self.plan.block
        loss = torch.zeros((), dtype=torch.float64, device=self.WT.device)
        with _one_cpu_thread(self.WT.device):
            for i1 in range(0, K, B):
                i2 = min(i1 + B, K)
                self._block(i1, i2)
                e0 = i1 if self.keep_errors else 0
                Eb = self.ET[e0:e0 + i2 - i1]
                loss += (Eb.square().sum(1, dtype=torch.float64) * self.a2[i1:i2]).sum()
        return float(loss)

    def _block(self, i1: int, i2: int) -> None:
        """Columns [i1, i2): every earlier residual reaches the block at once, then sub-block by
        sub-block, each one's residuals reaching the rest of the block by one matmul."""
        A, WT, Pb = self.factor.A, self.WT, self.P[:i2 - i1]
        gs, dynamic_groups = self.plan.gs, self.plan.dynamic_groups
        if i1:
            torch.mm(A[:i1, i1:i2].t(), WT[:i1], out=Pb)
        else:
            Pb.zero_()
        for j1, j2 in _sub_blocks(i1, i2, gs, dynamic_groups):
            if dynamic_groups and j1 % gs == 0:
                self._take_group_params(Pb, i1, j1)
            self._columns(Pb, i1, j1, j2)
            if j2 < i2:
                Pb[j2 - i1:].addmm_(A[j1:j2, j2:i2].t(), WT[j1:j2])

    def _take_group_params(self, Pb: torch.Tensor, i1: int, col: int) -> None:
        """A dynamic group's scales/zeros (one per cell), from its optimal values when the walk
        reaches it (its columns are walked together, in K order inside the group)."""
        gs, per = self.plan.gs, self.plan.gs // self.plan.cell
        k0 = self.walk[col] // gs * gs       # the group's first column in K order
        c0 = k0 // self.plan.cell
        values = _group_now(self.WT, self.factor.A, Pb, i1, col, gs)
        if per > 1:
            # walk order inside the group -> K order (act_order="group" sorts inside groups)
            order = torch.tensor(self.walk[col:col + gs], device=values.device) - k0
            values = values[:, torch.argsort(order)]
        sg, zg = self.grid.params(values, k0)
        self.scale[:, c0:c0 + per], self.zero[:, c0:c0 + per] = sg, zg
        dt = self.WT.dtype
        self.scale_t[c0:c0 + per] = sg.t().to(dt)
        self.zero_t[c0:c0 + per] = self.grid.arith_zero(zg).t().to(dt)

    def _columns(self, Pb: torch.Tensor, i1: int, j1: int, j2: int) -> None:
        """Decide columns [j1, j2) one at a time, each one's residual updating the later ones'
        left-looking sums inside the sub-block (rank 1)."""
        cur, tmp, snap_, col_group = self.cur, self.tmp, self.grid.snap_, self.col_group
        w_rows, c_rows, p_rows, a_rows = self.w_rows, self.c_rows, self.p_rows, self.a_rows
        s_rows, z_rows, e_rows = self.s_rows, self.z_rows, self.e_rows
        e0 = i1 if self.keep_errors else 0
        for col in range(j1, j2):
            g = col_group[col]
            s, z, w, u = s_rows[g], z_rows[g], w_rows[col], c_rows[col]
            torch.add(w, p_rows[col - i1], out=cur)          # the column's value now
            # u = clamp(round(w/s) + z), q = (u − z)·s: the formats convention (or w/s to
            # the nearest value of a float format, z = 0)
            snap_(torch.div(cur, s, out=u), z)
            torch.sub(u, z, out=tmp)
            torch.addcmul(cur, tmp, s, value=-1, out=e_rows[col - i1 + e0])
            w.addcmul_(tmp, s, value=-1)                      # row col: w − q
            if col + 1 < j2:
                Pb[col + 1 - i1:j2 - i1].addr_(a_rows[col][col + 1:j2], w)

    def refine(self, Hd: torch.Tensor, sweeps: int) -> float:
        """`sweeps` sweeps of coordinate descent on the codes from the solve's state (after run,
        with keep_errors; Hd: H + λI in walk order); returns the objective's decrease."""
        self.ET.mul_(self.a2[:, None])                # G = R·Hd = (a²·E)·Ãᵀ at the solve's state
        codes, residuals = self.CT.clone(), self.WT.clone()
        refine_walk(self.WT, self.CT, self.ET, self.factor.A, Hd, self.col_group,
                    self.s_rows, self.z_rows, self.grid.snap_moved_, sweeps, self.plan.block)
        # each step lowers f in exact arithmetic; in float32 with an ill-conditioned Hd the
        # accumulated gradient can be off enough to raise it, so f is compared in float64
        # and the solve's codes are kept unless refinement really lowered it
        before, after = _objective(residuals, Hd), _objective(self.WT, Hd)
        if after > before:
            self.CT.copy_(codes)
            self.WT.copy_(residuals)
            return 0.0
        return before - after

    def result(self, out_dtype: torch.dtype) -> tuple[torch.Tensor, QuantizedWeight]:
        """Wq (N, K) in out_dtype and its QuantizedWeight, both in the original K order. Spends
        the solve: WT's residuals are overwritten with Q."""
        self.P = self.ET = self.p_rows = self.e_rows = None
        K, B = self.WT.shape[0], self.plan.block
        QT = self.WT
        groups_t = torch.tensor(self.col_group, device=self.CT.device)
        for i1 in range(0, K, B):                  # q = (u − z)·s, as the solve computed it
            g = groups_t[i1:i1 + B]
            torch.sub(self.CT[i1:i1 + B], self.zero_t[g], out=QT[i1:i1 + B]).mul_(self.scale_t[g])
        Q, codes = QT.t(), self.CT.t()
        perm = self.factor.perm
        if perm is not None:
            inv = torch.argsort(perm)
            Q, codes = Q[:, inv], codes[:, inv]
        qweight = self.grid.weight(codes.contiguous(), self.scale, self.zero)
        return Q.to(out_dtype), qweight


def _objective(RT: torch.Tensor, Hd: torch.Tensor) -> float:
    """f = tr(R·Hd·Rᵀ) for residuals RT (K, N) in walk order, in float64."""
    R64 = RT.double()
    return float((R64 * (Hd.double() @ R64)).sum())

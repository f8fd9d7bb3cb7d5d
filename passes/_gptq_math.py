"""GPTQ for one weight matrix (Frantar et al. 2022), on qpass's integer formats.

Columns are quantized one at a time along K; each column is rounded from its optimal value
given the columns already decided (the optimal-brain-surgeon update). qpass computes the solve
"left-looking" from one Cholesky factor: with Hd = H + λI = A·Aᵀ, A upper triangular (the
Cholesky factor of Hd with rows and columns reversed), the residuals R = W − Q and the scaled
errors E = R·A satisfy GPTQ's objective tr(R·Hd·Rᵀ) = ‖E‖², and column j's current value is
w_j + P_j / A_jj with P_j = Σ_{i<j} R_i·A_ij. The peers (and the paper) instead take the upper
Cholesky factor of Hd⁻¹, which costs an inverse and a second factorisation (about 4x the
factorisation work here); both give the same codes in exact arithmetic. Updates are lazy at
two levels: a column's rank-1 update of P touches only its sub-block of SUB_BLOCK columns, a
sub-block reaches the rest of its block in one matmul, and a block's P is one matmul of all
earlier residuals. Codes are written once per column and packed once at the end.

Group parameters: without act-order a group's scale/zero come from the group's optimal values
given every earlier column when the walk reaches the group's first column (GPTQ's default;
for the group's columns g that is w_g + P_g·A_gg⁻¹, one small triangular solve). With
act-order the walk is permuted, so groups would no longer be contiguous in K; qpass's packed
layout stores groups along the ORIGINAL K order, hence act-order + groups always uses static
groups (parameters from the original weights before any update), and
`info["static_groups_forced"]` says so.

act_order="group" is group-aware reordering (GAR, Gafni et al. 2025): the groups are walked in
order of their most important column (largest diag H) and each group's columns in order of
importance inside it. A group's columns stay together in the walk, so its parameters are taken
when the walk reaches it, from the updated weights, as without act-order, and the packed layout
is unchanged.
"""
from __future__ import annotations

import contextlib
import dataclasses

import torch

from qpass.errors import CalibrationError, SpecError
from qpass.formats import QuantizedWeight, compute_qparams
from qpass.specs import QuantSpec

from ._gptq_refine import refine_walk

MAX_ESCALATIONS = 6        # damping 1% -> 10% -> ... of mean diag(H), then give up


def _compute_dtype(W: torch.Tensor) -> torch.dtype:
    return torch.float64 if W.dtype == torch.float64 else torch.float32


def _damping(H: torch.Tensor, rel: float) -> torch.Tensor:
    """λ = rel·mean(diag H): the damping GPTQ adds to the diagonal."""
    return rel * torch.diagonal(H).mean().clamp(min=torch.finfo(H.dtype).tiny)


def hessian_root(H: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor, float, int]:
    """H + λI = Ã·diag(a)²·Ãᵀ with Ã unit upper triangular and a > 0, λ = damp·mean(diag H),
    multiplying λ by 10 while H + λI is not positive definite. Ã·diag(a) is the lower Cholesky
    factor of H + λI with rows and columns reversed (J·chol(J·Hd·J)·J, J the reversal); the
    unit form lets the solve read a column's current value as w_j + P_j without a division.
    Returns (Ã, a, relative damping used, escalations)."""
    rel = float(damp)
    for escalation in range(MAX_ESCALATIONS + 1):
        Hd = H.flip(0, 1)
        Hd.diagonal().add_(_damping(H, rel))
        L, info = torch.linalg.cholesky_ex(Hd)
        del Hd
        # a NaN/Inf anywhere in column j of L shows on its diagonal (l_jj² = a_jj − Σ l_jk²)
        if int(info) == 0 and torch.isfinite(torch.diagonal(L)).all():
            A = L.flip(0, 1)
            a = torch.diagonal(A).clone()
            return A.div_(a), a, rel, escalation
        rel *= 10.0
    raise CalibrationError(f"the Hessian is not positive definite even with damping "
                           f"{rel / 10:g}·mean(diag H): calibration inputs are degenerate "
                           f"(NaN, or far too few tokens); add calibration data")


def _params_for_columns(Wcols: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale/zero (N, 1) for a slab of columns quantized as one group per row."""
    if spec.granularity == "tensor":
        s, z = compute_qparams(Wcols, spec)
        return s.expand(Wcols.shape[0], 1), z.expand(Wcols.shape[0], 1)
    # the same spec (grid, observer, clip, scale dtype) with one group per row of the slab
    row_spec = dataclasses.replace(spec, granularity="channel", group_size=None)
    return compute_qparams(Wcols, row_spec)


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


SUB_BLOCK = 32     # columns per rank-1 slab inside a block; the rest of the block by one GEMM


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


def walk_order(H: torch.Tensor, act_order, gs: int) -> torch.Tensor | None:
    """The permutation of K the solve walks: None (K order), diag H descending (act-order), or
    group-aware: groups by their largest diag H, columns by diag H inside each group."""
    if not act_order:
        return None
    d = torch.diagonal(H)
    if act_order != "group":
        return torch.argsort(d, descending=True)
    by_group = d.view(-1, gs)
    inner = torch.argsort(by_group, dim=1, descending=True, stable=True)
    groups = torch.argsort(by_group.amax(dim=1), descending=True, stable=True)
    base = torch.arange(0, d.numel(), gs, device=d.device)[:, None]
    return (inner + base)[groups].reshape(-1)


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
class HessianFactor:
    """What the solve needs from H, independent of W: the dead inputs, the walk order and, in
    that order, H + λI = Ã·diag(a)²·Ãᵀ (hessian_root); Hd = H + λI itself when kept for the
    refinement (factor_hessian's keep_hessian)."""
    key: tuple
    dead: torch.Tensor
    n_dead: int
    perm: torch.Tensor | None
    A: torch.Tensor
    a: torch.Tensor
    damp_used: float
    escalations: int
    Hd: torch.Tensor | None = None


def _factor_key(spec: QuantSpec, act_order, damp: float, dt: torch.dtype, K: int) -> tuple:
    gs = spec.group_size if spec.granularity == "group" else K
    order = act_order if spec.granularity == "group" else bool(act_order)
    return (K, str(dt), order, gs if order == "group" else None, float(damp))


def factor_hessian(H: torch.Tensor, spec, act_order: bool | str = False, damp: float = 0.01,
                   dtype: torch.dtype = torch.float32, keep_hessian: bool = True) -> HessianFactor:
    """Check H, mark its dead inputs, choose the walk order and factor H + λI (see
    quantize_weight, which calls it unless given a factor). keep_hessian: also keep the damped
    H in walk order (K² more memory), which a refining solve reads; without it such a solve
    rebuilds it from H."""
    spec = QuantSpec.parse(spec)
    K = H.shape[0]
    dt = torch.float64 if dtype == torch.float64 else torch.float32
    H = H.detach().to(dt)
    # One check of the (K²) input before the solve: a NaN/Inf in H would otherwise only show up
    # as a failed factorisation or as NaN weights.
    if not torch.isfinite(H).all():
        raise CalibrationError("the Hessian has NaN/Inf entries: calibration activations "
                               "overflowed")
    # Dead inputs never influence the output: zero their weights and make H invertible there.
    dead = torch.diagonal(H) == 0
    grouped = spec.granularity == "group"
    gs = spec.group_size if grouped else K
    H = _in_walk_order(H, dead, None)             # our own copy from here on
    perm = walk_order(H, act_order if grouped else bool(act_order), gs)
    if perm is not None:
        H = H[perm][:, perm]
    with _one_cpu_thread(H.device):     # LAPACK's blocked factorisations round differently per thread count
        A, a, damp_used, escalations = hessian_root(H, damp)
    Hd = None
    if keep_hessian:                   # H is in walk order with dead inputs fixed: damp it
        Hd = H
        Hd.diagonal().add_(_damping(Hd, damp_used))
    return HessianFactor(_factor_key(spec, act_order, damp, dt, K), dead, int(dead.sum()), perm,
                         A, a, damp_used, escalations, Hd)


def _in_walk_order(H: torch.Tensor, dead: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor:
    """A copy of H with its dead inputs made invertible (diagonal 1), in walk order."""
    H = H.clone()
    H[dead, dead] = 1.0
    return H if perm is None else H[perm][:, perm]


def _walk_hessian(H: torch.Tensor, factor: HessianFactor, dt: torch.dtype) -> torch.Tensor:
    """H + λI as the factorisation saw it: the factor's own copy when it kept one, else
    rebuilt from H the same way."""
    if factor.Hd is not None:
        return factor.Hd
    Hd = _in_walk_order(H.detach().to(dt), factor.dead, factor.perm)
    Hd.diagonal().add_(_damping(Hd, factor.damp_used))
    return Hd


def quantize_weight(W: torch.Tensor, H: torch.Tensor, spec, block_size: int = 128,
                    act_order: bool | str = False, damp: float = 0.01,
                    static_groups: bool = False, factor: HessianFactor | None = None,
                    refine: int = 0) -> tuple[torch.Tensor, dict]:
    """GPTQ-quantize W (N, K) given H (K, K) ∝ X Xᵀ of its inputs.

    Returns (Wq, info): Wq the dequantized weight (W's shape and dtype); info has `qweight`
    (qpass.formats.QuantizedWeight, standard layout along the original K order), `damp_used`
    (relative to mean diag H), `escalations`, `loss` (Σ err²/d, GPTQ's objective), `dead`
    (number of dead input channels), `static_groups_forced`. act_order: False, True (diag H
    descending) or "group" (group-aware reordering, see the module docstring). `factor`: H's
    factorisation from factor_hessian, shared by linears that read the same input (q/k/v,
    gate/up) so it is computed once; H is then not read unless `refine` > 0 and the factor
    was made without keep_hessian. refine: that many sweeps of coordinate descent on GPTQ's damped objective after the solve (passes/_gptq_refine.py;
    same grid and group parameters, only codes move; info["refine_gain"] is the relative
    decrease of the objective)."""
    spec = QuantSpec.parse(spec)
    if act_order not in (False, True, "group"):
        raise SpecError(f"act_order must be False, True or 'group', got {act_order!r}")
    if spec.is_activation_only or spec.dynamic:
        raise SpecError(f"GPTQ quantizes weights; {spec} is an activation spec")
    if W.dim() != 2 or H.shape != (W.shape[1], W.shape[1]):
        raise SpecError(f"GPTQ needs W (N, K) and H (K, K); got W {tuple(W.shape)}, "
                        f"H {tuple(H.shape)}")
    if block_size < 1:
        raise SpecError(f"block_size must be >= 1, got {block_size}")
    if isinstance(refine, bool) or not isinstance(refine, int) or refine < 0:
        raise SpecError(f"refine is a number of sweeps (an int >= 0), got {refine!r}")
    N, K = W.shape
    spec.check_shape(K)
    out_dtype, dt = W.dtype, _compute_dtype(W)
    grouped = spec.granularity == "group"
    gs = spec.group_size if grouped else K
    if factor is None:
        factor = factor_hessian(H, spec, act_order, damp, dt, keep_hessian=bool(refine))
    elif factor.key != _factor_key(spec, act_order, damp, dt, K):
        raise SpecError(f"this HessianFactor was made for {factor.key}, not for "
                        f"{_factor_key(spec, act_order, damp, dt, K)}: make one per setting")
    dead, n_dead, perm, A = factor.dead, factor.n_dead, factor.perm, factor.A
    group_aware = act_order == "group" and grouped
    forced = bool(act_order and grouped and not static_groups and not group_aware)
    dynamic_groups = grouped and not static_groups and (not act_order or group_aware)
    if dynamic_groups:      # whole groups per block: a group's values need only its block's P
        block_size = max(1, block_size // gs) * gs
    n_groups = K // gs if grouped else 1
    W = W.detach().to(dt)
    if n_dead:
        W = W.clone()
        W[:, dead] = 0.0
    scale = torch.empty(N, n_groups, dtype=torch.float32, device=W.device)
    zero = torch.empty(N, n_groups, dtype=torch.int32, device=W.device)
    if not dynamic_groups:
        # static groups / channel / tensor: parameters from the (dead-zeroed) original weights
        for g in range(n_groups):
            scale[:, g:g + 1], zero[:, g:g + 1] = _params_for_columns(W[:, g * gs:(g + 1) * gs], spec)
    if perm is not None:
        W = W[:, perm]

    # Work on Wᵀ (K, N) in walk order: a column of W is then a contiguous row. A row holds the
    # original weight until its column is decided, then its residual w − q (what P reads).
    # a copy always: for N == 1, W.t().contiguous() would be the caller's own tensor
    WT = torch.empty(K, N, dtype=dt, device=W.device).copy_(W.t())
    del W
    CT = torch.empty_like(WT)             # codes, as floats while they can still move
    B = min(block_size, K)
    P = torch.empty(B, N, dtype=dt, device=WT.device)            # the block's Σ_{i<j} R_i Ã_ij
    # errors e_j = current w_j − q_j (GPTQ's objective is Σ a_j²·e_j²): all kept when the
    # refinement reads them
    ET = torch.empty(K if refine else B, N, dtype=dt, device=WT.device)
    cur = torch.empty(N, dtype=dt, device=WT.device)
    tmp = torch.empty(N, dtype=dt, device=WT.device)
    col_group = ((perm if perm is not None else torch.arange(K, device=WT.device)) // gs).tolist()
    scale_t, zero_t = scale.t().to(dt).contiguous(), zero.t().to(dt).contiguous()
    top = float(spec.levels - 1)
    a2 = factor.a.square()
    # row views made once: indexing a tensor per column costs more than the column's arithmetic
    w_rows, c_rows, p_rows = WT.unbind(0), CT.unbind(0), P.unbind(0)
    a_rows, e_rows, s_rows, z_rows = A.unbind(0), ET.unbind(0), scale_t.unbind(0), zero_t.unbind(0)
    loss = torch.zeros((), dtype=torch.float64, device=WT.device)
    with _one_cpu_thread(WT.device):
        for i1 in range(0, K, B):
            i2 = min(i1 + B, K)
            Pb = P[:i2 - i1]
            if i1:      # every earlier residual reaches this block at once
                torch.mm(A[:i1, i1:i2].t(), WT[:i1], out=Pb)
            else:
                Pb.zero_()
            e0 = i1 if refine else 0
            for j1, j2 in _sub_blocks(i1, i2, gs, dynamic_groups):
                if dynamic_groups and j1 % gs == 0:
                    g = col_group[j1]              # the walk's j1-th column's group
                    sg, zg = _params_for_columns(_group_now(WT, A, Pb, i1, j1, gs), spec)
                    scale[:, g:g + 1], zero[:, g:g + 1] = sg, zg
                    scale_t[g], zero_t[g] = sg[:, 0].to(dt), zg[:, 0].to(dt)
                for col in range(j1, j2):
                    g = col_group[col]
                    s, z, w, u = s_rows[g], z_rows[g], w_rows[col], c_rows[col]
                    torch.add(w, p_rows[col - i1], out=cur)          # the column's value now
                    # u = clamp(round(w/s) + z), q = (u − z)·s: the formats convention
                    torch.div(cur, s, out=u).round_().add_(z).clamp_(0.0, top)
                    torch.sub(u, z, out=tmp)
                    torch.addcmul(cur, tmp, s, value=-1, out=e_rows[col - i1 + e0])
                    w.addcmul_(tmp, s, value=-1)                      # row col: w − q
                    if col + 1 < j2:
                        Pb[col + 1 - i1:j2 - i1].addr_(a_rows[col][col + 1:j2], w)
                if j2 < i2:     # the sub-block's residuals reach the rest of the block at once
                    Pb[j2 - i1:].addmm_(A[j1:j2, j2:i2].t(), WT[j1:j2])
            Eb = ET[e0:e0 + i2 - i1]
            # GPTQ's objective tr(R·Hd·Rᵀ) = Σ_j a_j²·‖e_j‖²
            loss += (Eb.square().sum(1, dtype=torch.float64) * a2[i1:i2]).sum()
    gain = 0.0
    if refine:
        with _one_cpu_thread(CT.device):
            ET.mul_(a2[:, None])                # G = R·Hd = (a²·E)·Ãᵀ at the solve's state
            gain = refine_walk(WT, CT, ET, A, _walk_hessian(H, factor, dt), col_group,
                               s_rows, z_rows, top, refine, B)
        gain /= max(float(loss), torch.finfo(torch.float64).tiny)
    del ET, P
    QT = WT                                    # the residuals are spent: the buffer takes Q
    groups_t = torch.tensor(col_group, device=CT.device)
    for i1 in range(0, K, B):                  # q = (u − z)·s, as the solve computed it
        g = groups_t[i1:i1 + B]
        torch.sub(CT[i1:i1 + B], zero_t[g], out=QT[i1:i1 + B]).mul_(scale_t[g])
    CT = CT.to(torch.uint8)
    Q, codes = QT.t(), CT.t()
    if perm is not None:
        inv = torch.argsort(perm)
        Q, codes = Q[:, inv], codes[:, inv]
    if not grouped:
        scale, zero = scale[:, :1], zero[:, :1]
        if spec.granularity == "tensor":
            scale, zero = scale[:1], zero[:1]
    qweight = QuantizedWeight.from_codes(codes.contiguous(), scale, zero, spec)
    info = {"qweight": qweight, "damp_used": factor.damp_used, "escalations": factor.escalations,
            "loss": float(loss) * 0.5, "dead": n_dead, "static_groups_forced": forced,
            "refine_sweeps": refine, "refine_gain": gain}
    return Q.to(out_dtype), info


def reconstruction_error(W: torch.Tensor, Wq: torch.Tensor, H: torch.Tensor) -> float:
    """‖WX − QX‖² / ‖WX‖² from H ∝ X Xᵀ (the scale of H cancels), in float64."""
    return reconstruction_errors(W, [Wq], H, torch.float64)[0]


def reconstruction_errors(W: torch.Tensor, Wqs, H: torch.Tensor,
                          dtype: torch.dtype | None = None) -> list[float]:
    """reconstruction_error of each of `Wqs` against W, with ‖WX‖² computed once. dtype: of
    the matmuls (default: float64 for float64 inputs, else float32 — a report metric does
    not need float64's 2x cost on a layer as big as the solve itself); sums in float64."""
    dt = dtype or (torch.float64 if W.dtype == torch.float64 else torch.float32)
    W, H = W.to(dt), H.to(dt)
    den = float(((W @ H) * W).sum(dtype=torch.float64))
    den = max(den, torch.finfo(torch.float64).tiny)
    out = []
    for Wq in Wqs:
        D = W - Wq.to(dt)
        out.append(float(((D @ H) * D).sum(dtype=torch.float64)) / den)
    return out

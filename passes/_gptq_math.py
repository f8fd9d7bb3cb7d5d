"""GPTQ for one weight matrix (Frantar et al. 2022), on qpass's integer and floating-point
grids (how a column is rounded: passes/_gptq_grid.py).

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
`GPTQInfo.static_groups_forced` says so.

act_order="group" is group-aware reordering (GAR, Gafni et al. 2025): the groups are walked in
order of their most important column (largest diag H) and each group's columns in order of
importance inside it. A group's columns stay together in the walk, so its parameters are taken
when the walk reaches it, from the updated weights, as without act-order, and the packed layout
is unchanged.
"""
from __future__ import annotations

import dataclasses

import torch

from qpass.errors import CalibrationError, SpecError
from qpass.formats import QuantizedWeight
from qpass.specs import QuantSpec

from ._gptq_grid import k_group
from ._gptq_solve import ColumnSolve, _one_cpu_thread, plan_walk

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
    gs = k_group(spec) or K
    order = act_order if k_group(spec) else bool(act_order)
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
    grouped = k_group(spec) is not None
    gs = k_group(spec) if grouped else K
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


@dataclasses.dataclass(frozen=True)
class GPTQInfo:
    """What quantize_weight reports besides Wq: the packed weight (standard layout along the
    original K order), the relative damping used (to mean diag H) after `escalations` x10 steps,
    `loss` = Σ err²/d (GPTQ's objective), the number of `dead` input channels, whether act-order
    forced static groups, and the refinement's sweeps and relative decrease of the objective."""
    qweight: QuantizedWeight
    damp_used: float
    escalations: int
    loss: float
    dead: int
    static_groups_forced: bool
    refine_sweeps: int
    refine_gain: float


def _checked_spec(W: torch.Tensor, H: torch.Tensor, spec, block_size: int, act_order,
                  refine) -> QuantSpec:
    """quantize_weight's arguments checked (one SpecError each); the parsed spec."""
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
    spec.check_shape(W.shape[1])
    if spec.granularity == "block" and W.shape[1] % spec.group_size:
        raise SpecError(f"GPTQ walks {spec} one {spec.group_size}-column block at a time: "
                        f"in_features K={W.shape[1]} must be a multiple of {spec.group_size} "
                        f"(RTN takes partial edge blocks)")
    return spec


def _factor_for(H: torch.Tensor, spec: QuantSpec, act_order, damp: float, dt: torch.dtype,
                factor: HessianFactor | None, refine: int) -> HessianFactor:
    """The caller's factor, checked against this setting, or H factored here."""
    if factor is None:
        return factor_hessian(H, spec, act_order, damp, dt, keep_hessian=bool(refine))
    want = _factor_key(spec, act_order, damp, dt, H.shape[0])
    if factor.key != want:
        raise SpecError(f"this HessianFactor was made for {factor.key}, not for {want}: make "
                        f"one per setting")
    return factor


def quantize_weight(W: torch.Tensor, H: torch.Tensor, spec, block_size: int = 128,
                    act_order: bool | str = False, damp: float = 0.01,
                    static_groups: bool = False, factor: HessianFactor | None = None,
                    refine: int = 0, importance: torch.Tensor | None = None,
                    global_scale: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, GPTQInfo]:
    """GPTQ-quantize W (N, K) given H (K, K) ∝ X Xᵀ of its inputs.

    Returns (Wq, info): Wq the dequantized weight (W's shape and dtype), info a GPTQInfo.
    act_order: False, True (diag H descending) or "group" (group-aware reordering, see the
    module docstring). `factor`: H's factorisation from factor_hessian, shared by linears that
    read the same input (q/k/v, gate/up) so it is computed once; H is then not read unless
    `refine` > 0 and the factor was made without keep_hessian. refine: that many sweeps of
    coordinate descent on GPTQ's damped objective after the solve (passes/_gptq_refine.py;
    same grid and group parameters, only codes move). importance: (K,) per-column weights of a
    K-quant's scale search (passes/_gptq_grid.py), default diag H (as llama.cpp weighs its
    search by an importance matrix: measured lower GPTQ error than unweighted), ignored by other
    grids. global_scale: nvfp4's global scale when shared with sibling linears (else from W)."""
    spec = _checked_spec(W, H, spec, block_size, act_order, refine)
    if spec.is_kquant and importance is None:
        importance = torch.diagonal(H).detach().to(torch.float32)
    dt = _compute_dtype(W)
    factor = _factor_for(H, spec, act_order, damp, dt, factor, refine)
    plan = plan_walk(spec, W.shape[1], act_order, static_groups, block_size)
    solve = ColumnSolve(W, factor, spec, plan, dt, keep_errors=bool(refine),
                        importance=importance, global_scale=global_scale)
    loss = solve.run()
    gain = 0.0
    if refine:
        with _one_cpu_thread(W.device):
            gain = solve.refine(_walk_hessian(H, factor, dt), refine)
        gain /= max(loss, torch.finfo(torch.float64).tiny)
    Wq, qweight = solve.result(W.dtype)
    return Wq, GPTQInfo(qweight, factor.damp_used, factor.escalations, loss * 0.5, factor.n_dead,
                        plan.forced, refine, gain)


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

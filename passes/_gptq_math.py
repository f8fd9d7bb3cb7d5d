"""GPTQ for one weight matrix (Frantar et al. 2022), on qpass's integer formats.

Columns are quantized one at a time along K; each column's rounding error is spread over the
not-yet-quantized columns through the upper Cholesky factor of H⁻¹ (optimal brain surgeon
update). Updates are lazy: inside a block of `block_size` columns they touch only the block,
and the accumulated error reaches the rest of W in one matmul per block — the same result as
the column-by-column textbook algorithm, with far less memory traffic.

Group parameters: without act-order a group's scale/zero come from the partly-updated weights
when the walk reaches the group's first column (GPTQ's default). With act-order the walk is
permuted, so groups would no longer be contiguous in K; qpass's packed layout stores groups
along the ORIGINAL K order, hence act-order + groups always uses static groups (parameters from
the original weights before any update), and `info["static_groups_forced"]` says so.
"""
from __future__ import annotations

import contextlib

import torch

from qpass.errors import CalibrationError, SpecError
from qpass.formats import QuantizedWeight, compute_qparams, quantize
from qpass.specs import QuantSpec

MAX_ESCALATIONS = 6        # damping 1% -> 10% -> ... of mean diag(H), then give up


def _compute_dtype(W: torch.Tensor) -> torch.dtype:
    return torch.float64 if W.dtype == torch.float64 else torch.float32


def inverse_cholesky(H: torch.Tensor, damp: float) -> tuple[torch.Tensor, float, int]:
    """Upper Cholesky factor of (H + λI)⁻¹ with λ = damp·mean(diag H), multiplying λ by 10
    while H + λI is not positive definite. Returns (factor, relative damping used, escalations)."""
    mean_diag = torch.diagonal(H).mean().clamp(min=torch.finfo(H.dtype).tiny)
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    rel = float(damp)
    for escalation in range(MAX_ESCALATIONS + 1):
        L, info = torch.linalg.cholesky_ex(H + rel * mean_diag * eye)
        if int(info) == 0:
            Hinv = torch.cholesky_inverse(L)
            U, info2 = torch.linalg.cholesky_ex(Hinv, upper=True)
            if int(info2) == 0 and torch.isfinite(U).all():
                return U, rel, escalation
        rel *= 10.0
    raise CalibrationError(f"the Hessian is not positive definite even with damping "
                           f"{rel / 10:g}·mean(diag H): calibration inputs are degenerate "
                           f"(NaN, or far too few tokens); add calibration data")


def _params_for_columns(Wcols: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale/zero (N, 1) for a slab of columns quantized as one group per row."""
    if spec.granularity == "tensor":
        s, z = compute_qparams(Wcols, spec)
        return s.expand(Wcols.shape[0], 1), z.expand(Wcols.shape[0], 1)
    row_spec = QuantSpec(spec.bits, spec.symmetric, "channel", clip_ratio=spec.clip_ratio,
                         observer=spec.observer)
    return compute_qparams(Wcols, row_spec)


def _fake_column(w: torch.Tensor, s: torch.Tensor, z: torch.Tensor, levels: int) -> torch.Tensor:
    """Dequantized column: (clamp(round(w/s) + z) - z)·s, the formats convention."""
    u = (torch.round(w / s) + z).clamp(0, levels - 1)
    return (u - z) * s


@contextlib.contextmanager
def _one_cpu_thread():
    """The per-column work is many tiny memory-bound ops: on CPU, thread fan-out costs more
    than it saves (10-100x on a loaded machine), so run it on one thread."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _group_now(WT, W1, E1, U, i1: int, i2: int, i: int, gs: int) -> torch.Tensor:
    """(N, gs) weights of the group starting at column i1+i, as the column-by-column algorithm
    sees them: in-block columns are current; later columns get the block's pending update."""
    col = i1 + i
    tail = WT[i2:i2 + max(0, gs - (i2 - col))]
    if i > 0 and tail.shape[0]:
        tail = tail - U[i1:col, i2:i2 + tail.shape[0]].t() @ E1[:i]
    return torch.cat([W1[i:], tail], dim=0)[:gs].t()


def quantize_weight(W: torch.Tensor, H: torch.Tensor, spec, block_size: int = 128,
                    act_order: bool = False, damp: float = 0.01, static_groups: bool = False
                    ) -> tuple[torch.Tensor, dict]:
    """GPTQ-quantize W (N, K) given H (K, K) ∝ X Xᵀ of its inputs.

    Returns (Wq, info): Wq the dequantized weight (W's shape and dtype); info has `qweight`
    (qpass.formats.QuantizedWeight, standard layout along the original K order), `damp_used`
    (relative to mean diag H), `escalations`, `loss` (Σ err²/d, GPTQ's objective), `dead`
    (number of dead input channels), `static_groups_forced`."""
    spec = QuantSpec.parse(spec)
    if spec.is_activation_only or spec.dynamic:
        raise SpecError(f"GPTQ quantizes weights; {spec} is an activation spec")
    if W.dim() != 2 or H.shape != (W.shape[1], W.shape[1]):
        raise SpecError(f"GPTQ needs W (N, K) and H (K, K); got W {tuple(W.shape)}, "
                        f"H {tuple(H.shape)}")
    if block_size < 1:
        raise SpecError(f"block_size must be >= 1, got {block_size}")
    N, K = W.shape
    spec.check_shape(K)
    out_dtype, dt = W.dtype, _compute_dtype(W)
    W = W.detach().to(dt).clone()
    H = H.detach().to(dt).clone()
    if not torch.isfinite(H).all():
        raise CalibrationError("the Hessian has NaN/Inf entries: calibration activations "
                               "overflowed")
    # Dead inputs never influence the output: zero their weights and make H invertible there.
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0

    grouped = spec.granularity == "group"
    gs = spec.group_size if grouped else K
    forced = bool(act_order and grouped and not static_groups)
    static = grouped and (static_groups or act_order)
    n_groups = K // gs if grouped else 1
    scale = torch.empty(N, n_groups, dtype=torch.float32, device=W.device)
    zero = torch.empty(N, n_groups, dtype=torch.int32, device=W.device)
    if static or not grouped:
        # static groups / channel / tensor: parameters from the (dead-zeroed) original weights
        for g in range(n_groups):
            cols = W[:, g * gs:(g + 1) * gs]
            scale[:, g:g + 1], zero[:, g:g + 1] = _params_for_columns(cols, spec)

    perm = torch.argsort(torch.diagonal(H), descending=True) if act_order else None
    if perm is not None:
        W, H = W[:, perm], H[perm][:, perm]
    U, damp_used, escalations = inverse_cholesky(H, damp)

    # Work on Wᵀ (K, N): a column of W is then a contiguous row, and the rank-1 update is addr_.
    WT = W.t().contiguous()
    QT = torch.zeros_like(WT)
    losses = torch.zeros(N, dtype=dt, device=W.device)
    col_group = ((perm if perm is not None else torch.arange(K, device=W.device)) // gs).tolist()
    scale_t, zero_t = scale.t().to(dt).contiguous(), zero.t().to(dt).contiguous()
    for i1 in range(0, K, block_size):
        i2 = min(i1 + block_size, K)
        W1 = WT[i1:i2].clone()
        E1 = torch.zeros_like(W1)
        with _one_cpu_thread():
            for i in range(i2 - i1):
                col = i1 + i
                if grouped and not static and col % gs == 0:
                    g = col // gs
                    sg, zg = _params_for_columns(_group_now(WT, W1, E1, U, i1, i2, i, gs), spec)
                    scale[:, g:g + 1], zero[:, g:g + 1] = sg, zg
                    scale_t[g], zero_t[g] = sg[:, 0].to(dt), zg[:, 0].to(dt)
                g = col_group[col] if grouped else 0
                w, d = W1[i], U[col, col]
                q = _fake_column(w, scale_t[g], zero_t[g], spec.levels)
                QT[col] = q
                err = (w - q) / d
                losses.addcmul_(err, err, value=0.5)
                W1[i:].addr_(U[col, col:i2], err, alpha=-1)
                E1[i] = err
        WT[i2:] -= U[i1:i2, i2:].t() @ E1      # the block's errors reach the rest in one matmul
    Q = QT.t()

    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    if not grouped:
        scale, zero = scale[:, :1], zero[:, :1]
        if spec.granularity == "tensor":
            scale, zero = scale[:1], zero[:1]
    codes = quantize(Q, spec, scale, zero)      # Q sits on the grid: these are its exact codes
    qweight = QuantizedWeight.from_codes(codes, scale, zero, spec)
    info = {"qweight": qweight, "damp_used": damp_used, "escalations": escalations,
            "loss": float(losses.sum()), "dead": int(dead.sum()),
            "static_groups_forced": forced}
    return Q.to(out_dtype), info


def reconstruction_error(W: torch.Tensor, Wq: torch.Tensor, H: torch.Tensor) -> float:
    """‖WX − QX‖² / ‖WX‖² from H ∝ X Xᵀ (the scale of H cancels)."""
    dt = torch.float64
    W, D, H = W.to(dt), (W - Wq).to(dt), H.to(dt)
    num = ((D @ H) * D).sum()
    den = ((W @ H) * W).sum()
    return float(num / den.clamp(min=torch.finfo(dt).tiny))

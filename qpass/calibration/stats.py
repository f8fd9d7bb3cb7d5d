"""Per-linear input statistics from calibration batches (forward pre-hooks on the leaves).

Used by DuQuant (smoothing scales and rotation search) and by the outlier table; kept in core
so that inspection does not depend on a pass."""
from __future__ import annotations

from typing import Iterable, Iterator

import torch

from qpass.errors import CalibrationError


def iter_batches(calib, batch_size: int = 8) -> Iterator[tuple]:
    """Model-input tuples from a CalibrationSet, a (B, L) id tensor, or an iterable of those."""
    if calib is None:
        raise CalibrationError("no calibration data: pass calib=qpass.calibration."
                               "CalibrationSet.from_texts(...) (or a (B, L) tensor of token ids)")
    if hasattr(calib, "batches"):
        yield from calib.batches(batch_size)
    elif isinstance(calib, torch.Tensor):
        ids = calib if calib.dim() == 2 else calib.unsqueeze(0)
        for i in range(0, ids.shape[0], batch_size):
            yield (ids[i:i + batch_size],)
    elif isinstance(calib, tuple) and calib and isinstance(calib[0], torch.Tensor):
        yield calib
    elif isinstance(calib, Iterable):
        for item in calib:
            yield from iter_batches(item, batch_size)
    else:
        raise CalibrationError(f"cannot read calibration batches from {type(calib).__name__}")


def channel_ratio(absmax: torch.Tensor) -> float:
    """max / median of a per-channel absmax vector: how far the worst channel sticks out."""
    med = absmax.median().item()
    return float(absmax.max().item() / med) if med > 0 else float("inf")


@torch.no_grad()
def linear_input_stats(g, nodes, calib, sample_rows: int = 0, batch_size: int = 8,
                       seed: int = 0, rows_dtype: torch.dtype = torch.float64) -> dict[str, dict]:
    """For each linear node (by name): {"absmax", "mean_abs": (in,) float64 per-channel max
    and mean of |x| over every calibration token, "rows": up to `sample_rows` random input
    rows (`rows_dtype`) or None, "tokens": count}. Shared by DuQuant, SmoothQuant, AWQ and
    `qpass inspect --outliers`."""
    gen = torch.Generator().manual_seed(seed)
    stats: dict[str, dict] = {}
    hooks = []

    def make_hook(name):
        def hook(_mod, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float64)
            s = stats.setdefault(name, {"absmax": torch.zeros(x.shape[-1], dtype=torch.float64),
                                        "sum_abs": torch.zeros(x.shape[-1], dtype=torch.float64),
                                        "rows": [], "tokens": 0})
            xa = x.abs()
            s["absmax"] = torch.maximum(s["absmax"], xa.amax(0).cpu())
            s["sum_abs"] += xa.sum(0).cpu()
            s["tokens"] += x.shape[0]
            if sample_rows:
                k = min(sample_rows, x.shape[0])
                idx = torch.randperm(x.shape[0], generator=gen)[:k].to(x.device)
                s["rows"].append(x[idx].to(rows_dtype).cpu())
        return hook

    for n in nodes:
        hooks.append(g.module(n).register_forward_pre_hook(make_hook(n.name)))
    try:
        for batch in iter_batches(calib, batch_size):
            g.gm(*batch)
    finally:
        for h in hooks:
            h.remove()
    for name, s in stats.items():
        s["mean_abs"] = s.pop("sum_abs") / max(s["tokens"], 1)
        rows = torch.cat(s["rows"]) if s["rows"] else None
        if rows is not None and rows.shape[0] > sample_rows:
            rows = rows[torch.randperm(rows.shape[0], generator=gen)[:sample_rows]]
        s["rows"] = rows
    missing = [n.name for n in nodes if n.name not in stats]
    if missing:
        raise CalibrationError(f"calibration batches never reached {missing[:5]}; is the "
                               f"calibration set empty?")
    return stats

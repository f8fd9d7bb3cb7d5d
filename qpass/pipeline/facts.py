"""What each fact means on the graph, checked by the manager after every pass that provides it
(the `ensures` half of DESIGN §3): a pass that claims a fact which does not hold is a
PipelineError naming the pass and the fact, instead of a silently wrong pipeline.

Each check returns None when the fact holds, else a sentence saying what is wrong. Checks that
need tensor values pass on the meta device (structure-only graphs have none to look at)."""
from __future__ import annotations

from typing import Callable

import torch

from qpass.errors import PipelineError
from qpass.ir.qlinear import is_quantized_module
from qpass.ir.regions import norm_regions

from .pass_base import Fact, Pass


def _on_meta(t) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type == "meta"


def _norms_fused(g) -> str | None:
    """Every norm read only by linears is weightless (γ = 1, β = 0): what Rotate relies on."""
    for r in norm_regions(g):
        if r.others or not r.consumers:
            continue                      # not foldable: FuseNorms leaves it (and says so)
        m = g.module(r.producer)
        w, b = getattr(m, "weight", None), getattr(m, "bias", None)
        if _on_meta(w) or _on_meta(b):
            continue
        if isinstance(w, torch.Tensor) and not bool(torch.all(w == 1)):
            return f"norm {r.producer.target} still has a weight (γ ≠ 1)"
        if isinstance(b, torch.Tensor) and not bool(torch.all(b == 0)):
            return f"norm {r.producer.target} still has a bias (β ≠ 0)"
    return None


def _meta_anywhere(g, *keys: str) -> bool:
    return any(k in n.meta.get("qpass", {}) for n in g.graph.nodes for k in keys)


def _rotated(g) -> str | None:
    if _meta_anywhere(g, "rotate", "duquant"):
        return None
    return "no node records a rotation (meta 'rotate' or 'duquant')"


def _smoothed(g) -> str | None:
    if _meta_anywhere(g, "smoothing", "duquant"):
        return None
    return "no smoothing scale was folded into any producer (every pair was skipped?)"


def _quantized_modules(g) -> list:
    return [g.module(n) for n in g.linears() if is_quantized_module(g.module(n))]


def _weights_quantized(g) -> str | None:
    if any(getattr(m, "weight_spec", None) is not None for m in _quantized_modules(g)):
        return None
    return "no linear has quantized weights"


def _acts_quantized(g) -> str | None:
    if any(getattr(m, "act_spec", None) is not None for m in _quantized_modules(g)):
        return None
    return "no linear has an activation spec"


def _calibrated(g) -> str | None:
    for n in g.linears():
        m = g.module(n)
        spec = getattr(m, "act_spec", None)
        if spec is None or spec.dynamic:
            continue
        scale = getattr(m, "act_scale", None)
        if scale is None:
            return f"{n.target} has static activation spec {spec} but no calibrated scale"
        if not _on_meta(scale) and not bool(torch.isfinite(scale).all() and (scale > 0).all()):
            return f"{n.target}'s calibrated activation scale is not finite and positive"
    return None


def _lowered(g) -> str | None:
    for n in g.graph.nodes:
        if n.op == "call_module" and type(g.module(n)).__name__ == "LoweredLinear":
            return None
        if n.op == "call_function" and str(getattr(n.target, "__module__", "")).endswith("lowered"):
            return None
    return "no node calls a kernel op"


CHECKS: dict[Fact, Callable] = {
    Fact.NORMS_FUSED: _norms_fused,
    Fact.ROTATED: _rotated,
    Fact.SMOOTHED: _smoothed,
    Fact.OBSERVED: _acts_quantized,
    Fact.CALIBRATED: _calibrated,
    Fact.WEIGHTS_QUANTIZED: _weights_quantized,
    Fact.ACTS_QUANTIZED: _acts_quantized,
    Fact.LOWERED: _lowered,
}


def ensure_provided(p: Pass, g) -> None:
    """Raise PipelineError when a fact `p` provides does not hold on `g` after it ran."""
    for fact in sorted(p.provides, key=str):
        check = CHECKS.get(fact)
        problem = check(g) if check is not None else None
        if problem:
            raise PipelineError(f"{p.name} claims {fact}, but it does not hold after the pass: "
                                f"{problem}")

"""What each fact means on the graph, checked by the executor after every pass that provides it
(the `ensures` half of DESIGN §3): a pass that claims a fact which does not hold is a
PipelineError naming the pass and the fact, instead of a silently wrong pipeline.

The executor runs passes stage by stage, so a fact is checked in one of two ways:
- a fact about EVERY node of a kind (NORMS_FUSED: every foldable norm weightless; the static
  half of ACTS_QUANTIZED: every static activation spec has a calibrated scale) is checked on
  each stage right after the pass ran on it (`stage_problem`);
- a fact that says SOMETHING happened (ROTATED, SMOOTHED, WEIGHTS_QUANTIZED, ACTS_QUANTIZED,
  LOWERED) is witnessed stage by stage (`witnessed`) and must have a witness in some stage by
  the end of the run (`missing_witness`); a resumed run counts the witnesses its completed
  stages recorded.
Checks that need tensor values pass on the meta device (structure-only graphs have none)."""
from __future__ import annotations

from typing import Callable

import torch

from qpass.errors import PipelineError
from qpass.ir.qlinear import is_quantized_module
from qpass.ir.regions import norm_regions

from .pass_base import Fact, Pass


def _on_meta(t) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type == "meta"


def _norms_fused(g, stage) -> str | None:
    """Every norm read only by linears is weightless (γ = 1, β = 0): what Rotate relies on."""
    nodes = set(stage.nodes)
    for r in norm_regions(g):
        if r.producer not in nodes or r.others or not r.consumers:
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


def _linears(g, stage) -> list:
    """The stage's linears as the graph counts them (the head and MoE routers included)."""
    nodes = set(stage.nodes)
    return [n for n in g.linears() if n in nodes]


def _static_scales(g, stage) -> str | None:
    """Every linear with a static activation spec has a finite, positive calibrated scale."""
    for n in _linears(g, stage):
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


def _meta_in(stage, *keys: str) -> bool:
    return any(k in n.meta.get("qpass", {}) for n in stage.nodes for k in keys)


def _quantized_modules(g, stage) -> list:
    return [g.module(n) for n in _linears(g, stage) if is_quantized_module(g.module(n))]


def _lowered(g, stage) -> bool:
    for n in stage.nodes:
        if n.op == "call_module" and type(g.module(n)).__name__ in ("LoweredLinear",
                                                                   "LoweredFloatLinear"):
            return True
        if n.op == "call_function" and str(getattr(n.target, "__module__", "")).endswith("lowered"):
            return True
    return False


# fact -> (does this stage witness it, what is wrong when no stage did)
WITNESSES: dict[Fact, tuple[Callable, str]] = {
    Fact.ROTATED: (lambda g, stage: _meta_in(stage, "rotate", "duquant"),
                   "no node records a rotation (meta 'rotate' or 'duquant')"),
    Fact.SMOOTHED: (lambda g, stage: _meta_in(stage, "smoothing", "duquant"),
                    "no smoothing scale was folded into any producer (every pair was skipped?)"),
    Fact.WEIGHTS_QUANTIZED: (lambda g, stage: any(getattr(m, "weight_spec", None) is not None
                                                  for m in _quantized_modules(g, stage)),
                             "no linear has quantized weights"),
    Fact.ACTS_QUANTIZED: (lambda g, stage: any(getattr(m, "act_spec", None) is not None
                                               for m in _quantized_modules(g, stage)),
                          "no linear has an activation spec"),
    Fact.LOWERED: (_lowered, "no node calls a kernel op"),
}
# fact -> what is wrong on one stage (None when it holds there)
EVERY_NODE: dict[Fact, Callable] = {
    Fact.NORMS_FUSED: _norms_fused,
    Fact.ACTS_QUANTIZED: _static_scales,
}


def _claim_error(p: Pass, fact: Fact, problem: str) -> PipelineError:
    return PipelineError(f"{p.name} claims {fact}, but it does not hold after the pass: {problem}")


def check_stage(p: Pass, g, stage) -> set[str]:
    """After `p` ran on `stage`: raise PipelineError when a fact about every node does not
    hold there; return the names of the facts this stage witnesses."""
    seen = set()
    for fact in sorted(p.provides, key=str):
        check = EVERY_NODE.get(fact)
        problem = check(g, stage) if check is not None else None
        if problem:
            raise _claim_error(p, fact, f"{problem} ({stage.name})")
        witness = WITNESSES.get(fact)
        if witness is not None and witness[0](g, stage):
            seen.add(fact.name)
    return seen


def check_witnessed(p: Pass, seen: set[str]) -> None:
    """At the end of a run: every witnessed fact `p` provides was seen in some stage."""
    for fact in sorted(p.provides, key=str):
        if fact in WITNESSES and fact.name not in seen:
            raise _claim_error(p, fact, WITNESSES[fact][1])

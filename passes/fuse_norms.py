"""FuseNorms: fold every norm's weight into the linears that consume it (exact).

For a norm n(x) = x̂·γ (+β for LayerNorm) read only by linears y = W·n(x) + b, the fused form
is W' = W·diag(γ), b' = b + W·β, and the norm keeps γ = 1 (β = 0): same outputs up to float
rounding, and every norm is weightless afterwards, which rotation and smoothing rely on. The
consumers come from the graph's norm regions (qpass.ir.regions); a norm that also feeds a
non-linear is skipped and noted. A head tied to the embedding is untied (cloned) first, since folding γ into
the shared matrix would change the embedding too."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from qpass.ir.regions import norm_regions
from qpass.pipeline.pass_base import Fact, Pass, PassContext, PassResult


_ROWS = 4096        # rows per float64 chunk when folding


def _shared_param_ids(root: nn.Module) -> set[int]:
    seen: dict[int, int] = {}
    for _, p in root.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    return {k for k, v in seen.items() if v > 1}


@dataclass(eq=False, repr=False)
class FuseNorms(Pass):
    provides = frozenset({Fact.NORMS_FUSED})
    exact = True
    changes_weights = True

    def run(self, g, ctx: PassContext) -> PassResult:
        """The norms of this stage: block norms fold into their block's linears, the final
        norm into the head in the suffix."""
        nodes = ctx.nodes
        return self._fuse(g, ctx, [r for r in norm_regions(g) if r.producer in nodes])

    def _fuse(self, g, ctx: PassContext, regions) -> PassResult:
        res = PassResult()
        task = ctx.task("FuseNorms: folding norm weights", total=len(regions))
        shared = _shared_param_ids(g.gm)
        for region in regions:
            norm_node, linears, others = region.producer, region.consumers, region.others
            ctx.advance(task)
            norm = g.module(norm_node)
            gamma = getattr(norm, "weight", None)
            beta = getattr(norm, "bias", None)
            if gamma is None and beta is None:
                res.notes.append(f"{norm_node.target}: already weightless")
                continue
            if others or not linears:
                why = (f"also feeds {', '.join(o.name for o in others)}" if others
                       else "feeds no linear")
                res.notes.append(f"skipped {norm_node.target}: {why}")
                continue
            mods = [g.module(n) for n in linears]
            if not all(isinstance(m, nn.Linear) for m in mods):       # a MoE Router is one
                res.notes.append(f"skipped {norm_node.target}: a consumer is not a float nn.Linear")
                continue
            for lin_node, lin in zip(linears, mods):
                if id(lin.weight) in shared:
                    lin.weight = nn.Parameter(lin.weight.detach().clone(),
                                              requires_grad=lin.weight.requires_grad)
                    res.notes.append(f"untied {lin_node.target}'s weight (shared with another "
                                     f"module, e.g. a tied embedding) before folding")
                self._fold(lin, gamma, beta)
                lin_node.meta.setdefault("qpass", {})["fused_norm"] = norm_node.target
                res.nodes_changed.append(lin_node.name)
            with torch.no_grad():
                if gamma is not None:
                    gamma.fill_(1.0)
                if beta is not None:
                    beta.zero_()
            norm_node.meta.setdefault("qpass", {})["fused_into"] = [n.target for n in linears]
            res.nodes_changed.append(norm_node.name)
            res.notes.append(f"fused {norm_node.target} into {', '.join(n.target for n in linears)}")
        res.metrics["norms_fused"] = sum(1 for n in res.notes if n.startswith("fused "))
        return res

    @staticmethod
    @torch.no_grad()
    def _fold(lin: nn.Linear, gamma, beta) -> None:
        """W' = W·diag(γ), b' = b + W·β, in float64 one row chunk at a time: each element is
        computed exactly as on the whole matrix, and a 126k-row head needs no 4 GB float64 copy."""
        W = lin.weight
        shift = None
        if beta is not None:
            lin_bias = lin.bias
            shift = torch.cat([c.double() @ beta.detach().double() for c in W.detach().split(_ROWS)])
            if lin_bias is None:
                lin.bias = nn.Parameter(shift.to(W.dtype))
            else:
                lin_bias.copy_((lin_bias.double() + shift).to(lin_bias.dtype))
        if gamma is not None:
            g64 = gamma.detach().double()[None, :]
            for rows in W.detach().split(_ROWS):
                rows.copy_((rows.double() * g64).to(W.dtype))

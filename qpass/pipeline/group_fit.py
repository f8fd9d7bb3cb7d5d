"""A scheme's group size fitted to one model (Scheme.fit_to): the input sizes K of every float
linear the scheme's own weight spec would quantize, read from the graph (on meta too, so a
streamed run fits the same way as an in-memory one)."""
from __future__ import annotations

import torch.nn as nn

from qpass.specs import Scheme


def scheme_fitted_to(g, scheme) -> Scheme:
    scheme = Scheme.parse(scheme)
    if scheme.weight is None or scheme.weight.granularity != "group":
        return scheme
    ks = []
    for node in g.linears(include_head=True):
        m = g.module(node)
        k = getattr(m, "in_features", None)
        if k is None:
            continue
        w, _, _ = scheme.spec_for(node.target, node.meta.get("qpass", {}).get("role"))
        if w == scheme.weight:
            ks.append(int(k))
    return scheme.fit_to(ks)

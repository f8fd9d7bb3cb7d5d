"""A scheme fitted to one model: its group size (Scheme.fit_to: the input sizes K of every float
linear the scheme's own weight spec would quantize, read from the graph, on meta too, so a
streamed run fits the same way as an in-memory one) and its K-quant mix (`q4_k_m`: the tensors
llama.cpp's rule gives more bits, found by structure, become overrides)."""
from __future__ import annotations

import dataclasses

from qpass.specs import Scheme
from qpass.specs.kquant_spec import MIXES, use_more_bits


def scheme_fitted_to(g, scheme) -> Scheme:
    scheme = Scheme.parse(scheme)
    if scheme.mix is not None:
        scheme = mix_overrides(g, scheme)
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


def mix_overrides(g, scheme: Scheme) -> Scheme:
    """`scheme` with its mix (llama-quantize's *_M rule, qpass/specs/kquant_spec.py) as
    overrides in front of its own (which still win): the more-bits type for the value
    projections (attn_v: the v of every v→o pair) and the MLP down projections (ffn_down) of
    the layers use_more_bits(i, n) picks, counted in graph order as llama.cpp counts them, and
    for an output head that is not the embedding (llama.cpp: output -> Q6_K; a tied head stays
    the embedding, kept in high precision)."""
    mix = MIXES[scheme.mix]
    order = {n: i for i, n in enumerate(g.gm.graph.nodes)}
    picked = []
    for nodes in ({p.v for p in g.v_to_o()}, {p.down for p in g.pairs_through_activation()}):
        nodes = sorted(nodes, key=order.get)
        picked += [n.target for i, n in enumerate(nodes) if use_more_bits(i, len(nodes))]
    # tied: the model's config says so (a streamed run holds one copy per stage), else the
    # head's weight is the embedding's
    tied = getattr(getattr(g, "config", None), "tie_embeddings", None)
    embeds = [g.module(n).weight for n in g.nodes("embed") if hasattr(g.module(n), "weight")]
    for n in g.nodes("head"):
        w = getattr(g.module(n), "weight", None)
        if w is not None and not (tied if tied is not None else any(w is e for e in embeds)):
            picked.append(n.target)
    extra = tuple((t, mix.more_bits) for t in picked)
    return dataclasses.replace(scheme, overrides=extra + scheme.overrides, mix=None)

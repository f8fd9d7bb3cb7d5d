"""Shared helpers for quantizing passes (RTN here; GPTQ, AWQ, … reuse them).

    targets = quantize_targets(g, scheme)   # every linear with its specs, in graph order
    shared = shared_global_scales([(n, lin, w) for n, lin, w, _, _ in targets])   # nvfp4
    for node, lin, wspec, aspec, reason in targets:
        if wspec is None and aspec is None:
            continue                        # kept in high precision by a rule (`reason`)
        qw = ...                            # your QuantizedWeight (or None for plain RTN;
                                            # from_float(w, wspec, shared[node]) if shared)
        replace_linear(g, node, QuantLinear.from_linear(lin, wspec, aspec, qweight=qw),
                       reason=reason)

`quantize_targets` validates every spec against its layer's shape BEFORE anything changes, so
a group size that does not divide K raises a SpecError naming the layer and the graph is left
untouched. `replace_linear` swaps the module behind a call_module node (the node, its name
and its users stay), and records in `node.meta["qpass"]` the specs, the reason, and the weight
SQNR against the float weight it replaced — the pipeline report reads them from there."""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn

from qpass import ops
from qpass.errors import SpecError
from qpass.formats import KV_BITS
from qpass.pipeline.group_fit import scheme_fitted_to
from qpass.pipeline.pass_base import Fact, SchemedPass
from qpass.pipeline.verify import sqnr_db
from qpass.specs import QuantSpec, Scheme


def quantize_targets(g, scheme) -> list[tuple[fx.Node, nn.Module, QuantSpec | None,
                                              QuantSpec | None, str]]:
    """[(node, module, weight spec, act spec, reason)] for every float nn.Linear node (incl. the
    head) of `g`. Specs are None where the scheme keeps the layer in high precision. Linears
    already replaced by a quantized module are left out."""
    scheme = scheme_fitted_to(g, scheme)     # one group size for the model where needed
    out = []
    for node in g.linears(include_head=True):
        m = g.module(node)
        if not isinstance(m, nn.Linear):
            continue
        role = node.meta.get("qpass", {}).get("role")
        w, a, reason = scheme.specs_for(node.target, role, m.in_features)   # group fitted to K
        out.append((node, m, w, a, reason))
    return out


def shared_global_scales(linears) -> dict:
    """{node: nvfp4 global scale} for the nvfp4-weight linears among `linears` [(node, float
    nn.Linear, weight spec)] that read the same input as another (q/k/v, gate/up): one float32
    global scale for all of them, 448·6 over the largest absmax among their weights
    (llm-compressor's rule for fused layers, bit for bit). Engines run such siblings as one
    GEMM (vLLM's qkv_proj and gate_up_proj, SGLang's) holding one global scale, the largest
    of the files' (`weight_global_scale.max()`), so a sibling rounded under its own would be
    dequantized there with another one's. Linears alone on their input keep their own."""
    from qpass.formats.floating import nvfp4_global_scale
    from qpass.ir.structure import first_arg_node
    groups: dict = {}
    for node, lin, spec in linears:
        if spec is not None and spec.format == "nvfp4" and first_arg_node(node) is not None:
            groups.setdefault(first_arg_node(node), []).append((node, lin))
    out = {}
    for members in groups.values():
        if len(members) < 2:
            continue
        amax = torch.stack([lin.weight.detach().abs().amax().to(torch.float32)
                            for _, lin in members]).amax()
        g = nvfp4_global_scale(amax.reshape(1))
        out.update({node: g.clone() for node, _ in members})     # one tensor each
    return out


class WeightRounding(SchemedPass):
    """Base of the weight-rounding passes (RTN, GPTQ): under their scheme they provide
    WEIGHTS_QUANTIZED, and ACTS_QUANTIZED too when the scheme has a dynamic activation spec
    (set on every QuantLinear they build; a static one waits for ObserveActivations)."""
    ABSTRACT = True
    provides = frozenset({Fact.WEIGHTS_QUANTIZED})

    def scheme_provides(self) -> frozenset:
        # a scheme without a weight spec (e.g. K/V quantization only) rounds no weight
        facts = {Fact.WEIGHTS_QUANTIZED} if self.scheme.weight is not None else set()
        # static activation specs are quantized once ObserveActivations calibrated them
        if self.scheme.act is not None and self.scheme.act.dynamic:
            facts.add(Fact.ACTS_QUANTIZED)
        return frozenset(facts)


def set_submodule(root: nn.Module, target: str, module: nn.Module) -> None:
    parent, _, attr = target.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, attr, module)


def replace_linear(g, node: fx.Node, new_module: nn.Module, reason: str | None = None) -> None:
    """Put `new_module` behind `node` (a call_module linear) and record specs and weight SQNR
    in node.meta["qpass"]. The old module's float weight is the SQNR reference."""
    old = g.module(node)
    meta = node.meta.setdefault("qpass", {})
    ws, as_ = getattr(new_module, "weight_spec", None), getattr(new_module, "act_spec", None)
    meta["weight_spec"] = None if ws is None else str(ws)
    meta["act_spec"] = None if as_ is None else str(as_)
    if reason:
        meta["quant_reason"] = reason
    old_w = getattr(old, "weight", None)
    if isinstance(old_w, torch.Tensor) and old_w.device.type != "meta" and \
            hasattr(new_module, "dequantized_weight"):
        meta["weight_sqnr_db"] = sqnr_db(old_w, new_module.dequantized_weight(torch.float64))
    set_submodule(g.gm, node.target, new_module)


def mark_attention(g, scheme, nodes=None) -> list[str]:
    """Give every attention node the scheme's K/V bits (a `kv8` / `kv4` suffix): the node then
    quantizes K/V per head per token and runs integer Q·Kᵀ and P·V (qpass.ops.attention's
    kv_bits; Lower maps it to qpass::attention_kv). `nodes`: only those (the stage's: a
    later stage's attention stays float until its own passes ran there).
    Returns the nodes marked."""
    scheme = Scheme.parse(scheme)
    marked = []
    for node in (g.graph.nodes if nodes is None else nodes):
        if node.op != "call_function" or node.target is not ops.attention:
            continue
        _, spec, _ = scheme.spec_for(str(node.name), "attention")
        if spec is None:
            continue
        if not (spec.symmetric and spec.granularity == "token" and spec.bits in KV_BITS):
            raise SpecError(f"attention spec {spec} is not supported: K/V are quantized "
                            f"symmetric per token with bits in {KV_BITS} (scheme suffix kv8/kv4)")
        causal = node.args[4] if len(node.args) > 4 else node.kwargs.get("causal", False)
        if causal:
            raise SpecError(f"{node.name}: quantized K/V attention serves bidirectional "
                            f"denoisers, this one is causal; drop the kv suffix")
        node.kwargs = {**node.kwargs, "kv_bits": spec.bits}
        node.meta.setdefault("qpass", {})["attn_spec"] = str(spec)
        marked.append(node.name)
    return marked

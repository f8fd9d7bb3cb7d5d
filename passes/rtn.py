"""RTN: round-to-nearest weight quantization per spec (DESIGN §3, §4).

Every linear the scheme covers becomes a QuantLinear with packed integer weights (codes by
qpass.formats, the one owner of the convention); its activations are fake-quantized per the
scheme's act spec (dynamic per token) for simulation until lowering replaces the module."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qpass.errors import PipelineError
from qpass.ir.qlinear import QuantLinear
from qpass.pipeline.pass_base import PassContext, PassResult

from ._quantize_common import (WeightRounding, mark_attention, quantize_targets, replace_linear,
                               shared_global_scales)


@dataclass(eq=False, repr=False)
class RTN(WeightRounding):
    """RTN(scheme=None): a scheme name (`"w4a16g128"`, `"w4a4"`), a Scheme, or a weight spec
    string (`"int4:g128:sym"`, activations then stay unquantized); None reads the pipeline's."""
    scheme: Any = None

    def __repr__(self) -> str:
        return f"RTN({self.scheme.name!r})"

    def run(self, g, ctx: PassContext) -> PassResult:
        """The linears of this stage (every spec validated against its layer first)."""
        nodes = ctx.nodes
        return self._round(g, ctx, [t for t in quantize_targets(g, self.scheme) if t[0] in nodes],
                           ctx.stage.nodes)

    def round_weight(self, W, H=None, spec=None, n_tokens: int = 0):
        """One weight matrix (N, K) rounded to `spec`: the QuantizedWeight (H unused). What
        a model captured as it is (qpass.pipeline.as_is_run) calls per linear and per
        expert, where there is no graph stage to run on."""
        from qpass.formats import QuantizedWeight
        return QuantizedWeight.from_float(W.float(), spec)

    def _round(self, g, ctx: PassContext, targets, nodes=None) -> PassResult:
        if any(t[1].weight.device.type == "meta" for t in targets):
            raise PipelineError("RTN needs real weights, but the model is on the meta device "
                                "(structure only); for a planned coverage table use "
                                "qpass.pipeline.coverage(g, scheme)")
        todo = [t for t in targets if t[2] is not None or t[3] is not None]
        task = ctx.task("RTN: rounding weights", total=len(todo))
        res = PassResult()
        from qpass.formats import QuantizedWeight
        shared = shared_global_scales([(t[0], t[1], t[2]) for t in todo])     # nvfp4 siblings
        for node, lin, wspec, aspec, reason in todo:
            qw = None if node not in shared else \
                QuantizedWeight.from_float(lin.weight.detach().float(), wspec, shared[node])
            replace_linear(g, node, QuantLinear.from_linear(lin, wspec, aspec, qweight=qw),
                           reason=reason)
            res.nodes_changed.append(node.name)
            ctx.advance(task)
        kept = [t for t in targets if t[2] is None and t[3] is None]
        marked = mark_attention(g, self.scheme, nodes)
        res.nodes_changed += marked
        res.metrics.update(quantized=len(todo), kept=len(kept), kv_quantized_attention=len(marked))
        res.notes += [f"{t[0].target}: {t[4]}" for t in kept]
        return res

"""Lower: the last pass. Replaces simulated quantized nodes with kernel ops (DESIGN §6).

* every QuantLinear whose specs an integer kernel covers becomes a `LoweredLinear` calling
  `qpass::linear_w4a16` (weight-only, any bits), `linear_w8a8`, `linear_w4a8` or `linear_w4a4`
  (symmetric weights × dynamic symmetric per-token activations); fp8 W8A8 and nvfp4/mxfp4
  weight-only ones a `LoweredFloatLinear` (`qpass::linear_fp8`, `linear_fp4a16`); others stay
  simulated, noted;
* attention nodes (`qpass.ops.attention`) call `qpass::attention`, in int8 Q·Kᵀ mode only when
  asked (node meta `attn_spec`, or `attention_int8=True`); nodes a `kv<bits>` scheme marked
  (kwarg kv_bits) call `qpass::attention_kv` over per-token quantized K/V;
* online Hadamards (role "hadamard": Rotate's `online_hadamard` calls or modules with
  `qpass_role = "hadamard"`) call `qpass::hadamard`;
* with fuse_act_quant (default), an RMSNorm or silu(gate)·up whose users are all integer
  linears with one per-token activation spec emits their int8 codes + scales itself
  (passes/_fuse_act_quant.py); those linears then run qpass::linear_int_codes (stage-wise
  too: the stage's node list follows the rewrite).
For each node the backend the registry would pick on the model's device and dtype is recorded
in the metrics, with the reason for every backend passed over. With backend="auto" the lowered
module re-selects at run time, so a model lowered on CPU uses Triton once moved to CUDA."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.fx as fx

from qpass import ops
from qpass.runtime import binding, lowered, lowered_float
from qpass.backends import registry
from qpass.ir.qlinear import QuantLinear
from qpass.pipeline.pass_base import Fact, Pass, PassContext, PassResult

from . import _fuse_act_quant


def lowered_kind(q: QuantLinear) -> tuple[str | None, str]:
    """Which op runs this QuantLinear (an integer kind of lowered.KINDS or a float one of
    lowered_float.KINDS), or (None, why not)."""
    static = getattr(q, "act_scale", None) is not None
    if any(s is not None and s.is_float for s in (q.weight_spec, q.act_spec)):
        return lowered_float.float_kernel_kind(q.weight_spec, q.act_spec, static)
    return lowered.kernel_kind(q.weight_spec, q.act_spec, static_act=static)


def _last_dim(node) -> int | None:
    tm = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    shape = getattr(tm, "shape", None)
    return int(shape[-1]) if shape else None


@dataclass(eq=False, repr=False)
class Lower(Pass):
    """Lower(backend="auto"): "auto" picks per device at run time; a backend name pins it
    (falling back, with the reason recorded, when it cannot run an op)."""

    backend: str = "auto"
    attention: bool = True
    attention_int8: bool | None = None
    hadamard: bool = True
    fuse_act_quant: bool = True
    requires_any = frozenset({Fact.WEIGHTS_QUANTIZED, Fact.ACTS_QUANTIZED})
    provides = frozenset({Fact.LOWERED})
    is_lowering = True

    def run(self, g, ctx: PassContext) -> PassResult:
        """This stage's quantized linears, attention and Hadamard nodes; the kernel choice is
        made for the device and dtype of this stage's weights (the only real ones when the
        run streams)."""
        stage = ctx.stage
        mods = [g.gm.get_submodule(t) for t in
                dict.fromkeys(n.target for n in stage.nodes if n.op == "call_module")]
        params = [p for m in mods for p in m.parameters(recurse=False)] + \
                 [b for m in mods for b in m.buffers(recurse=False)]
        return self._lower(g, list(stage.nodes), params, fuse=self.fuse_act_quant,
                           stage=stage)

    def _lower(self, g, nodes: list, params: list, fuse: bool = False, stage=None
               ) -> PassResult:
        if self.backend != "auto":
            registry.get(self.backend)          # unknown name: BackendError before any change
        params = [t for t in params if t.is_floating_point() and t.device.type != "meta"]
        device = params[0].device if params else torch.device("cpu")
        dtype = params[0].dtype if params else torch.float32
        res = PassResult()
        chosen: dict[str, str] = {}
        fallbacks: list[dict] = []
        kernels: list[dict] = []        # per node: the kernel chosen and why (the manifest keeps it)

        def choose(node_name: str, op: str, spec: dict) -> None:
            row, skipped = binding.choose(node_name, op, spec, device, dtype, self.backend)
            chosen[node_name] = row["backend"]
            kernels.append(row)
            for name, why in skipped:
                fallbacks.append({"node": node_name, "op": op, "skipped": name,
                                  "chosen": row["backend"], "reason": why})

        kept = 0
        for node in nodes:
            if node.op == "call_module" and isinstance(g.module(node), QuantLinear):
                q = g.module(node)
                kind, why = lowered_kind(q)
                if kind is None:
                    kept += 1
                    res.notes.append(f"{node.target}: kept simulated ({why})")
                    kernels.append({"node": node.name, "op": None, "backend": "simulated",
                                    "why": why})
                    continue
                m = lowered_float.LoweredFloatLinear.from_quant_linear(q, self.backend) \
                    if kind in lowered_float.KINDS else \
                    lowered.LoweredLinear.from_quant_linear(q, kind, self.backend)
                _set_submodule(g.gm, node.target, m)
                op, spec = binding.linear_request(m)
                choose(node.name, op, spec)
                node.meta.setdefault("qpass", {}).update(lowered=op, backend=chosen[node.name])
                res.nodes_changed.append(node.name)
            elif node.op == "call_function" and node.target is ops.attention and self.attention:
                self._lower_attention(node, choose, res)
            elif self.hadamard and _is_hadamard(g, node):
                self._lower_hadamard(g, node, choose, res)
        if fuse:
            self._fuse_producers(g, nodes, device, dtype, choose, kernels, res, stage)
        counts: dict[str, int] = {}
        for name in chosen.values():
            counts[name] = counts.get(name, 0) + 1
        res.metrics.update(lowered=len(res.nodes_changed), kept_simulated=kept,
                           device=str(device), dtype=str(dtype).replace("torch.", ""),
                           backends=chosen, backend_counts=counts, fallbacks=fallbacks,
                           kernels=kernels)
        seen = set()
        for f in fallbacks:
            key = (f["op"], f["skipped"], f["reason"])
            if key not in seen:
                seen.add(key)
                res.notes.append(f"{f['op']}: {f['skipped']} passed over for {f['chosen']} "
                                 f"({f['reason']})")
        return res

    def _fuse_producers(self, g, nodes, device, dtype, choose, kernels, res, stage) -> None:
        fused, added, erased = _fuse_act_quant.fuse(g.gm, nodes, self.backend, _set_submodule)
        if not fused:
            return
        if stage is not None:       # the stage re-runs its (now rewritten) nodes
            keep = (set(stage.nodes) - set(erased)) | set(added)
            stage.nodes[:] = [n for n in g.graph.nodes if n in keep]
        names = set(fused)
        consumers = {u.name for n in g.graph.nodes if n.name in names
                     for gi in n.users for u in gi.users}
        kernels[:] = [r for r in kernels if r["node"] not in consumers]
        for name, op, spec, _ in binding.requests(g.gm, dtype=dtype):
            if name in names or name in consumers:
                choose(name, op, spec)
        res.notes.append(f"per-token activation quantization fused into {len(fused)} "
                         f"producers (RMSNorm / silu·mul) feeding {len(consumers)} integer "
                         f"linears (qpass::linear_int_codes)")

    def _lower_attention(self, node: fx.Node, choose, res: PassResult) -> None:
        args, kw = list(node.args), dict(node.kwargs)
        q, k, v = args[:3]
        key_mask = args[3] if len(args) > 3 else kw.get("key_mask")
        causal = args[4] if len(args) > 4 else kw.get("causal", False)
        kv_bits = int(args[5] if len(args) > 5 else kw.get("kv_bits", 0))
        meta = node.meta.setdefault("qpass", {})
        if args[6] if len(args) > 6 else kw.get("block_size", 0):
            # block diffusion's block-causal mask has no attention kernel yet: the node keeps
            # running qpass.ops.attention (SDPA with the mask), said once in the report
            meta.update(lowered=None, backend=None)
            note = "block-causal attention (block diffusion) kept on qpass.ops.attention: no kernel"
            if note not in res.notes:
                res.notes.append(note)
            return
        int8 = self.attention_int8
        if int8 is None:
            spec = meta.get("attn_spec")
            int8 = spec is not None and str(spec).startswith("int8")
        node.target = lowered.attention
        node.args = (q, k, v, key_mask, causal)
        if kv_bits:    # quantized K/V (kv8/kv4): integer Q·Kᵀ and P·V on qpass::attention_kv
            node.kwargs = {"int8": False, "backend": self.backend, "kv_bits": kv_bits}
            choose(node.name, "attention_kv", dict(D=_last_dim(q)))
        else:
            node.kwargs = {"int8": bool(int8), "backend": self.backend}
            choose(node.name, "attention", dict(D=_last_dim(q), int8=bool(int8),
                                                causal=bool(causal)))
        meta.update(lowered="attention", backend=None)
        res.nodes_changed.append(node.name)

    def _lower_hadamard(self, g, node: fx.Node, choose, res: PassResult) -> None:
        x = node.args[0]
        signs = node.args[1] if len(node.args) > 1 else node.kwargs.get("signs")
        if node.op == "call_module":
            mod = g.module(node)
            if isinstance(getattr(mod, "signs", None), torch.Tensor):
                with g.graph.inserting_before(node):
                    signs = g.graph.get_attr(f"{node.target}.signs")
            node.op = "call_function"
        node.target = lowered.hadamard
        node.args = (x, signs)
        node.kwargs = {"backend": self.backend}
        choose(node.name, "hadamard", dict(n=_last_dim(x)))
        node.meta.setdefault("qpass", {}).update(lowered="hadamard")
        res.nodes_changed.append(node.name)


def _is_hadamard(g, node: fx.Node) -> bool:
    if node.op == "call_function":
        return getattr(node.target, "qpass_role", None) == "hadamard" and \
            node.target is not lowered.hadamard
    if node.op == "call_module":
        return getattr(g.module(node), "qpass_role", None) == "hadamard"
    return False


def _set_submodule(root: torch.nn.Module, path: str, module: torch.nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)

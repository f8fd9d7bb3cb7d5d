"""Trace any module's own forward to an fx graph, with the values alongside (DESIGN §2, §7).

torch.fx's symbolic tracer stops at the first line of a transformers layer
(`hidden_shape = (*input_shape, -1, self.head_dim)` iterates a Proxy). This tracer runs the
forward on real example inputs while it records, so every Proxy carries the value it has on
those inputs: Python that asks about shapes (`len(x.shape)`, `*x.shape[:-1]`, `if L > 1`)
gets the answer and goes on, while tensor ops — including the shape arithmetic that feeds
them — stay graph nodes, so the graph still runs on other sequence lengths. A branch on a
tensor's *values* (`if (x > 0).any()`) is data-dependent control flow: one CaptureError
naming the line, never a silent specialisation.

Leaves: the modules with a qpass role (linears, norms, embeddings; qpass.ir.roles) and fused
expert stores (modules holding 3-D parameters, one slice per expert: their forward loops
over the experts hit by the routing, which is data). transformers' attention is called
through its registry; `traced_attention` routes it to `qpass.ops.hf_attention`, one node."""
from __future__ import annotations

import contextlib
import operator
from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn
from torch.fx.node import map_aggregate

from .. import ops
from ..errors import CaptureError
from .capture import QpassTracer, _user_frame

# attributes whose value is fixed for a trace: answered from the value, no node
_STATIC_ATTRS = {"dtype", "device", "ndim", "is_cuda", "is_meta", "requires_grad", "layout"}


def is_expert_store(m: nn.Module) -> bool:
    """A module holding its experts' weights as 3-D parameters (E, out, in) (DiffusionGemma,
    transformers' fused MoE classes): at least two (up/gate and down), all with the same
    leading dim E (one 3-D table, e.g. a vision position table, is not an expert store)."""
    p3 = [p for p in m.parameters(recurse=False) if p.dim() == 3]
    return len(p3) >= 2 and len({p.shape[0] for p in p3}) == 1


def _value(a):
    return map_aggregate(a, lambda x: x.value if isinstance(x, ValueProxy) else
                         (x.value if isinstance(x, ValueAttribute) else x))


class ValueProxy(fx.Proxy):
    """A Proxy that knows its value on the example inputs (module doc)."""
    value: Any = None

    def __getattr__(self, k):
        if k in _STATIC_ATTRS:
            return getattr(self.value, k)
        return ValueAttribute(self, k)

    def __len__(self):
        return len(self.value)

    def __iter__(self):
        return iter([self[i] for i in range(len(self.value))])

    def __bool__(self):
        v = self.value
        if isinstance(v, torch.Tensor):
            raise fx.proxy.TraceError("data-dependent control flow: a branch on a tensor's values")
        return bool(v)

    def __index__(self):
        return operator.index(self.value)

    def __int__(self):
        return int(self.value)

    def __float__(self):
        return float(self.value)

    def keys(self):
        return self.value.keys()

    def __contains__(self, item):
        return item in self.value


class ValueAttribute(fx.proxy.Attribute):
    """`proxy.attr` before it is known whether it is read or called."""

    @property
    def value(self):
        return getattr(self.root.value, self.attr)

    def __len__(self):
        return len(self.value)

    def __iter__(self):
        return iter([self[i] for i in range(len(self.value))])

    def __bool__(self):
        return bool(self.value)

    def __index__(self):
        return operator.index(self.value)


class ValueTracer(QpassTracer):
    """QpassTracer (leaf modules, wrapped qpass ops) that computes values as it records."""

    def __init__(self, inputs: dict[str, Any]):
        super().__init__()
        self.inputs = inputs

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return is_expert_store(m) or super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        """A module the root does not hold (transformers wraps hub kernels such as LLaMA's
        rotary function in one) is traced through, like a function."""
        try:
            self.path_of_module(m)
        except NameError:
            return forward(*args, **kwargs)
        return super().call_module(m, forward, args, kwargs)

    def proxy(self, node: fx.Node) -> ValueProxy:
        return ValueProxy(node, self)

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None,
                     proxy_factory_fn=None):
        p = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        if kind == "placeholder":
            p.value = self.inputs.get(str(target).lstrip("*"))
        elif kind == "get_attr":
            with _untraced():
                p.value = _fetch(self.root, target)
        else:
            a, kw = _value(args), _value(kwargs)
            with _untraced():
                p.value = _evaluate(self.root, kind, target, a, kw)
        p.node.meta["value_shape"] = tuple(p.value.shape) \
            if isinstance(p.value, torch.Tensor) else None
        return p


def _evaluate(root, kind, target, a, kw):
    if kind == "call_function":
        return target(*a, **kw)
    if kind == "call_method":
        return getattr(a[0], target)(*a[1:], **kw)
    return root.get_submodule(target)(*a, **kw)


def _untraced():
    """fx patches nn.Module.__call__ and wrapped functions while it traces; computing a
    value must run the real ones (torch's own revert hook)."""
    from torch.fx import _symbolic_trace as st
    revert = getattr(st, "_maybe_revert_all_patches", None)
    return revert() if revert is not None else contextlib.nullcontext()


def _fetch(root: nn.Module, target: str):
    obj = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


@contextlib.contextmanager
def traced_attention(model: nn.Module):
    """transformers models call attention through `config._attn_implementation`; for the
    trace it is qpass's registered implementation, one `ops.hf_attention` node."""
    configs = [m.config for m in model.modules() if hasattr(getattr(m, "config", None),
                                                              "_attn_implementation")]
    if not configs:
        yield
        return
    from transformers import AttentionInterface
    AttentionInterface.register("qpass_trace", _hf_attention_entry)
    unique = list({id(c): c for c in configs}.values())
    saved = [(c, c._attn_implementation) for c in unique]
    try:
        for c, _ in saved:
            c._attn_implementation = "qpass_trace"
        yield
    finally:
        for c, impl in saved:
            c._attn_implementation = impl


def _hf_attention_entry(module, query, key, value, attention_mask, dropout=0.0, scaling=None,
                        is_causal=None, **kwargs):
    """transformers' attention-interface signature → qpass.ops.hf_attention (the module
    argument and training-only kwargs stay out of the graph)."""
    if kwargs.get("softcap") is not None:
        raise CaptureError("attention logit softcapping is not supported by qpass's attention "
                           "op yet")
    causal = bool(getattr(module, "is_causal", True)) if is_causal is None else bool(is_causal)
    args = (query, key, value, attention_mask, scaling, causal)
    if isinstance(query, fx.Proxy):      # one node (the tracer autowraps only module globals)
        return query.tracer.create_proxy("call_function", ops.hf_attention, args, {}), None
    return ops.hf_attention(*args), None


def trace_module(module: nn.Module, args: tuple = (), kwargs: dict | None = None,
                 concrete: dict | None = None) -> fx.GraphModule:
    """`module`'s own forward as a GraphModule, traced on the example `args`/`kwargs`
    (tensors, tuples of tensors, None). `concrete` fixes non-tensor arguments (a cache
    object, flags) as constants. CaptureError names the offending line."""
    import inspect
    kwargs = dict(kwargs or {})
    concrete = dict(concrete or {})
    sig = inspect.signature(module.forward)
    params = [p for p in sig.parameters.values()
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    inputs = {}
    for p, a in zip(params, args):
        inputs[p.name] = a
    inputs.update({k: v for k, v in kwargs.items() if k in sig.parameters})
    for p in params:              # everything not given is a constant: its default
        if p.name not in inputs and p.name not in concrete:
            concrete[p.name] = p.default if p.default is not p.empty else None
        elif p.name in inputs and not _traceable(inputs[p.name]):
            concrete[p.name] = inputs.pop(p.name)
    tracer = ValueTracer(inputs)
    root = _call_root(module, list(inputs), concrete)
    try:
        with traced_attention(module):
            graph = tracer.trace(root)
    except CaptureError:
        raise
    except Exception as e:
        import sys
        where = _user_frame(sys.exc_info()[2])
        raise CaptureError(f"cannot trace {type(module).__name__}: {type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else e!r} at {where}") from None
    for n in graph.nodes:          # targets as the module names them (not "inner.…")
        if n.op in ("call_module", "get_attr"):
            n.target = n.target[len("inner."):]
    gm = fx.GraphModule(module, graph, type(module).__name__)
    gm.meta["inputs"] = list(inputs)
    return gm


def _call_root(inner: nn.Module, names: list[str], concrete: dict) -> nn.Module:
    """A root with one named parameter per traced input (fx cannot make placeholders for a
    forward that takes **kwargs, as transformers' layers do); it calls `inner` by keyword."""
    for n in names:
        if not n.isidentifier():
            raise CaptureError(f"cannot trace {type(inner).__name__}: input name {n!r}")
    ns: dict = {}
    exec(f"def forward(self, {', '.join(names)}):\n"
         f"    return self.inner({''.join(f'{n}={n}, ' for n in names)}**self.concrete)\n", ns)
    cls = type("TracedCall", (nn.Module,), {"forward": ns["forward"]})
    root = cls()
    root.inner, root.concrete = inner, concrete
    return root


def _traceable(v) -> bool:
    """Tensors (or tuples/lists of them) become graph inputs; other values are constants."""
    if isinstance(v, torch.Tensor):
        return True
    if isinstance(v, (tuple, list)) and v:
        return all(isinstance(x, torch.Tensor) for x in v)
    return False

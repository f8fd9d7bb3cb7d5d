"""A GraphModule as JSON + tensors, rebuilt without pickle (docs/FORMATS.md "Compiled
checkpoint").

The graph is a list of nodes (op, name, target, args, kwargs); call_function targets are
written as qualified names and resolved on load only from an allow-list (operator, builtins
getattr, public torch / torch.nn.functional functions, qpass.ops, torch.ops.qpass, and
functions registered with `register_function`) — never by importing an arbitrary path. Leaf
modules are (class name from the registry, constructor kwargs); their tensors come from
safetensors. Other developers add classes and functions with `register_module_class` /
`register_function` (re-exported by qpass.runtime.compiled)."""
from __future__ import annotations

import importlib
import operator
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from qpass import ops
from qpass.errors import CheckpointError

_MODULE_CLASSES: dict[str, tuple[type, Callable[[nn.Module], dict]]] = {}
_FUNCTIONS: dict[str, Callable] = {}
_NAMESPACES = {"operator": operator, "torch": torch, "torch.nn.functional": F, "qpass.ops": ops}


def register_module_class(cls: type, init_kwargs: Callable[[nn.Module], dict] | None = None,
                          name: str | None = None) -> type:
    """Allow `cls` in compiled checkpoints. `init_kwargs(module) -> dict` (JSON values) gives
    the constructor arguments that rebuild it (shapes only: tensors are loaded afterwards);
    default: the module's own `qpass_init_kwargs()` method. Usable as a decorator."""
    if init_kwargs is None:
        if not hasattr(cls, "qpass_init_kwargs"):
            raise TypeError(f"{cls.__name__}: give init_kwargs= or define qpass_init_kwargs()")
        init_kwargs = lambda m: m.qpass_init_kwargs()  # noqa: E731
    _MODULE_CLASSES[name or cls.__name__] = (cls, init_kwargs)
    return cls


def register_function(fn: Callable, name: str | None = None) -> Callable:
    """Allow `fn` as a call_function target in compiled checkpoints. Usable as a decorator."""
    _FUNCTIONS[name or f"{fn.__module__}.{fn.__qualname__}"] = fn
    return fn


_builtins_done = False


def _register_builtins() -> None:
    global _builtins_done
    if _builtins_done:
        return
    _builtins_done = True
    from qpass.runtime import lowered, online
    from qpass.ir.qlinear import QuantLinear
    from qpass.models.denoiser import RMSNorm
    register_module_class(nn.Linear, lambda m: {"in_features": m.in_features, "out_features":
                                                m.out_features, "bias": m.bias is not None})
    register_module_class(nn.Embedding, lambda m: {"num_embeddings": m.num_embeddings,
                                                   "embedding_dim": m.embedding_dim,
                                                   "padding_idx": m.padding_idx})
    register_module_class(nn.LayerNorm, lambda m: {"normalized_shape": list(m.normalized_shape),
                                                   "eps": m.eps, "elementwise_affine":
                                                   m.elementwise_affine, "bias": m.bias is not None})
    register_module_class(RMSNorm, lambda m: {"dim": m.weight.shape[0], "eps": m.eps})
    register_module_class(QuantLinear, lambda m: {
        "in_features": m.in_features, "out_features": m.out_features,
        "weight_spec": None if m.weight_spec is None else str(m.weight_spec),
        "act_spec": None if m.act_spec is None else str(m.act_spec), "bias": m.bias is not None})
    register_module_class(lowered.LoweredLinear)
    # stable on-disk names (checkpoints written before the runtime/ move use them too)
    register_function(lowered.attention, "qpass.lowered.attention")
    register_function(lowered.hadamard, "qpass.lowered.hadamard")
    register_function(online.online_hadamard, "qpass.online.online_hadamard")
    register_function(online.channel_transform, "qpass.online.channel_transform")
    register_function(getattr, "builtins.getattr")


# ----- function names ------------------------------------------------------------------------
def function_name(fn) -> str:
    for key, f in _FUNCTIONS.items():
        if f is fn:
            return key
    if isinstance(fn, torch._ops.OpOverload):
        return f"torch.ops.{fn.namespace}.{fn._opname}.{fn._overloadname}"
    if isinstance(fn, torch._ops.OpOverloadPacket):
        return f"torch.ops.{fn._qualified_op_name.replace('::', '.')}"
    name = getattr(fn, "__name__", None)
    for ns_name, ns in _NAMESPACES.items():
        if name and not name.startswith("_") and getattr(ns, name, None) is fn:
            return f"{ns_name}.{name}"
    raise CheckpointError(f"graph calls {fn!r}, which is not allow-listed for compiled checkpoints; "
                          f"register it with qpass.runtime.compiled.register_function")


def _import_qpass_module(dotted: str) -> None:
    """Import qpass's own module `dotted` (never anything outside the qpass package), so that
    the registrations it makes at import time exist when a checkpoint is loaded in a fresh
    process. The name must still be registered afterwards to be used."""
    if not dotted.startswith("qpass.") or not all(p.isidentifier() for p in dotted.split(".")):
        return
    try:
        importlib.import_module(dotted)
    except ImportError:
        pass


def resolve_function(key: str) -> Callable:
    if key not in _FUNCTIONS and key.startswith("qpass."):
        _import_qpass_module(key.rpartition(".")[0])
    if key in _FUNCTIONS:
        return _FUNCTIONS[key]
    if key.startswith("torch.ops.qpass."):
        obj: Any = torch.ops.qpass
        for part in key.split(".")[3:]:
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None:
            return obj
    ns_name, _, name = key.rpartition(".")
    ns = _NAMESPACES.get(ns_name)
    fn = getattr(ns, name, None) if ns is not None and not name.startswith("_") else None
    if not callable(fn):
        raise CheckpointError(f"graph function {key!r} is not allow-listed; the checkpoint needs "
                              f"a qpass version (or plugin) that registers it")
    return fn


# ----- values --------------------------------------------------------------------------------
def encode(x):
    if isinstance(x, fx.Node):
        return {"node": x.name}
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if isinstance(x, tuple):
        return {"tuple": [encode(v) for v in x]}
    if isinstance(x, list):
        return [encode(v) for v in x]
    if isinstance(x, dict):
        return {"dict": [[k, encode(v)] for k, v in x.items()]}
    if isinstance(x, slice):
        return {"slice": [encode(x.start), encode(x.stop), encode(x.step)]}
    if x is Ellipsis:
        return {"ellipsis": True}
    if isinstance(x, torch.dtype):
        return {"dtype": str(x).removeprefix("torch.")}
    if isinstance(x, torch.device):
        return {"device": str(x)}
    raise CheckpointError(f"cannot store graph argument {x!r} ({type(x).__name__}) in a checkpoint")


def decode(x, env: dict[str, fx.Node]):
    if isinstance(x, list):
        return [decode(v, env) for v in x]
    if not isinstance(x, dict):
        return x
    if "node" in x:
        if x["node"] not in env:
            raise CheckpointError(f"graph refers to unknown node {x['node']!r}")
        return env[x["node"]]
    if "tuple" in x:
        return tuple(decode(v, env) for v in x["tuple"])
    if "dict" in x:
        return {k: decode(v, env) for k, v in x["dict"]}
    if "slice" in x:
        return slice(*(decode(v, env) for v in x["slice"]))
    if "ellipsis" in x:
        return Ellipsis
    if "dtype" in x:
        dt = getattr(torch, x["dtype"], None)
        if not isinstance(dt, torch.dtype):
            raise CheckpointError(f"unknown dtype {x['dtype']!r} in graph")
        return dt
    if "device" in x:
        return torch.device(x["device"])
    raise CheckpointError(f"unknown encoded value {x!r}")


# ----- graph and modules ---------------------------------------------------------------------
def graph_to_json(gm: fx.GraphModule) -> dict:
    """{"nodes": [...], "modules": {target: {"class", "kwargs"}}}."""
    nodes, modules = [], {}
    for n in gm.graph.nodes:
        target = function_name(n.target) if n.op == "call_function" else n.target
        nodes.append({"op": n.op, "name": n.name, "target": target, "args": encode(n.args),
                      "kwargs": encode(dict(n.kwargs))})
        if n.op == "call_module" and n.target not in modules:
            modules[n.target] = module_entry(gm.get_submodule(n.target), n.target)
    return {"nodes": nodes, "modules": modules}


def module_entry(m: nn.Module, target: str = "") -> dict:
    """The graph-format entry of one module: registered class name, defining module,
    constructor kwargs, and buffers registered as None."""
    _register_builtins()
    by_cls = {cls: name for name, (cls, _) in _MODULE_CLASSES.items()}
    if type(m) not in by_cls:
        raise CheckpointError(f"module {target!r} is a {type(m).__name__}, which is not "
                              f"registered for compiled checkpoints; register it with "
                              f"qpass.runtime.compiled.register_module_class")
    name = by_cls[type(m)]
    # buffers registered as None (e.g. a symmetric spec's zeros) hold no tensor but must
    # exist as attributes after the rebuild
    none_buffers = [k for k, v in m._buffers.items() if v is None]
    return {"class": name, "module": type(m).__module__, "kwargs": _MODULE_CLASSES[name][1](m),
            "none_buffers": none_buffers}


def _set_path(root: nn.Module, path: str, module: nn.Module) -> None:
    owner, name = _owner(root, path)
    owner.add_module(name, module)


def _owner(root: nn.Module, path: str) -> tuple[nn.Module, str]:
    parts = path.split(".")
    cur = root
    for p in parts[:-1]:
        if not hasattr(cur, p):
            cur.add_module(p, nn.Module())
        cur = getattr(cur, p)
    return cur, parts[-1]


def build_graph_module(spec: dict, tensors: dict[str, torch.Tensor], tensor_kinds: dict) -> fx.GraphModule:
    """Rebuild the GraphModule from graph_to_json output, the tensors and their kinds
    ({name: {"kind": "param"|"buffer", "alias_of": name|None, ...}})."""
    _register_builtins()
    try:
        root = nn.Module()
        for path, ms in spec["modules"].items():
            if ms["class"] not in _MODULE_CLASSES:
                _import_qpass_module(str(ms.get("module", "")))
            if ms["class"] not in _MODULE_CLASSES:
                raise CheckpointError(f"module {path!r} has class {ms['class']!r}, which is not "
                                      f"registered; import the package that registers it")
            cls = _MODULE_CLASSES[ms["class"]][0]
            with torch.device("meta"):
                mod = cls(**ms["kwargs"])
            for b in ms.get("none_buffers", []):
                mod.register_buffer(b, None)
            _set_path(root, path, mod)
        for name, info in tensor_kinds.items():
            owner, attr = _owner(root, name)
            src = info.get("alias_of") or name
            if src not in tensors:
                raise CheckpointError(f"tensor {src!r} is missing from model.safetensors")
            t = tensors[src]
            if info["kind"] == "param":
                if info.get("alias_of"):
                    a_owner, a_attr = _owner(root, src)
                    setattr(owner, attr, getattr(a_owner, a_attr))
                else:
                    setattr(owner, attr, nn.Parameter(t, requires_grad=info.get("requires_grad", False)))
            else:
                if attr in owner._parameters:
                    del owner._parameters[attr]
                owner.register_buffer(attr, t, persistent=info.get("persistent", True))
        for name, t in list(root.named_parameters()) + list(root.named_buffers()):
            if t.device.type == "meta":
                raise CheckpointError(f"tensor {name!r} is missing from the checkpoint")
        graph = fx.Graph()
        env: dict[str, fx.Node] = {}
        for nd in spec["nodes"]:
            op = nd["op"]
            target = resolve_function(nd["target"]) if op == "call_function" else nd["target"]
            if op in ("call_method", "get_attr", "call_module") and \
                    (not isinstance(target, str) or target.startswith("__") and target.endswith("__")
                     and target != "__getitem__"):
                raise CheckpointError(f"node {nd['name']!r}: bad target {target!r}")
            node = graph.create_node(op, target, decode(nd["args"], env), decode(nd["kwargs"], env),
                                     name=nd["name"])
            env[nd["name"]] = node
        graph.lint()
        return fx.GraphModule(root, graph, "CompiledGraph")
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as e:
        raise CheckpointError(f"cannot rebuild the compiled graph: {type(e).__name__}: {e}") from None

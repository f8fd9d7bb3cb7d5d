"""A GraphModule as JSON + tensors, rebuilt without pickle and without naming Python callables
(docs/FORMATS.md "Compiled checkpoint", "Graph vocabulary", "Threat model").

The graph is a list of nodes (op, name, target, args, kwargs). Computing nodes name an entry of
the closed vocabulary in qpass.runtime.graph_vocab, whose argument types are checked on load;
get_attr names a stored tensor, call_module a stored module, and module classes come from a
registry of qpass's own classes (plus those a plugin registers in this process). Nothing is
imported, looked up by attribute or executed on behalf of the file, and every name that torch.fx
writes into the generated forward is checked to be a plain identifier first."""
from __future__ import annotations

import inspect
import math
import re
from typing import Callable

import torch
import torch.fx as fx
import torch.nn as nn

from qpass.errors import CheckpointError, QpassError
from qpass.runtime import graph_vocab as vocab
from qpass.runtime.tensor_checks import check_tensors

_MODULE_CLASSES: dict[str, tuple[type, Callable[[nn.Module], dict]]] = {}
_PATH_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_]{0,99}\Z|_[A-Za-z0-9][A-Za-z0-9_]{0,99}\Z")
_SPEC_STR = re.compile(r"[A-Za-z0-9_:.\-]{0,64}\Z")
_DTYPES = {n: getattr(torch, n) for n in ("float32", "float16", "bfloat16", "float64", "int8",
                                           "uint8", "int16", "int32", "int64", "bool")}
_DEVICE = re.compile(r"(cpu|cuda|meta|mps|xpu)(:[0-9]{1,3})?\Z")
_MAX_DEPTH = 6


def register_module_class(cls: type, init_kwargs: Callable[[nn.Module], dict] | None = None,
                          name: str | None = None) -> type:
    """Allow `cls` in compiled checkpoints. `init_kwargs(module) -> dict` (JSON scalars or
    lists of them) gives the constructor arguments that rebuild it (shapes only: tensors are
    loaded afterwards); default: the module's own `qpass_init_kwargs()`. Usable as a decorator."""
    if init_kwargs is None:
        if not hasattr(cls, "qpass_init_kwargs"):
            raise TypeError(f"{cls.__name__}: give init_kwargs= or define qpass_init_kwargs()")
        init_kwargs = lambda m: m.qpass_init_kwargs()  # noqa: E731
    _MODULE_CLASSES[name or cls.__name__] = (cls, init_kwargs)
    return cls


def register_function(fn: Callable, name: str | None = None) -> Callable:
    """Add a plugin's `fn` to the graph vocabulary (its arguments typed "plain": graph values,
    None, numbers, bools, short identifiers). Usable as a decorator."""
    vocab.register_plugin_function(fn, name or f"{fn.__module__}.{fn.__qualname__}")
    return fn


_builtins_done = False


def _register_builtins() -> None:
    global _builtins_done
    if _builtins_done:
        return
    _builtins_done = True
    from qpass.runtime import lowered, lowered_float
    from qpass.ir.qlinear import QuantLinear
    from qpass.models.denoiser import RMSNorm
    from qpass.models.moe import Router
    linear_kwargs = lambda m: {"in_features": m.in_features, "out_features": m.out_features,  # noqa: E731
                               "bias": m.bias is not None}
    register_module_class(nn.Linear, linear_kwargs)
    # fp32 routing and LLaDA2's expert bias change which experts a token gets: keep them
    register_module_class(Router, lambda m: {**linear_kwargs(m), "fp32": bool(m.fp32),
                                              "expert_bias": hasattr(m, "expert_bias")})
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
    register_module_class(lowered_float.LoweredFloatLinear)
    register_module_class(lowered.NormQuant)
    register_module_class(lowered.SiluMulQuant)


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


def decode(x, env: dict[str, fx.Node], depth: int = 0):
    """The value `x` encodes; a CheckpointError for anything but the encodings above."""
    if depth > _MAX_DEPTH:
        raise CheckpointError("graph argument nested too deeply")
    if x is None or isinstance(x, (bool, int, str)):
        return x
    if isinstance(x, float):
        if not math.isfinite(x):
            raise CheckpointError(f"non-finite literal {x!r} in graph")
        return x
    if isinstance(x, list):
        return [decode(v, env, depth + 1) for v in x]
    if not isinstance(x, dict) or len(x) != 1:
        raise CheckpointError(f"unknown encoded value {x!r:.80}")
    (tag, v), = x.items()
    if tag == "node":
        if not isinstance(v, str) or v not in env:
            raise CheckpointError(f"graph refers to unknown node {v!r:.80} (or to a later one)")
        return env[v]
    if tag == "tuple" and isinstance(v, list):
        return tuple(decode(e, env, depth + 1) for e in v)
    if tag == "slice" and isinstance(v, list) and len(v) == 3:
        return slice(*(decode(e, env, depth + 1) for e in v))
    if tag == "ellipsis" and v is True:
        return Ellipsis
    if tag == "dtype" and v in _DTYPES:
        return _DTYPES[v]
    if tag == "device" and isinstance(v, str) and _DEVICE.match(v):
        return torch.device(v)
    raise CheckpointError(f"unknown encoded value {x!r:.80}")


def _decode_kwargs(x, env, where: str) -> dict:
    if not (isinstance(x, dict) and list(x) == ["dict"] and isinstance(x["dict"], list)):
        raise CheckpointError(f"node {where!r}: kwargs must be {{'dict': [[name, value], ...]}}")
    out = {}
    for item in x["dict"]:
        if not (isinstance(item, list) and len(item) == 2 and vocab.is_identifier(item[0])):
            raise CheckpointError(f"node {where!r}: bad keyword entry {item!r:.80}")
        out[item[0]] = decode(item[1], env, 1)
    return out


# ----- graph and modules ---------------------------------------------------------------------
_NODE_OPS = ("placeholder", "get_attr", "call_function", "call_method", "call_module", "output")


def graph_to_json(gm: fx.GraphModule) -> dict:
    """{"vocabulary": N, "nodes": [...], "modules": {target: {"class", "kwargs", ...}}}; a
    node outside the vocabulary or an unregistered module class is a CheckpointError now,
    not an unloadable checkpoint later."""
    _register_builtins()
    nodes, modules = [], {}
    for n in gm.graph.nodes:
        target = vocab.name_of(n) if n.op in ("call_function", "call_method") else n.target
        nodes.append({"op": n.op, "name": n.name, "target": target, "args": encode(n.args),
                      "kwargs": encode(dict(n.kwargs))})
        if n.op == "call_module" and n.target not in modules:
            modules[n.target] = module_entry(gm.get_submodule(n.target), n.target)
    return {"vocabulary": vocab.VOCAB_VERSION, "nodes": nodes, "modules": modules}


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


_MODULE_ATTRS = frozenset(dir(nn.Module()))


def _check_path(path, what: str) -> list[str]:
    """A dotted module/tensor path of plain names that shadow no nn.Module attribute."""
    parts = path.split(".") if isinstance(path, str) and len(path) <= 400 else None
    if not parts or not all(_PATH_PART.match(p) and p not in _MODULE_ATTRS for p in parts):
        raise CheckpointError(f"{what} {path!r:.120}: not a plain dotted name of a module or "
                              f"tensor")
    return parts


def _owner(root: nn.Module, path: str) -> tuple[nn.Module, str]:
    parts = path.split(".")
    cur = root
    for p in parts[:-1]:
        if p not in cur._modules:
            cur.add_module(p, nn.Module())
        cur = cur._modules[p]
    return cur, parts[-1]


def _check_kwargs(path: str, cls: type, kwargs) -> dict:
    """Constructor arguments: names the constructor has, values JSON scalars / int lists."""
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"module {path!r}: kwargs must be an object")
    params = inspect.signature(cls.__init__).parameters
    open_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())   # the class checks them
    for k, v in kwargs.items():
        if (k not in params and not (open_kw and vocab.is_identifier(k))) or \
                k in ("self", "device", "dtype"):
            raise CheckpointError(f"module {path!r}: {cls.__name__} takes no argument {k!r}")
        ok = (v is None or isinstance(v, bool) or (isinstance(v, int) and abs(v) < 2 ** 40)
              or (isinstance(v, float) and math.isfinite(v))
              or (isinstance(v, str) and _SPEC_STR.match(v))
              or (isinstance(v, list) and len(v) <= 8 and all(isinstance(e, int) for e in v)))
        if not ok:
            raise CheckpointError(f"module {path!r}: argument {k}={v!r:.60} is not a plain value")
    return kwargs


def module_from_entry(path: str, ms: dict) -> nn.Module:
    """The module one graph-format entry describes, on the meta device (no tensors yet)."""
    _register_builtins()
    cls_name = ms.get("class") if isinstance(ms, dict) else None
    if cls_name not in _MODULE_CLASSES:
        raise CheckpointError(f"module {path!r} has class {cls_name!r:.60}, which is not "
                              f"registered; import the package that registers it")
    cls = _MODULE_CLASSES[cls_name][0]
    kwargs = _check_kwargs(path, cls, ms.get("kwargs", {}))
    try:
        with torch.device("meta"):
            mod = cls(**kwargs)
    except (ValueError, TypeError, KeyError, RuntimeError, QpassError) as e:
        raise CheckpointError(f"module {path!r} ({cls_name}): its arguments are refused "
                              f"({type(e).__name__}: {e}); the checkpoint was modified or is "
                              f"damaged; save the model again or re-download it") from None
    for b in ms.get("none_buffers", []):
        if not vocab.is_identifier(b) or hasattr(mod, b) and b not in mod._buffers:
            raise CheckpointError(f"module {path!r}: {cls_name} has no buffer {b!r:.60}")
        mod.register_buffer(b, None)
    return mod


def install_module(root: nn.Module, path: str, mod: nn.Module) -> None:
    owner, name = _owner(root, path)
    owner.add_module(name, mod)


def _build_modules(spec_modules, tensors, tensor_kinds) -> nn.Module:
    root = nn.Module()
    if not isinstance(spec_modules, dict) or not isinstance(tensor_kinds, dict):
        raise CheckpointError("graph 'modules' and manifest 'tensors' must be objects")
    for path, ms in spec_modules.items():
        _check_path(path, "module")
        cls_name = ms.get("class") if isinstance(ms, dict) else None
        if cls_name not in _MODULE_CLASSES:
            raise CheckpointError(f"module {path!r} has class {cls_name!r:.60}, which is not "
                                  f"registered; import the package that registers it")
        owner, name = _owner(root, path)
        owner.add_module(name, module_from_entry(path, ms))
    for name, info in tensor_kinds.items():
        _check_path(name, "tensor")
        if not isinstance(info, dict) or info.get("kind") not in ("param", "buffer"):
            raise CheckpointError(f"tensor {name!r}: kind must be 'param' or 'buffer'")
        owner, attr = _owner(root, name)
        src = info.get("alias_of") or name
        if src not in tensors:
            raise CheckpointError(f"tensor {src!r:.80} is missing from model.safetensors")
        t = tensors[src]
        if info["kind"] == "param":
            if info.get("alias_of"):
                a_owner, a_attr = _owner(root, _check_path(src, "tensor") and src)
                t = getattr(a_owner, a_attr, None)
                if not isinstance(t, nn.Parameter):
                    raise CheckpointError(f"tensor {name!r} aliases {src!r}, which is no parameter "
                                          f"stored before it")
                setattr(owner, attr, t)
            else:
                setattr(owner, attr, nn.Parameter(t, requires_grad=bool(info.get("requires_grad"))
                                                  and t.is_floating_point()))
        else:
            if attr in owner._parameters:
                del owner._parameters[attr]
            owner.register_buffer(attr, t, persistent=bool(info.get("persistent", True)))
    for name, t in list(root.named_parameters()) + list(root.named_buffers()):
        if t.device.type == "meta":
            raise CheckpointError(f"tensor {name!r} is missing from the checkpoint")
    return root


def _build_graph(nodes, modules: dict, tensor_names: set) -> fx.Graph:
    if not isinstance(nodes, list) or not nodes:
        raise CheckpointError("graph 'nodes' must be a non-empty list")
    table = vocab.vocabulary()
    graph = fx.Graph()
    env: dict[str, fx.Node] = {}
    params: list[tuple[str, bool]] = []      # (name, has default) of the forward's signature
    for i, nd in enumerate(nodes):
        if not isinstance(nd, dict) or set(nd) != {"op", "name", "target", "args", "kwargs"}:
            raise CheckpointError(f"graph node #{i} must have exactly op, name, target, args, kwargs")
        op, name, target = nd["op"], nd["name"], nd["target"]
        if not vocab.is_identifier(name) or name in env:
            raise CheckpointError(f"graph node #{i}: name {name!r:.80} is not a fresh identifier")
        if op not in _NODE_OPS:
            raise CheckpointError(f"node {name!r}: unknown op {op!r:.40}")
        if (op == "output") != (i == len(nodes) - 1):
            raise CheckpointError(f"node {name!r}: the output node must be the last, and only it")
        if not (isinstance(nd["args"], dict) and list(nd["args"]) == ["tuple"]):
            raise CheckpointError(f"node {name!r}: args must be {{'tuple': [...]}}")
        args, kwargs = decode(nd["args"], env), _decode_kwargs(nd["kwargs"], env, name)
        if op == "placeholder":
            # fx writes the target into the forward's signature and its default after '='
            if not vocab.is_identifier(target) or kwargs or len(args) > 1 or \
                    any(a is not None and not isinstance(a, (bool, int, float)) for a in args):
                raise CheckpointError(f"node {name!r}: placeholder {target!r:.80} must be an "
                                      f"identifier with at most a literal default")
            # the signature must be valid Python: leading, unique, defaults last
            if len(params) != i or target in {p for p, _ in params} or \
                    (not args and any(d for _, d in params)):
                raise CheckpointError(f"node {name!r}: placeholder {target!r:.80} must come "
                                      f"before every other node, once, and without a default "
                                      f"only before every placeholder that has one")
            params.append((target, bool(args)))
        elif op == "get_attr":
            if target not in tensor_names or args or kwargs:
                raise CheckpointError(f"node {name!r}: get_attr {target!r:.80} names no stored tensor")
        elif op == "call_module":
            if target not in modules:
                raise CheckpointError(f"node {name!r}: module {target!r:.80} is not in the checkpoint")
            if kwargs or not all(isinstance(a, fx.Node) for a in args):
                raise CheckpointError(f"node {name!r}: a module takes graph values only")
        elif op == "output":
            if kwargs or len(args) != 1 or not isinstance(args[0], fx.Node):
                raise CheckpointError(f"node {name!r}: output must return one graph value")
        else:
            spec = table.get(target) if isinstance(target, str) else None
            if spec is None or spec.op != op:
                raise CheckpointError(f"node {name!r}: {op} {target!r:.80} is not in the checkpoint "
                                      f"vocabulary (version {vocab.VOCAB_VERSION})")
            vocab.check_args(name, spec, args, kwargs)
            target = spec.target
        env[name] = graph.create_node(op, target, args, kwargs, name=name)
        if env[name].name != name:
            raise CheckpointError(f"node {name!r}: name clashes with a generated name")
    return graph


def build_graph_module(spec: dict, tensors: dict[str, torch.Tensor], tensor_kinds: dict,
                       config=None) -> fx.GraphModule:
    """Rebuild the GraphModule from graph_to_json output, the tensors and their kinds
    ({name: {"kind": "param"|"buffer", "alias_of": name|None, ...}}), validating every node,
    module and tensor name first, then every tensor against its module, spec and the op that
    reads it (qpass.runtime.tensor_checks; `config`, the ModelConfig, sizes the RoPE tables):
    a CheckpointError naming the first one that is not allowed."""
    _register_builtins()
    if not isinstance(spec, dict):
        raise CheckpointError("manifest 'graph' must be an object")
    if spec.get("vocabulary", vocab.VOCAB_VERSION) != vocab.VOCAB_VERSION:
        raise CheckpointError(f"graph vocabulary version {spec.get('vocabulary')!r} is not "
                              f"{vocab.VOCAB_VERSION}; use the qpass version that wrote it")
    try:
        root = _build_modules(spec.get("modules"), tensors, tensor_kinds)
        graph = _build_graph(spec.get("nodes"), spec["modules"], set(tensor_kinds))
        graph.lint()
        gm = fx.GraphModule(root, graph, "CompiledGraph")
        check_tensors(gm, spec["modules"], config)
        return gm
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError, SyntaxError) as e:
        raise CheckpointError(f"cannot rebuild the compiled graph: {type(e).__name__}: {e}") from None

"""The closed vocabulary of the on-disk graph (DESIGN §6, docs/FORMATS.md "Graph vocabulary").

Every computing node of a compiled checkpoint is one entry of the vocabulary: an on-disk name,
the fx op it becomes (call_function or call_method), the callable or method name, and the type
of each argument. Types are a small closed set: a graph value, an int, a bool, a literal index,
one of four metadata attribute names, a backend name. A string appears only where its type
says so, so no entry can reach an attribute chain, a file, an import or Python source. Version
VOCAB_VERSION; adding an op is a new version, readers refuse names they do not know.

Plugins extend it with qpass.runtime.compiled.register_function, whose functions get the
"plain" type for every argument (a value, None, a number, a bool or a short identifier)."""
from __future__ import annotations

import inspect
import keyword
import math
import operator
import re
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.fx as fx
import torch.nn.functional as F

from qpass import ops
from qpass.errors import CheckpointError

VOCAB_VERSION = 1
SHAPE_ATTRS = ("shape", "dtype", "device", "ndim")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,199}\Z")
_BACKEND = re.compile(r"[a-z][a-z0-9_]{0,31}\Z")


@dataclass(frozen=True)
class OpSpec:
    name: str                      # on-disk name
    op: str                        # "call_function" | "call_method"
    target: Callable | str         # the callable, or the tensor method's name
    args: tuple[str, ...]          # type of each positional argument
    min_args: int | None = None    # default: all of `args`
    varargs: str | None = None     # type of any further positional argument
    kwargs: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"name": self.name, "op": self.op, "args": list(self.args),
                "min_args": len(self.args) if self.min_args is None else self.min_args,
                "varargs": self.varargs, "kwargs": dict(self.kwargs)}


def _fn(name, target, args, min_args=None, **kwargs) -> OpSpec:
    return OpSpec(name, "call_function", target, tuple(args), min_args, None, kwargs)


def _method(name, args, min_args=None, varargs=None) -> OpSpec:
    return OpSpec(name, "call_method", name, ("value",) + tuple(args),
                  None if min_args is None else min_args + 1, varargs)


def _builtin_ops() -> list[OpSpec]:
    from qpass.runtime import lowered, online
    arith = [_fn(f"operator.{n}", getattr(operator, n), ("operand", "operand"))
             for n in ("add", "sub", "mul", "truediv")]
    return arith + [
        _fn("operator.neg", operator.neg, ("value",)),
        _fn("operator.getitem", operator.getitem, ("value", "index")),
        _fn("builtins.getattr", getattr, ("value", "shape_attr")),
        _fn("torch.add", torch.add, ("operand", "operand")),
        _fn("torch.mul", torch.mul, ("operand", "operand")),
        _fn("torch.cat", torch.cat, ("values", "int"), 1, dim="int"),
        _fn("torch.nn.functional.silu", F.silu, ("value", "bool"), 1, inplace="bool"),
        _fn("torch.nn.functional.relu", F.relu, ("value", "bool"), 1, inplace="bool"),
        _fn("torch.sigmoid", torch.sigmoid, ("value",)),
        _fn("qpass.ops.rope", ops.rope, ("value", "value", "value")),
        _fn("qpass.ops.attention", ops.attention, ("value", "value", "value", "value?", "bool",
                                                "kv_bits", "int"), 3,
            key_mask="value?", causal="bool", kv_bits="kv_bits", block_size="int"),
        # mixture-of-experts routing (qpass.models.moe) and its zero start
        _fn("qpass.ops.route_topk", ops.route_topk,
            ("value", "int", "bool", "bool", "value?", "int", "int", "number"), 2),
        _fn("qpass.ops.expert_tokens", ops.expert_tokens, ("value", "value", "int")),
        _fn("qpass.ops.gather_rows", ops.gather_rows, ("value", "value")),
        _fn("qpass.ops.scatter_rows", ops.scatter_rows, ("value", "value", "value")),
        _fn("torch.zeros_like", torch.zeros_like, ("value",)),
        _fn("qpass.lowered.attention", lowered.attention,
            ("value", "value", "value", "value?", "bool", "bool", "backend", "kv_bits"), 3,
            key_mask="value?", causal="bool", int8="bool", backend="backend", kv_bits="kv_bits"),
        _fn("qpass.lowered.hadamard", lowered.hadamard, ("value", "value?", "backend"), 1,
            signs="value?", backend="backend"),
        _fn("qpass.online.online_hadamard", online.online_hadamard, ("value", "value?"), 1,
            signs="value?"),
        _fn("qpass.online.channel_transform", online.channel_transform, ("value", "value")),
        _method("view", (), 0, "size"), _method("reshape", (), 0, "size"),
        _method("transpose", ("int", "int")), _method("permute", (), 0, "int"),
        _method("contiguous", ()), _method("float", ()), _method("dim", ()),
        _method("size", ("int",), 0), _method("unsqueeze", ("int",)),
        _method("flatten", ("int", "int"), 0),
    ]


_VOCAB: dict[str, OpSpec] = {}
_PLUGINS: dict[str, Callable] = {}


def register_plugin_function(fn: Callable, name: str) -> None:
    """A plugin's graph function: every argument typed "plain", keywords from its signature."""
    if not all(_IDENT.match(p) for p in name.split(".")):
        raise ValueError(f"graph function name {name!r} must be dotted identifiers")
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    kw = {p: "plain" for p, v in params.items()
          if v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)}
    _PLUGINS[name] = fn
    _VOCAB[name] = OpSpec(name, "call_function", fn, (), 0, "plain", kw)


def vocabulary() -> dict[str, OpSpec]:
    if not any(s.op == "call_method" for s in _VOCAB.values()):
        for s in _builtin_ops():
            _VOCAB.setdefault(s.name, s)
    return _VOCAB


def name_of(node: fx.Node) -> str:
    """The vocabulary name of a computing node (CheckpointError if it has none)."""
    for s in vocabulary().values():
        if s.op == node.op and (s.target is node.target if node.op == "call_function"
                                else s.target == node.target):
            return s.name
    what = node.target if node.op == "call_method" else getattr(node.target, "__name__", node.target)
    raise CheckpointError(f"node {node.name!r} ({node.op} {what!r}) is not in the checkpoint "
                          f"vocabulary; add it to qpass/runtime/graph_vocab.py (a new vocabulary "
                          f"version) or register a plugin function")


def schema() -> dict:
    """The vocabulary as JSON (docs/FORMATS.md prints the same table)."""
    return {"vocabulary_version": VOCAB_VERSION, "shape_attrs": list(SHAPE_ATTRS),
            "ops": [s.to_json() for s in vocabulary().values()]}


# ----- argument types ----------------------------------------------------------------------
def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and (not isinstance(x, float) or math.isfinite(x))


def _is_index(x, depth=0) -> bool:
    if x is None or x is Ellipsis or (isinstance(x, int) and not isinstance(x, bool)):
        return True
    if isinstance(x, slice):
        return all(v is None or (isinstance(v, int) and not isinstance(v, bool))
                   for v in (x.start, x.stop, x.step))
    return isinstance(x, tuple) and depth == 0 and len(x) <= 8 and all(_is_index(v, 1) for v in x)


_CHECKS: dict[str, Callable[[object], bool]] = {
    "value": lambda x: isinstance(x, fx.Node),
    "value?": lambda x: x is None or isinstance(x, fx.Node),
    "operand": lambda x: isinstance(x, fx.Node) or _is_num(x),
    "int": lambda x: isinstance(x, int) and not isinstance(x, bool),
    "size": lambda x: isinstance(x, fx.Node) or (isinstance(x, int) and not isinstance(x, bool)),
    "bool": lambda x: isinstance(x, bool),
    "number": _is_num,
    # K/V cache bits of a `kv<bits>` scheme: a closed set, not any int
    "kv_bits": lambda x: type(x) is int and x in (0, 4, 8),
    "index": _is_index,
    "values": lambda x: isinstance(x, (list, tuple)) and 0 < len(x) <= 64
                        and all(isinstance(v, fx.Node) for v in x),
    "shape_attr": lambda x: x in SHAPE_ATTRS,
    "backend": lambda x: isinstance(x, str) and bool(_BACKEND.match(x)),
    "plain": lambda x: x is None or isinstance(x, (fx.Node, bool)) or _is_num(x)
                       or (isinstance(x, str) and bool(_BACKEND.match(x))),
}


def check_args(node_name: str, spec: OpSpec, args: tuple, kwargs: dict) -> None:
    """CheckpointError unless `args`/`kwargs` (decoded) fit `spec`."""
    lo = len(spec.args) if spec.min_args is None else spec.min_args
    hi = None if spec.varargs else len(spec.args)
    if len(args) < lo or (hi is not None and len(args) > hi) or len(args) > 16:
        raise CheckpointError(f"node {node_name!r}: {spec.name} takes {lo}"
                              f"{'+' if hi is None else '' if hi == lo else f'-{hi}'} "
                              f"arguments, the graph gives {len(args)}")
    for i, a in enumerate(args):
        kind = spec.args[i] if i < len(spec.args) else spec.varargs
        if not _CHECKS[kind](a):
            raise CheckpointError(f"node {node_name!r}: argument {i} of {spec.name} must be "
                                  f"{kind}, got {type(a).__name__} {a!r:.60}")
    for k, a in kwargs.items():
        kind = spec.kwargs.get(k)
        if kind is None:
            raise CheckpointError(f"node {node_name!r}: {spec.name} has no keyword {k!r}")
        if not _CHECKS[kind](a):
            raise CheckpointError(f"node {node_name!r}: keyword {k!r} of {spec.name} must be "
                                  f"{kind}, got {type(a).__name__} {a!r:.60}")


def is_identifier(s) -> bool:
    """A node / placeholder name that fx may put into generated source as is."""
    return isinstance(s, str) and bool(_IDENT.match(s)) and not keyword.iskeyword(s) \
        and not s.startswith("__")

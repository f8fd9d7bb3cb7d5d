"""The structure of a model captured as it is (DESIGN §2, §7): its repeated layers, what
each layer quantizes and in which stage, found from the module tree, one forward of the
model's own code and a trace of each layer class (qpass.ir.value_trace) — never from names.

  stacks     every nn.ModuleList of same-class modules holding linears or expert stores
  stages     the layers in the order the model's forward first calls them; a layer whose
             weights are tied to an earlier stage's (DiffusionGemma's decoder layer i reads
             the weights of encoder layer i) joins that stage, so its weights are quantized
             once, from the calibration inputs of both calls
  items      every nn.Linear and every expert store (3-D parameters, one slice per expert),
             with its aliases (module paths sharing the same weights) and its role:
             "linear", "experts", "router" (its output reaches a top-k in the layer's
             graph) or "head" (the model's output embeddings); routers and the head are
             kept in high precision by default, like qpass's reference family
  unreached  items the forward never called (a vision tower on text): kept, with the reason"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn as nn

from .value_trace import is_expert_store, trace_module

TOPK_TARGETS = {torch.topk}


@dataclass
class Item:
    path: str
    kind: str                          # "linear" | "experts"
    role: str                          # "linear" | "experts" | "router" | "head"
    aliases: list[str]
    stage: int | None = None
    reason: str | None = None          # why it stays in high precision, when it does

    def module(self, model: nn.Module) -> nn.Module:
        return model.get_submodule(self.path)


@dataclass
class Stage:
    index: int
    layers: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"stage {self.index} ({', '.join(self.layers)})" if self.layers else \
            f"stage {self.index}"


@dataclass
class ModelStructure:
    stages: list[Stage]
    items: list[Item]
    traces: dict[str, fx.GraphModule] = field(default_factory=dict)   # layer class → graph
    calls: dict[str, int] = field(default_factory=dict)   # module path → calls per forward

    def of_stage(self, index: int) -> list[Item]:
        return [i for i in self.items if i.stage == index]

    def item(self, path: str) -> Item:
        return next(i for i in self.items if path in i.aliases)


def stacks(model: nn.Module) -> list[list[str]]:
    """[[layer paths]] of every repeated-layer list (module doc); a list inside a layer of
    another (LLaDA2's `mlp.experts`, a ModuleList of expert MLPs) is part of that layer."""
    out = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.ModuleList) or not len(m):
            continue
        if len({type(c) for c in m}) != 1:
            continue
        if any(name.startswith(layer + ".") for s in out for layer in s):
            continue
        if any(isinstance(x, nn.Linear) or is_expert_store(x) for x in m[0].modules()):
            out.append([f"{name}.{i}" if name else str(i) for i in range(len(m))])
    return out


def _weight_key(m: nn.Module):
    if isinstance(m, nn.Linear):
        return id(m.weight)
    return id(next(p for p in m.parameters(recurse=False) if p.dim() == 3))


def _quantizables(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules()
            if n and (isinstance(m, nn.Linear) or is_expert_store(m))}


def signature(layer: nn.Module) -> str:
    """Layers of one class can differ (LLaDA2's first layers have a dense MLP, the others
    experts): one trace per class and set of submodule names."""
    names = sorted(n for n, _ in layer.named_modules() if n and not n[-1].isdigit())
    import zlib
    return f"{type(layer).__qualname__}:{zlib.crc32(' '.join(names).encode()):08x}"


class _CallLog:
    """Forward pre-hooks recording the order of first calls, and the inputs of each layer
    class's first call (for its trace)."""

    def __init__(self, model, layer_paths, quant_paths):
        self.order: list[str] = []
        self.calls: dict[str, int] = {}
        self.inputs: dict[str, tuple] = {}
        self.handles = []
        for p in list(layer_paths) + list(quant_paths):
            self.handles.append(model.get_submodule(p).register_forward_pre_hook(
                self._hook(p), with_kwargs=True))

    def _hook(self, path):
        def hook(mod, args, kwargs):
            self.calls[path] = self.calls.get(path, 0) + 1
            if path not in self.order:
                self.order.append(path)
                self.inputs.setdefault(signature(mod), (path, args, dict(kwargs)))
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def discover(model: nn.Module, example: dict, trace: bool = True) -> ModelStructure:
    """The structure of `model` (module doc), from one forward on `example` (the kwargs of
    the model's forward)."""
    layer_lists = stacks(model)
    layers = [p for s in layer_lists for p in s]
    quant = _quantizables(model)
    log = _CallLog(model, layers, quant)
    try:
        with torch.no_grad():
            model(**example)
    finally:
        log.close()
    groups: dict[int, list[str]] = {}
    for path, m in quant.items():
        groups.setdefault(_weight_key(m), []).append(path)
    rank = {p: i for i, p in enumerate(log.order)}
    items = []
    for paths in groups.values():
        paths.sort(key=lambda p: rank.get(p, len(rank)))
        m = quant[paths[0]]
        kind = "linear" if isinstance(m, nn.Linear) else "experts"
        items.append(Item(paths[0], kind, kind, paths))
    stages = _stages(log.order, layers, items, quant)
    _roles(model, items, log, layer_lists, trace)
    items += _other_weights(model, quant, layers, stages)
    structure = ModelStructure(stages, sorted(items, key=lambda i: rank.get(i.path, len(rank))),
                               calls=dict(log.calls))
    if trace:
        structure.traces = _traces(model, log, layer_lists)
        _routers(structure, model, layers)
    return structure


def _other_weights(model: nn.Module, quant: dict, layers: list[str], stages) -> list[Item]:
    """Matrices outside nn.Linear modules and expert stores (a router gate calling
    F.linear on its own weight, as LLaDA2's): listed, kept in high precision."""
    mine = {id(p) for m in quant.values() for p in m.parameters()}
    mine |= {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    names: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        if p.dim() >= 2 and id(p) not in mine:
            names.setdefault(id(p), []).append(n)
    stage_of = {lp: st.index for st in stages for lp in st.layers}
    out = []
    for paths in names.values():
        lp = _layer_of(paths[0], layers)
        out.append(Item(paths[0], "weight", "float", paths, stage_of.get(lp),
                        "a matrix outside nn.Linear and expert stores (the model's own code "
                        "multiplies by it): kept in high precision"))
    return out


def _layer_of(path: str, layers: list[str]) -> str | None:
    best = None
    for lp in layers:
        if path.startswith(lp + ".") and (best is None or len(lp) > len(best)):
            best = lp
    return best


def _stages(order: list[str], layers: list[str], items: list[Item], quant) -> list[Stage]:
    """Layers by first call; tied layers join their first stage; items outside layers join
    the stage of the layer called last before them."""
    stage_of_layer: dict[str, int] = {}
    stages: list[Stage] = []
    by_path = {a: it for it in items for a in it.aliases}
    last = None
    for path in order:
        if path in layers:
            tied = set()
            for it in items:
                mine = [a for a in it.aliases if _layer_of(a, layers) == path]
                others = [_layer_of(b, layers) for b in it.aliases if b not in mine]
                if mine:
                    tied |= {stage_of_layer[o] for o in others if o in stage_of_layer}
            if tied:
                stage_of_layer[path] = min(tied)
            else:
                stage_of_layer[path] = len(stages)
                stages.append(Stage(len(stages)))
            stages[stage_of_layer[path]].layers.append(path)
            last = stage_of_layer[path]
        elif path in by_path and by_path[path].stage is None:
            it = by_path[path]
            lp = _layer_of(path, layers)
            if lp is not None and lp in stage_of_layer:
                it.stage = stage_of_layer[lp]
            elif lp is None:
                if last is None:
                    stages.append(Stage(len(stages)))
                    last = len(stages) - 1
                it.stage = last
    return stages


def _roles(model: nn.Module, items: list[Item], log: _CallLog, layer_lists, trace: bool) -> None:
    head = getattr(model, "get_output_embeddings", lambda: None)()
    head_ids = {id(head.weight)} if isinstance(head, nn.Linear) else set()
    for it in items:
        m = it.module(model)
        if it.kind == "linear" and id(m.weight) in head_ids:
            it.role, it.reason = "head", "the LM head (kept in high precision by default)"
        elif it.stage is None:
            it.reason = ("the model's forward never called it on text (e.g. a vision tower); "
                         "no calibration reaches it")


def _traces(model: nn.Module, log: _CallLog, layer_lists) -> dict[str, fx.GraphModule]:
    """One graph per layer signature, traced on the inputs of its first call (a K/V cache
    object stays out: the structure does not depend on it)."""
    out = {}
    layers = {p for s in layer_lists for p in s}
    for sig, (path, args, kwargs) in log.inputs.items():
        if path not in layers:
            continue
        kw = {k: (None if type(v).__name__.endswith("Cache") else v) for k, v in kwargs.items()}
        out[sig] = trace_module(model.get_submodule(path), args, kw)
        out[sig].meta["layer"] = path
    return out


def _routers(structure: ModelStructure, model: nn.Module, layers: list[str]) -> None:
    """A linear (module or functional) whose output reaches a top-k before any other
    linear, expert store or attention is a router (role "router")."""
    routers: dict[str, set[str]] = {}
    for sig, gm in structure.traces.items():
        mods = dict(gm.named_modules())
        found = set()
        for n in gm.graph.nodes:
            if n.op == "call_module" and isinstance(mods.get(n.target), nn.Linear) \
                    and _reaches_topk(n, mods):
                found.add(n.target)
            weight = _functional_weight(n)
            if weight is not None and _reaches_topk(n, mods):
                found.add(weight)            # F.linear(x, self.weight): the weight's path
        routers[sig] = found
    for it in structure.items:
        if it.kind not in ("linear", "weight") or it.role not in ("linear", "float"):
            continue
        for alias in it.aliases:
            lp = _layer_of(alias, layers)
            if lp is None:
                continue
            if alias[len(lp) + 1:] in routers.get(signature(model.get_submodule(lp)), ()):
                it.role = "router"
                it.reason = "an MoE router (kept in high precision by default: routing " \
                            "decisions flip under quantization)"


def _functional_weight(n: fx.Node) -> str | None:
    """The get_attr target of the weight of a functional linear/matmul node."""
    import torch.nn.functional as F
    if n.op != "call_function" or n.target not in (F.linear, torch._C._nn.linear, torch.matmul):
        return None
    from .structure import through_transparent_back
    w = n.args[1] if len(n.args) > 1 else n.kwargs.get("weight")
    if not isinstance(w, fx.Node):
        return None
    w = through_transparent_back(w)          # self.weight.float(), .to(dtype), …
    return w.target if w.op == "get_attr" else None


def _reaches_topk(start: fx.Node, mods: dict) -> bool:
    todo, seen = list(start.users), set()
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "call_function" and (n.target in TOPK_TARGETS or
                                        getattr(n.target, "__name__", "") == "route_topk"):
            return True
        if n.op == "call_method" and n.target == "topk":
            return True
        if n.op == "call_module" and (isinstance(mods.get(n.target), nn.Linear)
                                      or is_expert_store(mods.get(n.target, nn.Module()))):
            continue
        if n.op == "call_function" and (getattr(n.target, "__name__", "") == "hf_attention"
                                        or _functional_weight(n) is not None):
            continue                 # another linear (a functional gate) decides its top-k
        todo.extend(n.users)
    return False

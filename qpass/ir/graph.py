"""QGraph: a captured denoiser (torch.fx GraphModule) with roles and discovered structure."""
from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
import torch.nn as nn

from .capture import trace
from .roles import HIGH_PRECISION_LINEAR_ROLES, function_role, module_role
from .regions import norm_regions, smoothing_regions
from .structure import (ActPair, BlockInfo, VOPair, discover_blocks, pairs_through_activation,
                        qk_of, role, v_to_o)


def _meta(n: fx.Node) -> dict:
    return n.meta.setdefault("qpass", {})


class QGraph:
    """The IR every pass works on. `gm` is the GraphModule; `config` the model config."""

    def __init__(self, gm: fx.GraphModule, config=None, tokenizer=None, example_inputs=None):
        self.gm = gm
        self.config = config
        self.tokenizer = tokenizer
        self.example_inputs = example_inputs
        self.annotate()

    # ---- annotation -------------------------------------------------------------------
    def annotate(self) -> None:
        """(Re)compute roles and block indices; call after a pass edits the graph."""
        mods = dict(self.gm.named_modules())
        for n in self.gm.graph.nodes:
            m = _meta(n)
            m.pop("block", None)
            r = None
            if n.op == "call_module":
                r = module_role(mods[n.target])
            elif n.op == "call_function":
                r = function_role(n.target)
            m["role"] = r
        self._mark_head()
        self._blocks = discover_blocks(self.gm.graph)
        for b in self._blocks:
            for n in b.nodes:
                _meta(n)["block"] = b.index
            for a in b.residual_adds:
                _meta(a)["role"], _meta(a)["block"] = "residual_add", b.index

    def _mark_head(self) -> None:
        out = next(n for n in self.gm.graph.nodes if n.op == "output")
        todo, seen = list(out.all_input_nodes), set()
        while todo:
            n = todo.pop()
            if n in seen:
                continue
            seen.add(n)
            if role(n) == "linear":
                _meta(n)["role"] = "head"
                continue
            todo.extend(n.all_input_nodes)

    # ---- queries ----------------------------------------------------------------------
    @property
    def graph(self) -> fx.Graph:
        return self.gm.graph

    def module(self, node: fx.Node) -> nn.Module:
        return self.gm.get_submodule(node.target)

    def nodes(self, *roles: str) -> list[fx.Node]:
        return [n for n in self.gm.graph.nodes if not roles or role(n) in roles]

    def linears(self, include_head: bool = True) -> list[fx.Node]:
        """Linear nodes; include_head adds the head and MoE routers (kept high precision by
        default, still linears for folds and coverage)."""
        return self.nodes("linear", *HIGH_PRECISION_LINEAR_ROLES) if include_head \
            else self.nodes("linear")

    def blocks(self) -> list[BlockInfo]:
        return self._blocks

    def pairs_through_activation(self) -> list[ActPair]:
        return pairs_through_activation(self.gm.graph)

    def v_to_o(self) -> list[VOPair]:
        return v_to_o(self.gm.graph, dict(self.gm.named_modules()))

    def qk(self, attention: fx.Node):
        return qk_of(attention)

    def groups(self, block: BlockInfo) -> dict[str, list[Any]]:
        """Discovered groups of one block, by role-free structure, with human labels."""
        bset = set(block.nodes)
        res: dict[str, list[Any]] = {"norm->linears": [], "up->down": [], "v->o": [],
                                     "v->o skipped": []}
        for r in norm_regions(self):
            if r.producer in bset:
                res["norm->linears"].append((r.producer.target, [n.target for n in r.consumers]))
        for p in self.pairs_through_activation():
            if p.down in bset:
                res["up->down"].append(((p.gate.target if p.gate else None), p.up.target, p.down.target))
        for r in smoothing_regions(self):
            if r.kind == "v_rows" and r.producer in bset:
                v, o = r.producer.target, r.consumers[0].target
                res["v->o" if r.exact else "v->o skipped"].append((v, o) if r.exact else (v, o, r.reason))
        return res

    def __call__(self, *args, **kw):
        return self.gm(*args, **kw)

    def recompile(self) -> None:
        self.gm.graph.lint()
        self.gm.recompile()
        self.annotate()


def _example(model: nn.Module, example_inputs):
    if example_inputs is not None:
        return example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    p = next(model.parameters())
    vocab = getattr(getattr(model, "config", None), "vocab_size", 100)
    return (torch.randint(0, vocab, (1, 16), device=p.device),)


def _check_length(model: nn.Module, ex: tuple) -> None:
    """Example ids longer than the model's positions: one CaptureError, not a shape error
    deep inside RoPE."""
    from qpass.errors import CaptureError
    limit = getattr(getattr(model, "config", None), "max_seq_len", None)
    ids = ex[0] if ex else None
    if isinstance(limit, int) and isinstance(ids, torch.Tensor) and ids.dim() >= 2 \
            and ids.shape[1] > limit:
        raise CaptureError(f"example inputs of length {ids.shape[1]} exceed the model's "
                           f"max_seq_len {limit}; capture with at most {limit} positions")


def capture(model: nn.Module, example_inputs=None, shapes: bool = True) -> QGraph:
    """Trace `model` to a QGraph (raises CaptureError). With `shapes`, every node gets
    `tensor_meta` from a forward on `example_inputs` (runs on the meta device for free).
    A transformers model (LlamaForCausalLM, Qwen2ForCausalLM, LLaDA, Dream) is first mapped
    onto the traceable family by qpass.models.from_hf (weights shared)."""
    from qpass.models.from_hf import from_hf, is_transformers_model
    if is_transformers_model(model):
        model = from_hf(model)
    gm = trace(model)
    ex = _example(model, example_inputs)
    _check_length(model, ex)
    if shapes:
        from torch.fx.passes.shape_prop import ShapeProp
        with torch.no_grad():
            ShapeProp(gm).propagate(*ex)
    return QGraph(gm, getattr(model, "config", None), getattr(model, "tokenizer", None), ex)

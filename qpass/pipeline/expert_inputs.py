"""The inputs of each expert of a fused expert store (DESIGN §2: fused 3-D expert
parameters are quantized per expert, GPTQ on the tokens routed to each).

An expert store's forward (the model's own code) takes expert e's slice of a 3-D parameter
(`self.gate_up_proj[e]`) and multiplies the rows routed to e by it (`F.linear(x, w)` or
`x @ w.T`). While the store runs, a TorchFunctionMode tags every slice taken from one of its
3-D parameters with (parameter, e), and reports the other operand of each matmul that reads a
tagged slice — exactly the tokens routed to e, in the store's own layout (for the down
projection: the activated hidden of those tokens). Nothing here knows a family."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

MATMULS = {F.linear, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.mm}


def expert_params(store: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """(name, (E, out, in) parameter) of an expert store."""
    return [(n, p) for n, p in store.named_parameters(recurse=False) if p.dim() == 3]


class _Tagging(TorchFunctionMode):
    def __init__(self, params: dict[int, str], sink: Callable):
        super().__init__()
        self.params, self.sink = params, sink
        self.tags: dict[int, tuple[str, int, torch.Tensor]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is torch.Tensor.__getitem__ and id(args[0]) in self.params:
            idx = args[1]
            if isinstance(idx, torch.Tensor) and idx.numel() == 1:
                idx = int(idx)
            if isinstance(idx, int) and isinstance(out, torch.Tensor):
                self.tags[id(out)] = (self.params[id(args[0])], idx, out)
        elif func in MATMULS and len(args) >= 2:
            self._matmul(func, args)
        return out

    def _matmul(self, func, args) -> None:
        x, w = args[0], args[1]
        tag = self.tags.get(id(w))
        if tag is None and func is not F.linear:     # x @ w.T: the transpose of a slice
            base = getattr(w, "_base", None)
            tag = self.tags.get(id(base)) if base is not None else None
        if tag is not None and tag[2].shape[-1] == x.shape[-1]:
            self.sink(tag[0], tag[1], x)


class ExpertInputs:
    """`sink(param name, expert, x)` for every matmul of expert `expert`'s slice of a 3-D
    parameter of `store` while the store's forward runs (module doc)."""

    def __init__(self, store: torch.nn.Module, sink: Callable):
        self.store, self.sink = store, sink
        self.mode = None

    def hooks(self) -> list:

        config = getattr(self.store, "config", None)
        switch = hasattr(config, "_experts_implementation")
        saved = []

        def start(mod, args, kwargs=None):
            if switch:          # transformers' grouped kernels take no slices: its eager loop
                saved.append(config._experts_implementation)
                config._experts_implementation = "eager"
            # the parameters as they are now (a streamed run loads them just before)
            params = {id(p): n for n, p in expert_params(self.store)}
            self.mode = _Tagging(params, self.sink)
            self.mode.__enter__()

        def stop(mod, args, out):
            if self.mode is not None:
                self.mode.__exit__(None, None, None)
                self.mode = None
            if switch and saved:
                config._experts_implementation = saved.pop()
        return [self.store.register_forward_pre_hook(start),
                self.store.register_forward_hook(stop, always_call=True)]

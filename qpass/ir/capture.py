"""Trace a denoiser to a torch.fx GraphModule (DESIGN §2).

Linear, norm and embedding modules stay leaves (`call_module`); attention and RoPE are single
`call_function` nodes. A model that cannot be traced raises CaptureError naming the line."""
from __future__ import annotations

import linecache
import os
import sys
import traceback

import torch
import torch.fx as fx
import torch.nn as nn

from .. import ops
from ..errors import CaptureError

_TORCH_DIR = os.path.dirname(torch.__file__)
_QPASS_IR_DIR = os.path.dirname(__file__)


def is_leaf_type(m: nn.Module) -> bool:
    from .roles import module_role
    return module_role(m) is not None


class QpassTracer(fx.Tracer):
    def __init__(self):
        super().__init__(autowrap_functions=ops.WRAPPED_FUNCTIONS)

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return is_leaf_type(m) or super().is_leaf_module(m, qualname)


def _user_frame(tb) -> str:
    """The innermost frame outside torch and qpass.ir: the user's offending line."""
    frames = [f for f in traceback.extract_tb(tb)
              if not f.filename.startswith(_TORCH_DIR) and not f.filename.startswith(_QPASS_IR_DIR)]
    if not frames:
        return "an unknown line"
    f = frames[-1]
    line = (f.line or linecache.getline(f.filename, f.lineno)).strip()
    return f"{f.filename}:{f.lineno} in {f.name}: `{line}`"


def trace(model: nn.Module) -> fx.GraphModule:
    tracer = QpassTracer()
    try:
        graph = tracer.trace(model)
    except Exception as e:  # any tracing failure is a user-facing capture problem
        where = _user_frame(sys.exc_info()[2])
        hint = ("data-dependent Python control flow (an `if`/`for` on a tensor's value) cannot "
                "be traced; compute both branches with torch.where, or move the decision to "
                "a config flag") if "control flow" in str(e) or isinstance(e, fx.proxy.TraceError) \
            else "make the forward free of data-dependent Python logic or wrap the function " \
                 "with torch.fx.wrap"
        raise CaptureError(f"cannot trace {type(model).__name__}: {type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else e!r} at {where}. Hint: {hint}") from None
    name = type(model).__name__
    gm = fx.GraphModule(tracer.root, graph, name)
    return gm

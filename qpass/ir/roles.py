"""Roles of graph nodes (`node.meta["qpass"]["role"]`): what a node is, independent of names."""
from __future__ import annotations

import operator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops

ROLES = ("linear", "head", "router", "norm", "embed", "attention", "rope", "residual_add", "hadamard",
         "quant", "activation", "mul")

# Ops that move or view data without mixing channels along the last dim.
TRANSPARENT_METHODS = {"view", "reshape", "transpose", "permute", "contiguous", "to", "float",
                       "half", "bfloat16", "double", "type", "flatten", "unsqueeze", "squeeze"}
# ops.gather_rows picks tokens (MoE routing): rows move, channels stay, so a per-channel scale,
# a norm fold or a rotation of the channels commutes with it.
TRANSPARENT_FUNCTIONS = {operator.getitem, torch.reshape, torch.transpose, torch.flatten,
                         torch.permute, ops.gather_rows}
# linears that are linears for structure (they read a norm like any consumer) but are kept in
# high precision by default: the LM head and MoE routers
HIGH_PRECISION_LINEAR_ROLES = ("head", "router")
ACTIVATIONS = {F.silu, F.gelu, torch.sigmoid, F.relu, torch.nn.functional.silu}
ADD_FUNCTIONS = {operator.add, torch.add, operator.iadd}
MUL_FUNCTIONS = {operator.mul, torch.mul}


def module_role(m: nn.Module) -> str | None:
    """Role of a leaf module; quantized replacements declare `qpass_role`."""
    role = getattr(m, "qpass_role", None)
    if role:
        return role
    if isinstance(m, nn.Linear):
        return "linear"
    if isinstance(m, nn.Embedding):
        return "embed"
    if isinstance(m, (nn.LayerNorm, nn.RMSNorm)) or type(m).__name__.endswith(("RMSNorm", "LayerNorm")):
        return "norm"
    return None


def function_role(target) -> str | None:
    if target is ops.attention or target is ops.hf_attention:
        return "attention"
    if target is ops.rope:
        return "rope"
    role = getattr(target, "qpass_role", None)
    if role:
        return role
    if target in ACTIVATIONS:
        return "activation"
    if target in MUL_FUNCTIONS:
        return "mul"
    return None


def is_transparent(node) -> bool:
    if node.op == "call_method":
        return node.target in TRANSPARENT_METHODS
    if node.op == "call_function":
        return node.target in TRANSPARENT_FUNCTIONS
    return False


def reads_metadata_only(n) -> bool:
    """x.shape / x.size() / x.dtype / zeros_like(x): the values of x do not matter, so a
    per-channel scale or a rotation of x changes nothing there."""
    if n.op == "call_function" and n.target is getattr:
        return n.args[1] in ("shape", "dtype", "device", "ndim")
    if n.op == "call_function" and n.target in (torch.zeros_like, torch.empty_like):
        return True
    return n.op == "call_method" and n.target in ("size", "dim")


def is_add(node) -> bool:
    return (node.op == "call_function" and node.target in ADD_FUNCTIONS) or \
           (node.op == "call_method" and node.target in ("add", "add_"))

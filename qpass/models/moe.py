"""Mixture-of-experts MLP (LLaDA-MoE, LLaDA2): a router, top-k routed experts and optional
shared experts, written so that capture keeps every expert a plain linear group.

Each expert runs only on the tokens routed to it: `expert_tokens` picks the rows and routing
weights, `gather_rows` selects them, the expert is an ordinary SwiGLU MLP of nn.Linears, and
`scatter_rows` adds its weighted output back. The row ops are single graph nodes that keep the
channel (last) dim in place, so passes see through them (a per-channel scale or a rotation
commutes with picking rows): FuseNorms/SmoothQuant fold into experts like any consumer of the
norm, GPTQ and AWQ collect each expert's Hessian from exactly the tokens routed to it, and the
coverage table lists every expert. The router is a linear of role "router", kept in high
precision by default (routing decisions flip under quantization)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import expert_tokens, gather_rows, route_topk, scatter_rows  # autowrapped graph ops
from .config import ModelConfig


class Router(nn.Linear):
    """The gate computing one logit per expert (role "router", see qpass.ir.roles); with
    `fp32`, in float32 whatever the model dtype; `expert_bias` (LLaDA2) shifts the choice."""
    qpass_role = "router"

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 fp32: bool = False, expert_bias: bool = False, **kw):
        super().__init__(in_features, out_features, bias=bias, **kw)
        self.fp32 = fp32
        if expert_bias:
            self.register_buffer("expert_bias", torch.zeros(out_features, **kw))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fp32:
            b = None if self.bias is None else self.bias.float()
            return F.linear(x.float(), self.weight.float(), b)
        return super().forward(x)


class Expert(nn.Module):
    """A SwiGLU MLP: down(silu(gate(x)) · up(x))."""

    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Linear(d, hidden, bias=False)
        self.up_proj = nn.Linear(d, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MoE(nn.Module):
    """forward(h (B, L, d)) -> (B, L, d): Σ over each token's top-k experts of weight · expert,
    plus the shared experts on every token."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.top_k, self.normalize = cfg.n_experts_per_tok, cfg.norm_topk_prob
        self.sigmoid, self.scale = cfg.router_sigmoid, float(cfg.routed_scaling_factor)
        self.groups = (cfg.n_expert_groups, cfg.topk_groups)
        self.router = Router(d, cfg.n_experts, bias=False, fp32=cfg.router_fp32,
                             expert_bias=cfg.router_bias)
        self.experts = nn.ModuleList(Expert(d, cfg.moe_hidden) for _ in range(cfg.n_experts))
        self.shared = Expert(d, cfg.moe_hidden * cfg.n_shared_experts) \
            if cfg.n_shared_experts else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, L, d = h.shape
        flat = h.reshape(B * L, d)
        bias = getattr(self.router, "expert_bias", None)
        idx, weights = route_topk(self.router(flat), self.top_k, self.normalize, self.sigmoid,
                                  bias, self.groups[0], self.groups[1], self.scale)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):     # unrolled by capture: one group each
            rows, w = expert_tokens(idx, weights, e)
            out = scatter_rows(out, rows, expert(gather_rows(flat, rows)) * w)
        if self.shared is not None:
            out = out + self.shared(flat)
        return out.reshape(B, L, d)

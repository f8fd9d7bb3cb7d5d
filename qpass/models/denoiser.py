"""The one fx-traceable transformer family behind every supported denoiser.

Pre-norm RMSNorm, rotate-half RoPE, SwiGLU MLP (or a mixture of experts, qpass.models.moe),
MHA/GQA with optional qkv bias and per-head q/k norms, tied or untied head; bidirectional by
default (dLLM denoisers), `causal` for autoregressive models, block-causal for block diffusion
(`attn_block_size`); optional Dream-style logit shift. Module names are generic labels
(`blocks.N.q_proj`); passes never rely on them — structure is discovered from the traced graph."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops import attention, rope  # plain names: the tracer autowraps them as single nodes
from .config import ModelConfig
from .moe import MoE
from .rope import rope_tables


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm in fp32 at least, output in x's dtype (the fused norm+quant ops reuse it)."""
    dtype = x.dtype
    xf = x.float() if dtype in (torch.float16, torch.bfloat16) else x
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (y * weight.to(y.dtype)).to(dtype)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, index: int = 0):
        super().__init__()
        d, hd = cfg.d_model, cfg.head_dim
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, hd
        self.causal, self.block_size = cfg.causal, cfg.attn_block_size
        self.attn_norm = RMSNorm(d, cfg.norm_eps)
        self.q_proj = nn.Linear(d, cfg.n_heads * hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(d, cfg.n_kv_heads * hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(d, cfg.n_kv_heads * hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.n_heads * hd, d, bias=cfg.o_bias)
        if cfg.qk_norm:
            self.q_norm, self.k_norm = RMSNorm(hd, cfg.norm_eps), RMSNorm(hd, cfg.norm_eps)
        self.mlp_norm = RMSNorm(d, cfg.norm_eps)
        if cfg.is_moe_layer(index):
            self.moe = MoE(cfg)
        else:
            self.gate_proj = nn.Linear(d, cfg.mlp_hidden, bias=cfg.mlp_bias)
            self.up_proj = nn.Linear(d, cfg.mlp_hidden, bias=cfg.mlp_bias)
            self.down_proj = nn.Linear(cfg.mlp_hidden, d, bias=cfg.mlp_bias)

    def forward(self, x, cos, sin, key_mask):
        B, L = x.shape[0], x.shape[1]
        h = self.attn_norm(x)
        q = self.q_proj(h).view(B, L, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(h).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(h).view(B, L, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if hasattr(self, "q_norm"):
            q, k = self.q_norm(q), self.k_norm(k)
        q = rope(q, cos, sin)
        k = rope(k, cos, sin)
        if self.block_size:
            a = attention(q, k, v, key_mask, self.causal, block_size=self.block_size)
        else:
            a = attention(q, k, v, key_mask, self.causal)
        a = a.transpose(1, 2).reshape(B, L, self.n_heads * self.head_dim)
        x = x + self.o_proj(a)
        h = self.mlp_norm(x)
        if hasattr(self, "moe"):
            return x + self.moe(h)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class Denoiser(nn.Module):
    """forward(input_ids (B, L) long, attention_mask (B, L) bool/int or None) -> logits (B, L, V)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.head.weight = self.embed.weight
        self.tokenizer = None  # set by loaders when the checkpoint carries one
        self._build_rope()

    def _build_rope(self) -> None:
        device = self.embed.weight.device
        # RoPE tables are derived, so they are non-persistent and rebuilt on the real device;
        # on meta they are shapes only (a 128k-context model inspects without allocating them).
        cos, sin = rope_tables(self.config.head_dim, self.config.max_seq_len,
                               self.config.rope_theta, self.config.rope_scaling, device=device)
        self.register_buffer("rope_cos", cos.to(device), persistent=False)
        self.register_buffer("rope_sin", sin.to(device), persistent=False)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        # RoPE tables stay fp32 (LLaDA computes RoPE in fp32) unless the model is float64.
        if self.rope_cos.dtype in (torch.float16, torch.bfloat16):
            self.rope_cos, self.rope_sin = self.rope_cos.float(), self.rope_sin.float()
        if self.rope_cos.dtype == torch.float64 and not self.rope_cos.is_meta:
            cos, sin = rope_tables(self.config.head_dim, self.config.max_seq_len,
                                   self.config.rope_theta, self.config.rope_scaling,
                                   torch.float64, self.rope_cos.device)
            self.rope_cos, self.rope_sin = cos, sin
        return self

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        x = self.embed(input_ids)
        cos, sin = self.rope_cos, self.rope_sin  # the rope op slices them to the length
        for blk in self.blocks:
            x = blk(x, cos, sin, attention_mask)
        logits = self.head(self.norm(x))
        if self.config.logit_shift:
            logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        return logits


def init_weights(model: Denoiser, seed: int = 0, std: float = 0.02) -> Denoiser:
    """Seeded random init (normal std for matrices, ones for norms, small random biases)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and "norm" in name:  # non-unit norms make fusion tests meaningful
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))
    return model

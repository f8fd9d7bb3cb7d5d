"""One learnable invertible input transform, FlatQuant-style (Sun et al. 2024).

For a group of linears reading x (n channels) the transform is
    x → x·M,   M = diag(1/s)·(A⊗B)          W → W·T,   T = diag(s)·(A⊗B)⁻ᵀ
so x·M·(W·T)ᵀ = x·Wᵀ for any invertible A (a×a), B (b×b) with a·b = n and any s > 0. The
Kronecker factors keep the parameters (a² + b² + n) and the training cost (n·(a+b) per row)
small; s is a per-channel smoothing scale, learned in log space. A learnable activation clip
ratio sigmoid(θ) trains with it (its fake quantizer's range), as in FlatQuant's LCT. Starting
point: A = B = I, s = 1, so an untrained transform is the identity."""
from __future__ import annotations

import math

import torch
from torch import nn


def kron_factors(n: int) -> tuple[int, int]:
    """(a, b), a·b = n, a the largest divisor of n not above √n (24·24 for 576, 32·48 for
    1536); a prime n gives (1, n): a dense b×b factor."""
    a = max(d for d in range(1, int(math.isqrt(n)) + 1) if n % d == 0)
    return a, n // a


def _kron_apply(x: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """x·(A⊗B) on the last dim without forming A⊗B: (x as a×b) → Aᵀ·X·B."""
    a, b = A.shape[0], B.shape[0]
    xr = x.reshape(*x.shape[:-1], a, b)
    return torch.matmul(torch.matmul(A.t(), xr), B).reshape(x.shape)


class AffineTransform(nn.Module):
    """The learnable transform of one input group (see the module doc)."""

    def __init__(self, n: int, clip_init: float | None = 0.98):
        """clip_init None: no clip (ratio 1, nothing to learn)."""
        super().__init__()
        a, b = kron_factors(n)
        self.A = nn.Parameter(torch.eye(a))
        self.B = nn.Parameter(torch.eye(b))
        self.log_s = nn.Parameter(torch.zeros(n))
        self.clip_logit = None if clip_init is None else \
            nn.Parameter(torch.tensor(math.log(clip_init / (1 - clip_init))))

    @property
    def clip(self) -> torch.Tensor | float:
        return 1.0 if self.clip_logit is None else torch.sigmoid(self.clip_logit)

    def act(self, x: torch.Tensor) -> torch.Tensor:
        """x·M."""
        return _kron_apply(x * torch.exp(-self.log_s).to(x.dtype), self.A.to(x.dtype),
                           self.B.to(x.dtype))

    def weight(self, W: torch.Tensor) -> torch.Tensor:
        """W·T, every row w·diag(s)·(A⁻ᵀ⊗B⁻ᵀ)."""
        Ai, Bi = torch.linalg.inv(self.A).t(), torch.linalg.inv(self.B).t()
        return _kron_apply(W * torch.exp(self.log_s).to(W.dtype), Ai.to(W.dtype), Bi.to(W.dtype))

    def matrices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, T) in float64, for folding: M = diag(1/s)·(A⊗B), T = diag(s)·(A⊗B)⁻ᵀ."""
        A, B = self.A.detach().double(), self.B.detach().double()
        s = torch.exp(self.log_s.detach().double())
        K = torch.kron(A, B)
        K_inv_t = torch.kron(torch.linalg.inv(A), torch.linalg.inv(B)).t()
        return K / s[:, None], s[:, None] * K_inv_t

    def condition(self) -> float:
        """cond(A⊗B)·max(s)/min(s): how far from orthogonal the learned transform went."""
        A, B = self.A.detach().double(), self.B.detach().double()
        s = torch.exp(self.log_s.detach().double())
        return float(torch.linalg.cond(A) * torch.linalg.cond(B) * s.max() / s.min())

"""Online (run-time) transforms that rotation passes insert into the graph.

Both are plain module-level functions marked with `qpass_role`, so capture/annotation gives
their `call_function` nodes the role "hadamard" or "transform" and lowering can recognise
them without names: `online_hadamard` becomes `qpass::hadamard`, `channel_transform` a matmul
with the matrix the graph holds as a buffer."""
from __future__ import annotations

import torch

from qpass import hadamard


def online_hadamard(x: torch.Tensor, signs: torch.Tensor | None = None) -> torch.Tensor:
    """x -> x @ (H·diag(signs))ᵀ / √n along the last dim (see qpass.hadamard.transform)."""
    return hadamard.transform(x, signs=signs)


online_hadamard.qpass_role = "hadamard"


def channel_transform(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """x -> x @ matrix on the last dim (DuQuant's smoothing·rotation·permutation, folded)."""
    return x @ matrix.to(x.dtype)


channel_transform.qpass_role = "transform"

"""Fast orthonormal Hadamard transform and QuaRot-style randomized Hadamard rotations.

Conventions (n = x.shape[-1], H = matrix(n), s = signs, D = diag(s)):

    random_matrix(n, seed)             == H @ D / sqrt(n)       (signs scale the COLUMNS of H)
    transform(x)                       == x @ H.T / sqrt(n)     (each row vector v -> H v / sqrt(n))
    transform(x, inverse=True)         == x @ H / sqrt(n)       (v -> H^T v / sqrt(n))
    transform(x, signs=s)              == x @ (H D).T / sqrt(n) == transform(x * s)
    transform(x, signs=s, inverse=True) == x @ H D / sqrt(n)    == transform(x, inverse=True) * s

so with Q = random_matrix(n, seed) and s = random_signs(n, seed): transform(x, signs=s) ==
x @ Q.T and transform(x, signs=s, inverse=True) == x @ Q, and the two undo each other.
H is only symmetric for powers of two, so H and H^T really differ for other sizes.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading

import torch

from qpass.errors import HadamardError
from qpass.hadamard.construct import _check_order, _core_cached, factorize, matrix


def random_signs(n: int, seed: int) -> torch.Tensor:
    """n random +-1 values (float64), reproducible from seed via a private torch.Generator."""
    n = _check_order(n)
    g = torch.Generator(device="cpu")
    g.manual_seed(int(seed))
    bits = torch.randint(0, 2, (n,), generator=g, dtype=torch.int64)
    return (2 * bits - 1).to(torch.float64)


def random_matrix(n: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Orthonormal randomized Hadamard matrix H @ diag(random_signs(n, seed)) / sqrt(n).

    Built in float64 and cast once, so every dtype gets the correctly rounded entries.
    """
    h = matrix(n).to(torch.float64)
    q = h * random_signs(n, seed)[None, :] / math.sqrt(n)
    return q.to(dtype)


@functools.lru_cache(maxsize=64)
def _core_as(m: int, dtype: torch.dtype, device: torch.device, transposed: bool) -> torch.Tensor:
    c = _core_cached(m)
    c = c.T if transposed else c
    return c.to(dtype=dtype, device=device).contiguous()


def _butterfly(y: torch.Tensor) -> torch.Tensor:
    """Unnormalized Sylvester transform along the last dim of a (rows, p) tensor.

    Each step applies [[1, 1], [1, -1]] to the top index bit and rotates that bit to the
    bottom; after log2(p) steps every bit is transformed once and the order is restored.
    """
    rows, p = y.shape
    half = p // 2
    for _ in range(p.bit_length() - 1):
        y = y.view(rows, 2, half)
        a, b = y[:, 0, :], y[:, 1, :]
        y = torch.stack((a + b, a - b), dim=2).view(rows, p)
    return y


# Inside `dense_sylvester()` (LearnedAffine's training, which differentiates through the online
# Hadamards) and up to this order, one matmul with the cached ±1 Sylvester matrix beats the
# butterfly's log2(p) memory-bound passes and their backward (2.4–3.8× forward on this CPU for
# p = 64…512). Everything else keeps the butterfly, whatever the grad mode: its fp32 results
# are what saved checkpoints were calibrated and tested with (bit-identical logits,
# tests/house/test_checkpoint_compat.py; a streamed run equals an in-memory one bit for bit),
# and GPTQ turns ulp-level changes of its Hessians into different codes.
_DENSE_MAX = 1024
_DENSE = threading.local()


@contextlib.contextmanager
def dense_sylvester():
    """Within this block (this thread), transforms use the dense Sylvester matmul."""
    depth = getattr(_DENSE, "depth", 0)
    _DENSE.depth = depth + 1
    try:
        yield
    finally:
        _DENSE.depth = depth


@functools.lru_cache(maxsize=32)
def _sylvester_as(p: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The p×p Sylvester matrix (symmetric, entries ±1: exact in every float dtype), built by
    the butterfly itself so the two paths compute the same transform."""
    return _butterfly(torch.eye(p, dtype=torch.float64)).to(dtype=dtype, device=device)


def _fwht(y: torch.Tensor) -> torch.Tensor:
    """Unnormalized Sylvester transform along the last dim of a (rows, p) tensor."""
    p = y.shape[1]
    if p <= _DENSE_MAX and getattr(_DENSE, "depth", 0):
        return y @ _sylvester_as(p, y.dtype, y.device)
    return _butterfly(y)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    if dtype in (torch.float64, torch.float32):
        return dtype
    if dtype.is_floating_point:  # float16, bfloat16, float8 ...: accumulate in float32
        return torch.float32
    raise HadamardError(f"transform needs a real floating-point tensor, got dtype {dtype}")


def transform(
    x: torch.Tensor, *, signs: torch.Tensor | None = None, inverse: bool = False
) -> torch.Tensor:
    """Orthonormal Hadamard transform along the last dim, in O(n log n + n m).

    Forward: returns x @ H.T / sqrt(n), i.e. every vector v along the last dim becomes
    H v / sqrt(n) with H = matrix(n) = kron(core(m), sylvester(p)). inverse=True applies the
    transpose instead (x @ H / sqrt(n)), so transform(transform(x), inverse=True) == x.
    signs (length n, +-1) scale the columns of H: forward multiplies x by signs first, inverse
    multiplies the result by signs last (see the module docstring for the exact identities).

    Any leading batch shape (including empty ones) works. float64 and float32 are computed in
    their own dtype; float16 / bfloat16 are computed in float32 and cast back. Differentiable.
    """
    if not isinstance(x, torch.Tensor):
        raise HadamardError(f"transform needs a torch.Tensor, got {type(x).__name__}")
    if x.dim() == 0:
        raise HadamardError("transform needs a tensor with at least one dimension, got a scalar")
    n = x.shape[-1]
    p, m = factorize(n)
    work = _compute_dtype(x.dtype)
    s = None
    if signs is not None:
        if not isinstance(signs, torch.Tensor) or signs.shape != (n,):
            got = tuple(signs.shape) if isinstance(signs, torch.Tensor) else type(signs).__name__
            raise HadamardError(f"signs must be a tensor of shape ({n},), got {got}")
        s = signs.to(dtype=work, device=x.device)

    batch = x.shape[:-1]
    rows = math.prod(batch)
    y = x.to(work).reshape(rows, n)
    if s is not None and not inverse:
        y = y * s
    if p > 1:  # Sylvester factor acts on the fast index i % p
        y = _fwht(y.reshape(rows * m, p)).reshape(rows, n)
    if m > 1:  # core acts on the slow index i // p: (m, m) @ (rows, m, p)
        c = _core_as(m, work, x.device, inverse)
        y = torch.matmul(c, y.reshape(rows, m, p)).reshape(rows, n)
    y = y * (1.0 / math.sqrt(n))
    if s is not None and inverse:
        y = y * s
    return y.reshape(*batch, n).to(x.dtype)

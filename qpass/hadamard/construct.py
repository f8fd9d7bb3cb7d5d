"""Exact Hadamard matrices of order 2^k * m, built from a small m x m "core".

Every supported order n factors as n = p * m with p a power of two and m one of the cores
below, and

    matrix(n) = kron(C_m, S_p)

where S_p is the Sylvester matrix (S_1 = [1], S_2p = [[S_p, S_p], [S_p, -S_p]], equivalently
S_p[a, b] = (-1)^popcount(a & b)) and C_m is the core. Because (A kron B)(A kron B)^T =
AA^T kron BB^T = mI kron pI = nI, checking the cores exactly is enough to make every order exact.
The core is the *outer* (slow) factor, as in QuaRot, so index i = (i // p, i % p).

Core constructions (each core is verified exactly when built):
  Paley I  (q = 3 mod 4 prime power, order q+1): 12, 20, 28 (q=27), 44, 60, 108, 140
  Paley II (q = 1 mod 4 prime power, order 2(q+1)): 36 (q=17), 52 (q=25), 148 (q=73)
  Williamson (four symmetric circulants of order w, order 4w): 156 (w=39), 172 (w=43)
  40 = 2 * 20 needs no core of its own: 2^k * 40 = 2^(k+1) * 20.
"""

from __future__ import annotations

import functools
import operator

import torch

from qpass.errors import HadamardError
from qpass.hadamard.field import jacobsthal

# m such that every 2^k * m is supported (k >= 0); 1 covers the powers of two.
CORES: tuple[int, ...] = (1, 12, 20, 28, 36, 40, 44, 52, 60, 108, 140, 148, 156, 172)

_PALEY_I = {12: 11, 20: 19, 28: 27, 44: 43, 60: 59, 108: 107, 140: 139}
_PALEY_II = {36: 17, 52: 25, 148: 73}

# Williamson quadruples: first rows of symmetric circulant A, B, C, D with
# A^2 + B^2 + C^2 + D^2 = 4wI. Published sequences (w=43: M. Hall Jr., "Combinatorial Theory",
# 2nd ed.; w=39: S. London, PhD thesis, 2013), as tabulated in SageMath's hadamard_matrix
# module. Both are re-verified exactly every time the core is built.
_WILLIAMSON = {
    156: (
        "+++--+-+-----+--++----++--+-----+-+--++",
        "+++--++-+---+-+--+----+--+-+---+-++--++",
        "++++---+--++----+-+--+-+----++--+---+++",
        "+---++-+-+-----+++-++-+++-----+-+-++---",
    ),
    172: (
        "++---++++-+--+--++--------++--+--+-++++---+",
        "+++-+-++--+-+-++++-+----+-++++-+-+--++-+-++",
        "++-++++++----+-+--++-++-++--+-+----++++++-+",
        "+---++--++++-+-+++-++--++-+++-+-++++--++---",
    ),
}

# Canonical core for each odd part: every core except 1 and 40 is 4 * (odd number).
_CORE_BY_ODD = {m // 4: m for m in CORES if m % 8 == 4}


def _check_order(n) -> int:
    if isinstance(n, bool):
        raise HadamardError(f"Hadamard size must be a positive integer, got {n!r}")
    try:
        n = operator.index(n)
    except TypeError:
        raise HadamardError(f"Hadamard size must be a positive integer, got {n!r}") from None
    if n < 1:
        raise HadamardError(f"Hadamard size must be a positive integer, got {n}")
    return n


def _split(n: int) -> tuple[int, int] | None:
    """(p, m) with n = p * m, m canonical, or None when unsupported."""
    p = n & -n  # largest power of two dividing n
    odd = n // p
    if odd == 1:
        return n, 1
    m = _CORE_BY_ODD.get(odd)
    if m is None or p < 4:  # a Hadamard order > 2 is a multiple of 4
        return None
    return n // m, m


def _nearest(n: int) -> tuple[int | None, int]:
    """Largest supported size below n (None if none) and smallest above n."""
    below, above = None, None
    for m in (1,) + tuple(_CORE_BY_ODD.values()):
        s = m
        while s < n:
            below = s if below is None else max(below, s)
            s *= 2
        s = s if s > n else s * 2
        above = s if above is None else min(above, s)
    return below, above


def _unsupported(n: int) -> HadamardError:
    below, above = _nearest(n)
    near = f"{below} or {above}" if below is not None else f"{above}"
    why = " (none exists: beyond 2, a Hadamard size must be a multiple of 4)" if n % 4 else ""
    return HadamardError(
        f"no Hadamard matrix of size {n} is available{why}: supported sizes are 2^k * m "
        f"(k >= 0) for m in {list(CORES)}. Nearest supported sizes: {near}."
    )


def factorize(n: int) -> tuple[int, int]:
    """Split a supported size n into (pow2, m), n == pow2 * m, with m the core that is used.

    m is canonical: the smallest core, so 40 * 2^k factors as (2^(k+1), 20); m == 1 for powers
    of two. Raises HadamardError (listing the supported m and the nearest sizes) otherwise.
    """
    n = _check_order(n)
    split = _split(n)
    if split is None:
        raise _unsupported(n)
    return split


def supported(n: int) -> bool:
    """Whether matrix(n) / transform on a last dim of n can be built. Never raises."""
    try:
        n = _check_order(n)
    except HadamardError:
        return False
    return _split(n) is not None


def sizes(limit: int) -> list[int]:
    """Every supported size <= limit, ascending."""
    return [n for n in range(1, int(limit) + 1) if _split(n) is not None]


def sylvester(p: int) -> torch.Tensor:
    """Sylvester matrix of order p (a power of two), int64, symmetric."""
    h = torch.ones(1, 1, dtype=torch.int64)
    h2 = torch.tensor([[1, 1], [1, -1]], dtype=torch.int64)
    while h.shape[0] < p:
        h = torch.kron(h2, h)
    return h


def _paley_i(q: int) -> torch.Tensor:
    # Q skew with Q Q^T = qI - J, zero row sums => [[1, 1^T], [-1, Q + I]] is Hadamard.
    Q = torch.tensor(jacobsthal(q), dtype=torch.int64)
    h = torch.empty(q + 1, q + 1, dtype=torch.int64)
    h[0, :] = 1
    h[1:, 0] = -1
    h[1:, 1:] = Q + torch.eye(q, dtype=torch.int64)
    return h


def _paley_ii(q: int) -> torch.Tensor:
    # Symmetric conference matrix C (C^2 = qI, zero diagonal); replacing 0 by [[1,-1],[-1,-1]]
    # and +-1 by +-[[1,1],[1,-1]] gives a Hadamard matrix of order 2(q+1).
    Q = torch.tensor(jacobsthal(q), dtype=torch.int64)
    c = torch.zeros(q + 1, q + 1, dtype=torch.int64)
    c[0, 1:] = 1
    c[1:, 0] = 1
    c[1:, 1:] = Q
    one = torch.tensor([[1, 1], [1, -1]], dtype=torch.int64)
    zero = torch.tensor([[1, -1], [-1, -1]], dtype=torch.int64)
    return torch.kron(c, one) + torch.kron(torch.eye(q + 1, dtype=torch.int64), zero)


def _circulant(row: torch.Tensor) -> torch.Tensor:
    w = row.numel()
    idx = (torch.arange(w)[None, :] - torch.arange(w)[:, None]) % w
    return row[idx]


def _williamson(rows: tuple[str, ...]) -> torch.Tensor:
    signs = [torch.tensor([1 if ch == "+" else -1 for ch in r], dtype=torch.int64) for r in rows]
    for s in signs:  # symmetric circulants commute and are self-transpose: needed for the array
        if not torch.equal(s[1:], s[1:].flip(0)):
            raise AssertionError("Williamson row is not symmetric")
    A, B, C, D = map(_circulant, signs)
    blocks = [[A, B, C, D], [-B, A, -D, C], [-C, D, A, -B], [-D, -C, B, A]]
    return torch.cat([torch.cat(r, dim=1) for r in blocks], dim=0)


def _verify(h: torch.Tensor) -> torch.Tensor:
    n = h.shape[0]
    ok = h.shape == (n, n) and bool((h.abs() == 1).all())
    ok = ok and torch.equal(h @ h.T, n * torch.eye(n, dtype=torch.int64))
    if not ok:  # a bug in a construction, not a user error
        raise AssertionError(f"constructed core of order {n} is not a Hadamard matrix")
    return h


@functools.lru_cache(maxsize=None)
def _core_cached(m: int) -> torch.Tensor:
    if m == 1:
        h = torch.ones(1, 1, dtype=torch.int64)
    elif m in _PALEY_I:
        h = _paley_i(_PALEY_I[m])
    elif m in _PALEY_II:
        h = _paley_ii(_PALEY_II[m])
    elif m in _WILLIAMSON:
        h = _williamson(_WILLIAMSON[m])
    elif m == 40:
        h = torch.kron(_core_cached(20), sylvester(2))
    else:
        raise HadamardError(f"{m} is not a Hadamard core; cores are {list(CORES)}")
    return _verify(h)


def core(m: int) -> torch.Tensor:
    """The m x m core (int64, exact, verified), m in CORES. A copy: the cache stays intact."""
    return _core_cached(m).clone()


def matrix(n: int) -> torch.Tensor:
    """Hadamard matrix of order n: int64, entries +-1, H @ H.T == n * I exactly.

    H = kron(core(m), sylvester(p)) with (p, m) = factorize(n). Dense, so n^2 * 8 bytes: use
    transform() rather than this for large n. Not symmetric in general (Paley cores are not).
    """
    p, m = factorize(n)
    if m == 1:
        return sylvester(p)
    return torch.kron(_core_cached(m), sylvester(p))

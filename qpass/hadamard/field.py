"""Small finite fields GF(p^e), just enough for Paley constructions.

Elements are the integers 0..q-1: the base-p digits of an element are the coefficients of a
polynomial over GF(p) (lowest degree first), taken modulo a monic irreducible polynomial of
degree e that is found by exhaustive search. Fields here have at most a few hundred elements,
so plain Python is fast enough and every table is cached.
"""

from __future__ import annotations

import functools
import itertools


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, int(n**0.5) + 1))


def prime_power(q: int) -> tuple[int, int] | None:
    """(p, e) with q == p**e and p prime, or None if q is not a prime power."""
    if q < 2:
        return None
    p = next(d for d in range(2, q + 1) if q % d == 0)  # smallest prime factor
    e, r = 0, q
    while r % p == 0:
        r //= p
        e += 1
    return (p, e) if r == 1 else None


def _poly_mod(a: list[int], m: list[int], p: int) -> list[int]:
    """Remainder of a modulo the monic polynomial m, coefficients lowest degree first."""
    a = [c % p for c in a]
    d = len(m) - 1
    for i in range(len(a) - 1, d - 1, -1):
        c = a[i]
        if c:
            for j in range(d + 1):  # subtract c * x^(i-d) * m
                a[i - d + j] = (a[i - d + j] - c * m[j]) % p
    return a[:d] if d else []


def _monic_polys(degree: int, p: int):
    for low in itertools.product(range(p), repeat=degree):
        yield list(low) + [1]


@functools.lru_cache(maxsize=None)
def irreducible(p: int, e: int) -> tuple[int, ...]:
    """The first monic irreducible polynomial of degree e over GF(p), lowest degree first.

    Irreducible means no monic factor of degree 1..e//2, checked by trial division; the search
    order is lexicographic on the low coefficients, so the result is deterministic.
    """
    if e == 1:
        return (0, 1)  # x: GF(p) itself, elements are residues mod p
    for cand in _monic_polys(e, p):
        if cand[0] == 0:
            continue  # divisible by x
        if all(
            any(_poly_mod(cand, f, p)) for d in range(1, e // 2 + 1) for f in _monic_polys(d, p)
        ):
            return tuple(cand)
    raise AssertionError(f"no irreducible polynomial of degree {e} over GF({p})")  # impossible


class GF:
    """GF(q), q = p**e, with elements 0..q-1 (digit i of the base-p expansion = coeff of x^i)."""

    def __init__(self, q: int):
        pe = prime_power(q)
        if pe is None:
            raise ValueError(f"{q} is not a prime power")
        self.q = q
        self.p, self.e = pe
        self.modulus = irreducible(self.p, self.e)

    def _digits(self, a: int) -> list[int]:
        return [(a // self.p**i) % self.p for i in range(self.e)]

    def _from_digits(self, ds: list[int]) -> int:
        return sum(d * self.p**i for i, d in enumerate(ds))

    def add(self, a: int, b: int) -> int:
        da, db = self._digits(a), self._digits(b)
        return self._from_digits([(x + y) % self.p for x, y in zip(da, db)])

    def neg(self, a: int) -> int:
        return self._from_digits([(-x) % self.p for x in self._digits(a)])

    def sub(self, a: int, b: int) -> int:
        return self.add(a, self.neg(b))

    def mul(self, a: int, b: int) -> int:
        if self.e == 1:
            return (a * b) % self.p
        da, db = self._digits(a), self._digits(b)
        prod = [0] * (2 * self.e - 1)
        for i, x in enumerate(da):
            for j, y in enumerate(db):
                prod[i + j] += x * y
        return self._from_digits(_poly_mod(prod, list(self.modulus), self.p))

    def chi(self) -> list[int]:
        """Quadratic character per element: 0 for 0, +1 for nonzero squares, -1 otherwise."""
        squares = {self.mul(a, a) for a in range(1, self.q)}
        return [0] + [1 if a in squares else -1 for a in range(1, self.q)]


@functools.lru_cache(maxsize=None)
def jacobsthal(q: int) -> tuple[tuple[int, ...], ...]:
    """Jacobsthal matrix Q[i][j] = chi(a_i - a_j) of GF(q), as nested tuples (cached, immutable).

    Q is symmetric when q = 1 mod 4 and skew-symmetric when q = 3 mod 4; Q Q^T = qI - J and
    every row sums to 0. Those are the facts the Paley constructions rely on.
    """
    f = GF(q)
    if f.p == 2:
        raise ValueError("Jacobsthal matrices need an odd q (in GF(2^e) every element is a square)")
    chi = f.chi()
    return tuple(tuple(chi[f.sub(i, j)] for j in range(q)) for i in range(q))

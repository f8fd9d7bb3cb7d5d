"""Tests for qpass.hadamard: exact matrices, the fast transform, and randomized rotations.

Exactness strategy (keeps the whole file fast on two CPU cores):
  * every core C_m is checked exactly (C C^T == m I in int64);
  * every size n <= 4096 gets a full exact H H^T == n I (float32 matmul of +-1 entries: every
    partial sum is an integer of magnitude <= 4096 < 2^24, so float32 is exact here);
  * for n > 4096 the matrix is kron(C_m, S_p) by construction, and (C kron S)(C kron S)^T =
    C C^T kron S S^T = m I kron p I = n I, so the exact core check covers it. On top of that we
    check sampled rows against an independent elementwise formula, their exact mutual
    orthogonality, and the fast transform against those rows.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qpass.hadamard as hd
from qpass.errors import HadamardError, QpassError
from qpass.hadamard.construct import core
from qpass.hadamard.field import GF, jacobsthal

CORES = (1, 12, 20, 28, 36, 40, 44, 52, 60, 108, 140, 148, 156, 172)
LIMIT = 32768
# Enumerated here independently of the library: {2^k * m <= LIMIT} for every core m.
ALL_SIZES = sorted({m << k for m in CORES for k in range(16) if m << k <= LIMIT})
SMALL = [n for n in ALL_SIZES if n <= 4096]
LARGE = [n for n in ALL_SIZES if n > 4096]
MUST = (64, 128, 256, 768, 3584, 4096, 12288, 18944)


def sylvester_entries(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(-1)^popcount(a & b), elementwise: the Sylvester matrix without any recursion."""
    v = a & b
    par = torch.zeros_like(v)
    while bool(v.any()):
        par ^= v & 1
        v = v >> 1
    return 1 - 2 * par


def formula_rows(n: int, rows: torch.Tensor) -> torch.Tensor:
    """Rows `rows` of kron(core(m), S_p) computed entry by entry (int64)."""
    p, m = hd.factorize(n)
    i, j = rows[:, None], torch.arange(n)[None, :]
    return core(m)[i // p, j // p] * sylvester_entries(i % p, j % p)


def sample_rows(n: int, k: int = 48) -> torch.Tensor:
    g = torch.Generator().manual_seed(n)
    idx = torch.randperm(n, generator=g)[: min(k, n)]
    return torch.cat([idx, torch.tensor([0, n - 1])]).unique()


@functools.lru_cache(maxsize=4)
def dense64(n: int) -> torch.Tensor:
    return hd.matrix(n).to(torch.float64)


def exact_gram_is_scaled_identity(h: torch.Tensor) -> bool:
    """H H^T == n I, exactly (float32 is exact here, see the module docstring).

    The Gram matrix is symmetric, so with rows split in halves H1, H2 only H1 H1^T, H1 H2^T and
    H2 H2^T are needed: 3/4 of the full product.
    """
    n = h.shape[0]
    h32 = h.to(torch.float32)
    k = n // 2
    if k == 0:
        return torch.equal(h32 @ h32.T, torch.full((1, 1), float(n)))
    h1, h2 = h32[:k], h32[k:]
    eye = n * torch.eye(k, dtype=torch.float32)
    return (
        torch.equal(h1 @ h1.T, eye)
        and torch.equal(h2 @ h2.T, n * torch.eye(n - k, dtype=torch.float32))
        and not bool((h1 @ h2.T).any())
    )


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


# ---------------------------------------------------------------- sizes and factorization


def test_sizes_enumeration_matches_supported():
    assert hd.sizes(LIMIT) == ALL_SIZES
    assert tuple(hd.CORES) == CORES
    listed = set(ALL_SIZES)
    for n in range(1, LIMIT + 1):
        assert hd.supported(n) == (n in listed), n
    for n in MUST:
        assert hd.supported(n)


@pytest.mark.parametrize("n", ALL_SIZES)
def test_factorize(n):
    p, m = hd.factorize(n)
    assert p * m == n and m in CORES and p & (p - 1) == 0
    assert m == 1 or m % 8 == 4  # canonical: smallest core (40 * 2^k -> 20 * 2^(k+1))


def test_factorize_known():
    assert hd.factorize(3584) == (128, 28)
    assert hd.factorize(12288) == (1024, 12)
    assert hd.factorize(18944) == (128, 148)
    assert hd.factorize(40) == (2, 20)
    assert hd.factorize(1) == (1, 1) and hd.factorize(2) == (2, 1)


# ---------------------------------------------------------------- exact matrices


@pytest.mark.parametrize("m", CORES)
def test_core_exact(m):
    c = core(m)
    assert c.dtype == torch.int64 and c.shape == (m, m)
    assert bool((c.abs() == 1).all())
    assert torch.equal(c @ c.T, m * torch.eye(m, dtype=torch.int64))


def test_core_is_a_copy():
    c = core(12)
    c.fill_(0)
    assert bool((core(12).abs() == 1).all())


def test_some_cores_are_not_symmetric():
    # The reason transform/inverse must distinguish H from H^T.
    for m in (12, 28, 108, 172):
        c = core(m)
        assert not torch.equal(c, c.T)


@pytest.mark.parametrize("n", SMALL)
def test_matrix_exact_and_dense_transform(n):
    h = hd.matrix(n)
    assert h.dtype == torch.int64 and h.shape == (n, n)
    assert bool((h.abs() == 1).all())
    assert exact_gram_is_scaled_identity(h)
    rows = sample_rows(n)
    assert torch.equal(h[rows], formula_rows(n, rows))
    # fast transform == dense product, both directions
    x = torch.randn(3, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    hf = h.to(torch.float64) / math.sqrt(n)
    assert rel_err(hd.transform(x), x @ hf.T) <= 1e-12
    assert rel_err(hd.transform(x, inverse=True), x @ hf) <= 1e-12


@pytest.mark.parametrize("n", LARGE)
def test_large_sizes(n):
    rows = sample_rows(n, k=32)
    r = formula_rows(n, rows)
    assert bool((r.abs() == 1).all())
    r64 = r.to(torch.float64)  # exact: integer sums of magnitude <= 32768
    assert torch.equal((r64 @ r64.T).to(torch.int64), n * torch.eye(len(rows), dtype=torch.int64))
    x = torch.randn(2, n, dtype=torch.float64, generator=torch.Generator().manual_seed(n))
    y = hd.transform(x)
    assert rel_err(y[:, rows], x @ r64.T / math.sqrt(n)) <= 1e-12
    assert rel_err(hd.transform(y, inverse=True), x) <= 1e-12
    assert abs(float(y.norm() / x.norm()) - 1.0) <= 1e-12


# ---------------------------------------------------------------- transform properties


@pytest.mark.parametrize("n", [12, 28, 148, 156, 172, 3584, 12288, 18944])
def test_inverse_applies_transpose(n):
    # transform(x, inverse=True)[:, j] == <column j of H, x> / sqrt(n): check on sampled columns.
    cols = sample_rows(n, k=16)
    x = torch.randn(2, n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    # columns of H: H[:, cols] == formula rows of H^T; use basis vectors through the forward map
    e = torch.zeros(len(cols), n, dtype=torch.float64)
    e[torch.arange(len(cols)), cols] = 1.0
    h_cols = hd.transform(e) * math.sqrt(n)  # row t = H e_cols[t] = column cols[t] of H
    assert torch.equal(h_cols.round(), h_cols)
    assert rel_err(hd.transform(x, inverse=True)[:, cols], x @ h_cols.T / math.sqrt(n)) <= 1e-12


@settings(max_examples=60, deadline=None)
@given(
    n=st.sampled_from(SMALL),
    batch=st.lists(st.integers(0, 3), min_size=0, max_size=3),
    seed=st.integers(0, 2**31 - 1),
)
def test_transform_property(n, batch, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*batch, n, dtype=torch.float64, generator=g)
    h = dense64(n) / math.sqrt(n)
    y = hd.transform(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    if x.numel() == 0:
        return
    assert rel_err(y, x @ h.T) <= 1e-12
    assert rel_err(hd.transform(y, inverse=True), x) <= 1e-12
    assert rel_err(y.norm(dim=-1), x.norm(dim=-1)) <= 1e-12
    s = hd.random_signs(n, seed)
    q = hd.random_matrix(n, seed)
    ys = hd.transform(x, signs=s)
    assert rel_err(ys, x @ q.T) <= 1e-12
    assert rel_err(hd.transform(x, signs=s, inverse=True), x @ q) <= 1e-12
    assert rel_err(hd.transform(ys, signs=s, inverse=True), x) <= 1e-12


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-3),
                                       (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("n", [64, 768, 3584])
def test_low_precision_dtypes(dtype, tol, n):
    x64 = torch.randn(4, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = x64.to(dtype)
    y = hd.transform(x)
    assert y.dtype == dtype and y.shape == x.shape
    assert torch.isfinite(y).all()
    assert rel_err(y.to(torch.float64), hd.transform(x.to(torch.float64))) <= tol
    back = hd.transform(y, inverse=True).to(torch.float64)
    assert rel_err(back, x64) <= 3 * tol


def test_non_contiguous_and_autograd():
    n = 768
    base = torch.randn(n, 6, dtype=torch.float64)
    x = base.T[::2]  # non-contiguous (3, n)
    assert rel_err(hd.transform(x), hd.transform(x.contiguous())) == 0.0
    x = x.clone().requires_grad_(True)
    g = torch.randn(3, n, dtype=torch.float64)
    (hd.transform(x) * g).sum().backward()
    # y = x M^T with M orthonormal, so dL/dx = g M = transform(g, inverse=True)
    assert rel_err(x.grad, hd.transform(g, inverse=True)) <= 1e-12


def test_transform_does_not_modify_input():
    x = torch.randn(2, 12288, dtype=torch.float64)
    x0 = x.clone()
    hd.transform(x, signs=hd.random_signs(12288, 3))
    hd.transform(x, inverse=True)
    assert torch.equal(x, x0)


# ---------------------------------------------------------------- random rotations


@pytest.mark.parametrize("n", [12, 64, 148, 768, 1024])
def test_random_matrix_orthonormal_and_seeded(n):
    q = hd.random_matrix(n, seed=5)
    assert q.dtype == torch.float64 and q.shape == (n, n)
    assert float((q @ q.T - torch.eye(n, dtype=torch.float64)).abs().max()) <= 1e-12
    assert torch.equal(q, hd.random_matrix(n, seed=5))
    assert not torch.equal(q, hd.random_matrix(n, seed=6))
    s = hd.random_signs(n, 5)
    assert torch.equal(q * math.sqrt(n), dense64(n) * s[None, :])  # signs scale the columns
    assert hd.random_matrix(n, 5, dtype=torch.float32).dtype == torch.float32


def test_random_signs():
    s = hd.random_signs(4096, 0)
    assert s.dtype == torch.float64 and s.shape == (4096,)
    assert bool((s.abs() == 1).all())
    assert torch.equal(s, hd.random_signs(4096, 0))
    assert not torch.equal(s, hd.random_signs(4096, 1))
    assert 0 < int((s > 0).sum()) < 4096


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("n", [3, 6, 7, 10, 14, 42, 68, 100, 84, 4 * 17 * 64])
def test_unsupported_sizes(n):
    assert not hd.supported(n)
    for fn in (hd.matrix, hd.factorize):
        with pytest.raises(HadamardError) as err:
            fn(n)
        msg = str(err.value)
        assert str(n) in msg and "Nearest supported sizes" in msg
        for m in CORES:
            assert str(m) in msg
    with pytest.raises(HadamardError):
        hd.transform(torch.zeros(2, n))


def test_nearest_sizes_in_message():
    with pytest.raises(HadamardError, match=r"Nearest supported sizes: 96 or 104"):
        hd.factorize(100)
    with pytest.raises(HadamardError, match=r"4 or 8"):
        hd.matrix(7)
    with pytest.raises(HadamardError, match=r"multiple of 4.*40 or 44"):
        hd.transform(torch.zeros(42))


@pytest.mark.parametrize("bad", [0, -4, 2.5, "64", True, None])
def test_bad_size_types(bad):
    assert not hd.supported(bad)
    with pytest.raises(HadamardError):
        hd.factorize(bad)


def test_errors_are_catchable_as_valueerror():
    with pytest.raises(ValueError):
        hd.matrix(100)
    with pytest.raises(QpassError):
        hd.matrix(100)


def test_transform_argument_errors():
    with pytest.raises(HadamardError, match="signs"):
        hd.transform(torch.zeros(3, 64), signs=torch.ones(32))
    with pytest.raises(HadamardError, match="floating"):
        hd.transform(torch.zeros(3, 64, dtype=torch.int64))
    with pytest.raises(HadamardError):
        hd.transform(torch.tensor(1.0))


# ---------------------------------------------------------------- finite fields


@pytest.mark.parametrize("q", [9, 25, 27, 49, 125])
def test_extension_fields(q):
    f = GF(q)
    els = range(q)
    # multiplicative group: every nonzero element has an inverse, and mul distributes over add
    assert all(any(f.mul(a, b) == 1 for b in els) for a in range(1, q))
    g = torch.Generator().manual_seed(q)
    for a, b, c in torch.randint(0, q, (200, 3), generator=g).tolist():
        assert f.mul(a, f.add(b, c)) == f.add(f.mul(a, b), f.mul(a, c))
        assert f.mul(a, f.mul(b, c)) == f.mul(f.mul(a, b), c)
    assert f.chi().count(1) == (q - 1) // 2


@pytest.mark.parametrize("q", [11, 17, 19, 25, 27, 43, 73])
def test_jacobsthal(q):
    Q = torch.tensor(jacobsthal(q))
    assert torch.equal(Q @ Q.T, q * torch.eye(q, dtype=torch.int64) - 1)
    assert torch.equal(Q.T, Q if q % 4 == 1 else -Q)


@pytest.mark.parametrize("p", [2, 4, 64, 128, 1024, 2048])
def test_dense_sylvester_path_equals_the_butterfly(p):
    """Inside dense_sylvester() and up to _DENSE_MAX the transform is one matmul with the
    cached Sylvester matrix: the butterfly's transform and gradient (equal on integers in
    float64, where every sum is exact); outside it the butterfly itself runs, whatever the
    grad mode (bit for bit what saved checkpoints were made with)."""
    from qpass.hadamard.fast import _butterfly, _fwht, dense_sylvester
    y = torch.randint(-50, 50, (6, p), generator=torch.Generator().manual_seed(p)).double()
    with dense_sylvester():
        assert torch.equal(_fwht(y), _butterfly(y))
    x = torch.randn(5, p, generator=torch.Generator().manual_seed(p + 1))
    assert torch.equal(_fwht(x), _butterfly(x))
    assert torch.equal(_fwht(x.clone().requires_grad_()).detach(), _butterfly(x))
    g = torch.randn(5, p, generator=torch.Generator().manual_seed(p + 2))
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    with dense_sylvester():
        (_fwht(a) * g).sum().backward()
    (_butterfly(b) * g).sum().backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-5 * p ** 0.5)

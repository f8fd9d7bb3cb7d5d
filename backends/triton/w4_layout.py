"""The Triton backend's private int4 layout for W4A16 (never saved: checkpoints keep the
canonical stream of docs/FORMATS.md, and the reference backend never sees this).

The canonical stream puts eight consecutive codes k = 8w..8w+7 of a row in one word, so a
kernel gets (BK/8, 8, BN) after its shifts and must reshape to the (BK, BN) tile `tl.dot`
takes — a register layout conversion per tile. Here the K axis is cut into tiles of TILE_K
rows, each into eight sub-blocks of S = TILE_K/8 consecutive rows, and word (t·S + r, n)
holds in nibble j the code of row k = t·TILE_K + j·S + r of output column n:

    packed[t·S + r, n] = Σ_j  u[n, t·TILE_K + j·S + r] << 4j          shape (Kp/8, N), N fastest

So one (S, BN) load of int32 words gives, for each j, `(words >> 4j) & 15`: directly the
K-major (S, BN) operand of the j-th sub-block, no reshape; consecutive threads read
consecutive n (coalesced). Scales and zeros are transposed to (G, N) so a sub-block's row of
scales is one contiguous load. K is zero-padded to a multiple of TILE_K (the kernel masks the
activations there, so padded codes never contribute).

`repacked(qweight, scales, zeros, K)` repacks once per weight tensor and keeps the result
while that tensor lives (keyed by identity, checked against in-place changes); the backend's
`prepare` calls it at bind time (load_compiled), so no forward pays for it."""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from qpass.errors import BackendError
from qpass.formats import integer

TILE_K = 128             # rows of K per repacked tile: eight sub-blocks of 16 (one MMA K-step)
NIBBLES = 8


@dataclass(frozen=True)
class RepackedW4:
    packed: torch.Tensor         # int32 (Kp/8, N)
    scales: torch.Tensor         # fp32 (G, N)
    zeros: torch.Tensor | None   # int32 (G, N), None: symmetric (implicit 8)
    K: int
    group_size: int
    tile_k: int

    @property
    def n_tiles(self) -> int:
        return self.packed.shape[0] * NIBBLES // self.tile_k


def _to_int32_bits(v: torch.Tensor) -> torch.Tensor:
    """int64 values in [0, 2^32) -> int32 with the same 32 bits."""
    return torch.where(v >= 2 ** 31, v - 2 ** 32, v).to(torch.int32)


def repack_codes(codes: torch.Tensor, tile_k: int = TILE_K) -> torch.Tensor:
    """Unsigned int4 codes (N, K) -> the tiled layout (Kp/8, N) int32."""
    if tile_k % (NIBBLES * 16) or tile_k <= 0:
        raise BackendError(f"tile_k={tile_k} must be a positive multiple of 128")
    N, K = codes.shape
    Kp = -(-K // tile_k) * tile_k
    c = torch.zeros(N, Kp, dtype=torch.int64, device=codes.device)
    c[:, :K] = codes.to(torch.int64)
    S = tile_k // NIBBLES
    c = c.view(N, Kp // tile_k, NIBBLES, S)                        # [n, t, j, r]
    shifts = (torch.arange(NIBBLES, device=codes.device, dtype=torch.int64) * 4).view(1, 1, -1, 1)
    words = (c << shifts).sum(dim=2)                               # [n, t, r]; nibbles disjoint
    return _to_int32_bits(words.reshape(N, Kp // NIBBLES).t().contiguous())


def unpack_codes(packed: torch.Tensor, K: int, tile_k: int = TILE_K) -> torch.Tensor:
    """The inverse of repack_codes: (Kp/8, N) int32 -> unsigned codes (N, K) int32."""
    S = tile_k // NIBBLES
    rows, N = packed.shape
    w = packed.to(torch.int64).t().reshape(N, rows // S, 1, S)      # [n, t, 1, r]
    shifts = (torch.arange(NIBBLES, device=packed.device, dtype=torch.int64) * 4).view(1, 1, -1, 1)
    codes = (w >> shifts) & 0xF                                     # [n, t, j, r]
    return codes.reshape(N, -1)[:, :K].to(torch.int32)


def repack(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, K: int,
           tile_k: int = TILE_K) -> RepackedW4:
    """Canonical int4 stream (N, K/8), scales/zeros (N, G) -> RepackedW4."""
    codes = integer.unpack_codes(qweight, 4, K)
    N = codes.shape[0]
    s = scales.to(torch.float32).reshape(N, -1)
    G = s.shape[1]
    z = None if zeros is None else zeros.to(torch.int32).reshape(N, G).t().contiguous()
    return RepackedW4(repack_codes(codes, tile_k), s.t().contiguous(), z, K, K // G, tile_k)


# ----- once per weight tensor ------------------------------------------------------------------
_CACHE: dict[int, tuple] = {}          # id(qweight) -> (weakref, stamp, RepackedW4)
_stats = {"repacks": 0}


def _stamp(*ts) -> tuple:
    return tuple((id(t), t._version, t.device) if t is not None else None for t in ts)


def repacked(qweight, scales, zeros, K: int) -> RepackedW4:
    """The repacked form of this weight, computed on first use and kept while the tensor
    lives; recomputed if any of the three tensors was replaced or changed in place."""
    key, stamp = id(qweight), _stamp(qweight, scales, zeros)
    hit = _CACHE.get(key)
    if hit is not None and hit[0]() is qweight and hit[1] == stamp and hit[2].K == K:
        return hit[2]
    r = repack(qweight, scales, zeros, K)
    _stats["repacks"] += 1
    ref = weakref.ref(qweight, lambda _r, key=key: _drop(key, _r))
    _CACHE[key] = (ref, stamp, r)
    return r


def _drop(key: int, ref) -> None:
    hit = _CACHE.get(key)
    if hit is not None and hit[0] is ref:
        del _CACHE[key]


def repack_count() -> int:
    """How many repacks ran in this process (tests check that a bound model repacks once)."""
    return _stats["repacks"]

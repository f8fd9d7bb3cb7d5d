"""Bit-stream packing of codes (docs/FORMATS.md): b-bit codes along K into int32 words, and
back. Every packed weight (integer, floating-point element bit patterns, K-quant codes)
uses this one layout."""
from __future__ import annotations

import sys

import torch

from ..errors import SpecError
_MASK32 = 0xFFFFFFFF


def packed_cols(K: int, bits: int) -> int:
    """int32 words per row: each run of 32 codes takes `bits` words."""
    return -(-K // 32) * bits


def _check_bits(bits: int) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 8:
        raise SpecError(f"pack bits must be an integer from 1 to 8, got {bits!r}")


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes (..., K) -> int32 (..., ceil(K/32)*bits), a little-endian bit stream along K.
    Code i of each 32-run sits at stream bit bits*i; word j holds stream bits 32j..32j+31."""
    _check_bits(bits)
    if codes.dtype != torch.uint8:
        raise SpecError(f"pack expects uint8 codes, got {codes.dtype}")
    if codes.numel() and int(codes.max()) >= (1 << bits):
        raise SpecError(f"a code exceeds {bits} bits (max {int(codes.max())})")
    K = codes.shape[-1]
    pad = (-K) % 32
    if 8 % bits == 0 and sys.byteorder == "little":
        # 1/2/4/8 bits: no code crosses a byte and the stream's bytes are the int32 words' bytes
        # in memory order, so OR the codes of each byte together and view the bytes as int32.
        per = 8 // bits
        c = torch.nn.functional.pad(codes, (0, pad)).reshape(*codes.shape[:-1], -1, per)
        byte = c[..., 0].clone()
        for j in range(1, per):
            byte |= c[..., j] << (bits * j)
        return byte.contiguous().view(torch.int32)
    c = torch.nn.functional.pad(codes.to(torch.int64), (0, pad)).reshape(*codes.shape[:-1], -1, 32)
    offsets = bits * torch.arange(32, dtype=torch.int64, device=codes.device)
    words = []
    for j in range(bits):  # at most 8 words per run; each gathers the codes that touch it
        sh = offsets - 32 * j
        idx = ((sh > -bits) & (sh < 32)).nonzero().squeeze(1)
        s = sh[idx]
        part = (c[..., idx] << s.clamp(min=0)) >> (-s).clamp(min=0)
        words.append((part & _MASK32).sum(-1))  # disjoint bits: sum == OR
    w = torch.stack(words, dim=-1)
    w = torch.where(w >= 1 << 31, w - (1 << 32), w)  # reinterpret as two's-complement int32
    return w.to(torch.int32).reshape(*codes.shape[:-1], -1)


def unpack(packed: torch.Tensor, bits: int, K: int) -> torch.Tensor:
    """Inverse of pack: int32 (..., ceil(K/32)*bits) -> uint8 codes (..., K)."""
    _check_bits(bits)
    if packed.dtype != torch.int32 or packed.shape[-1] != packed_cols(K, bits):
        raise SpecError(f"unpack expects int32 (..., {packed_cols(K, bits)}) for K={K}, "
                        f"bits={bits}; got {packed.dtype} {tuple(packed.shape)}")
    if 32 % bits == 0:
        # Fast path (bits 1, 2, 4, 8): no code straddles words; arithmetic shift + mask on
        # int32 is exact for every bit pattern, so this stays in int32 (hot in simulation).
        per = 32 // bits
        shifts = bits * torch.arange(per, dtype=torch.int32, device=packed.device)
        codes = (packed.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
        return codes.reshape(*packed.shape[:-1], -1)[..., :K].to(torch.uint8)
    w = (packed.to(torch.int64) & _MASK32).reshape(*packed.shape[:-1], -1, bits)
    offsets = bits * torch.arange(32, dtype=torch.int64, device=packed.device)
    j, sh = offsets // 32, offsets % 32
    lo = w[..., j] >> sh
    # a code may straddle two words; when it does not, the shifted high part lies above the mask
    hi = w[..., (j + 1).clamp(max=bits - 1)] << (32 - sh)
    codes = ((lo | hi) & ((1 << bits) - 1)).to(torch.uint8)
    return codes.reshape(*packed.shape[:-1], -1)[..., :K]

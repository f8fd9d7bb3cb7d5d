"""The bytes of ggml's block types qpass writes and reads (ggml-common.h's block structs), both
ways and nothing else: qpass's codes and stored scales <-> one row-major run of blocks.

Per block, little-endian (K weights of a row in K/32 or K/256 blocks, rows one after another):
  Q8_0  (34 B / 32)  fp16 d | 32 int8 q                          w = d·q,       q = u − 128
  Q4_0  (18 B / 32)  fp16 d | 16 B: weight j low nibble of byte j, j+16 its high nibble
                                                                 w = d·(u − 8)
  Q5_0  (22 B / 32)  fp16 d | u32 qh: bit j = bit 4 of weight j | 16 B low nibbles as Q4_0
                                                                 w = d·(u − 16)
  Q4_K  (144 B / 256) fp16 d | fp16 dmin | 12 B scales: 6-bit sc_j, m_j of the 8 sub-blocks
        (j < 4: sc_j = b[j] & 63, m_j = b[j+4] & 63; j >= 4: sc_j = b[j+4] & 15 | (b[j-4] >> 6) << 4,
        m_j = b[j+4] >> 4 | (b[j] >> 6) << 4) | 128 B: per 64 weights 32 bytes, weight l of
        the first 32 in the low nibble of byte l, of the second 32 in its high nibble
                                                                 w = (d·sc)·u − dmin·m
  Q6_K  (210 B / 256) 128 B ql | 64 B qh | 16 int8 scales | fp16 d; per 128 weights (64 B of
        ql, 32 of qh): for l < 32, ql[l] = u[l] & 15 | (u[l+64] & 15) << 4, ql[l+32] =
        u[l+32] & 15 | (u[l+96] & 15) << 4, qh[l] = u[l] >> 4 | (u[l+32] >> 4) << 2 |
        (u[l+64] >> 4) << 4 | (u[l+96] >> 4) << 6; sub-block j = weights 16j..16j+15
                                                                 w = (d·sc)·(u − 32)
(u: qpass's unsigned code.) `pack(kind, parts)` and `unpack(kind, raw, N, K)` are inverse to
each other on every valid input (tests/interop/test_gguf_kquants.py)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GGML_Q4_0, GGML_Q5_0, GGML_Q8_0, GGML_Q4_K, GGML_Q6_K = 2, 6, 8, 12, 14
NAMES = {GGML_Q4_0: "Q4_0", GGML_Q5_0: "Q5_0", GGML_Q8_0: "Q8_0", GGML_Q4_K: "Q4_K",
         GGML_Q6_K: "Q6_K"}
# ggml type -> (weights per block, bytes per block)
SIZES = {GGML_Q4_0: (32, 18), GGML_Q5_0: (32, 22), GGML_Q8_0: (32, 34), GGML_Q4_K: (256, 144),
         GGML_Q6_K: (256, 210)}
# the 32-block types: code bits, their zero code
SIMPLE = {GGML_Q4_0: 4, GGML_Q5_0: 5, GGML_Q8_0: 8}


@dataclass
class Blocks:
    """One tensor's blocks as numpy arrays, row-major (N rows of K weights):
    codes  uint8 (N, K) unsigned codes u
    d      float16 (N, K/32) for the 32-block types; (N, K/256) super-block d for K-quants
    dmin   float16 (N, K/256) (Q4_K)
    sc     uint8 (N, K/32) (Q4_K, 0..63) / int8 (N, K/16) (Q6_K)
    m      uint8 (N, K/32) (Q4_K, 0..63)"""
    codes: np.ndarray
    d: np.ndarray
    dmin: np.ndarray | None = None
    sc: np.ndarray | None = None
    m: np.ndarray | None = None


def pack(kind: int, b: Blocks) -> bytes:
    N, K = b.codes.shape
    per, _ = SIZES[kind]
    nb = K // per
    u = np.ascontiguousarray(b.codes, dtype=np.uint8).reshape(N, nb, per)
    d = np.ascontiguousarray(b.d, dtype=np.float16).reshape(N, nb, 1).view(np.uint8)
    if kind == GGML_Q8_0:
        parts = [d, (u.astype(np.int16) - 128).astype(np.int8).view(np.uint8)]
    elif kind == GGML_Q4_0:
        parts = [d, u[..., :16] | (u[..., 16:] << 4)]
    elif kind == GGML_Q5_0:
        qh = np.packbits(u >> 4, axis=-1, bitorder="little")          # (N, nb, 4): bit j
        parts = [d, qh, (u[..., :16] & 15) | ((u[..., 16:] & 15) << 4)]
    elif kind == GGML_Q4_K:
        dmin = np.ascontiguousarray(b.dmin, dtype=np.float16).reshape(N, nb, 1).view(np.uint8)
        sc = np.asarray(b.sc, np.uint8).reshape(N, nb, 8)
        m = np.asarray(b.m, np.uint8).reshape(N, nb, 8)
        sb = np.zeros((N, nb, 12), np.uint8)
        sb[..., 0:4] = (sc[..., 0:4] & 63) | ((sc[..., 4:8] >> 4) << 6)
        sb[..., 4:8] = (m[..., 0:4] & 63) | ((m[..., 4:8] >> 4) << 6)
        sb[..., 8:12] = (sc[..., 4:8] & 15) | ((m[..., 4:8] & 15) << 4)
        q = u.reshape(N, nb, 4, 2, 32)
        qs = (q[..., 0, :] | (q[..., 1, :] << 4)).reshape(N, nb, 128)
        parts = [d, dmin, sb, qs]
    elif kind == GGML_Q6_K:
        q = u.reshape(N, nb, 2, 4, 32)                  # per 128: quarters of 32
        ql = np.concatenate([(q[..., 0, :] & 15) | ((q[..., 2, :] & 15) << 4),
                             (q[..., 1, :] & 15) | ((q[..., 3, :] & 15) << 4)], axis=-1)
        qh = ((q[..., 0, :] >> 4) | ((q[..., 1, :] >> 4) << 2) | ((q[..., 2, :] >> 4) << 4)
              | ((q[..., 3, :] >> 4) << 6))
        sc = np.asarray(b.sc, np.int8).reshape(N, nb, 16).view(np.uint8)
        parts = [ql.reshape(N, nb, 128), qh.reshape(N, nb, 64), sc, d]
    else:
        raise ValueError(f"ggml type {kind} is not one qpass writes")
    return np.concatenate([p.astype(np.uint8, copy=False) for p in parts], axis=-1).tobytes()


def unpack(kind: int, raw, N: int, K: int) -> Blocks:
    per, size = SIZES[kind]
    nb = K // per
    r = np.asarray(raw, np.uint8).reshape(N, nb, size)
    if kind in SIMPLE:
        d = r[..., :2].copy().view(np.float16)[..., 0]
        if kind == GGML_Q8_0:
            u = (r[..., 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        elif kind == GGML_Q4_0:
            qs = r[..., 2:]
            u = np.concatenate([qs & 15, qs >> 4], axis=-1)
        else:
            hi = np.unpackbits(r[..., 2:6], axis=-1, bitorder="little")      # (N, nb, 32)
            qs = r[..., 6:]
            u = np.concatenate([qs & 15, qs >> 4], axis=-1) | (hi << 4)
        return Blocks(u.reshape(N, K), d)
    if kind == GGML_Q4_K:
        d = r[..., 0:2].copy().view(np.float16)[..., 0]
        dmin = r[..., 2:4].copy().view(np.float16)[..., 0]
        sb = r[..., 4:16]
        sc = np.concatenate([sb[..., 0:4] & 63, (sb[..., 8:12] & 15) | ((sb[..., 0:4] >> 6) << 4)],
                            axis=-1)
        m = np.concatenate([sb[..., 4:8] & 63, (sb[..., 8:12] >> 4) | ((sb[..., 4:8] >> 6) << 4)],
                           axis=-1)
        qs = r[..., 16:].reshape(N, nb, 4, 32)
        u = np.stack([qs & 15, qs >> 4], axis=-2).reshape(N, K)
        return Blocks(u, d, dmin, sc.reshape(N, nb * 8), m.reshape(N, nb * 8))
    if kind == GGML_Q6_K:
        ql = r[..., 0:128].reshape(N, nb, 2, 64)
        qh = r[..., 128:192].reshape(N, nb, 2, 32)
        sc = r[..., 192:208].copy().view(np.int8)
        d = r[..., 208:210].copy().view(np.float16)[..., 0]
        lo = np.stack([ql[..., :32] & 15, ql[..., 32:] & 15, ql[..., :32] >> 4, ql[..., 32:] >> 4],
                      axis=-2)                                    # (N, nb, 2, 4, 32)
        hi = np.stack([(qh >> s) & 3 for s in (0, 2, 4, 6)], axis=-2)
        u = (lo | (hi << 4)).reshape(N, K)
        return Blocks(u, d, None, sc.reshape(N, nb * 16))
    raise ValueError(f"ggml type {kind} is not one qpass reads")

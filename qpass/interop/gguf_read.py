"""A GGUF (version 2 and 3) reader written from the format's definition, the counterpart of
gguf_file.py's writer, so importing a GGUF file needs no gguf package. The file may come from
anyone: every count, length and offset is checked against the file's size before it is used,
and tensor data is a read-only memory map (nothing is read until a tensor is asked for).

Layout (little-endian): magic "GGUF", u32 version, u64 tensor count, u64 metadata count;
metadata as (string key, u32 value type, value); per tensor (string name, u32 n_dims, u64 dims
innermost first, u32 ggml type, u64 offset); the data section starts at the next multiple of
`general.alignment` (default 32)."""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qpass import folders
from qpass.errors import CheckpointError
from qpass.interop.gguf_file import ALIGNMENT, ARRAY, MAGIC, STRING

# value type -> numpy dtype of a scalar (STRING and ARRAY are read apart)
_NP = {0: "<u1", 1: "<i1", 2: "<u2", 3: "<i2", 4: "<u4", 5: "<i4", 6: "<f4", 7: "<u1",
       10: "<u8", 11: "<i8", 12: "<f8"}
BOOL = 7
# ggml type -> (name, elements per block, bytes per block)
GGML_TYPES = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
              6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 36),
              10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144),
              13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292),
              16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74), 18: ("IQ3_XXS", 256, 98),
              19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
              22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1),
              25: ("I16", 1, 2), 26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8),
              29: ("IQ1_M", 256, 56), 30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54),
              35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17)}
MAX_ITEMS = 1 << 26        # metadata/tensor counts and array lengths beyond this are not a model's
MAX_DIMS = 4


@dataclass
class TensorInfo:
    name: str
    dims: tuple[int, ...]          # innermost (row length) first, as GGUF stores them
    ggml_type: int
    offset: int                    # into the data section
    nbytes: int

    @property
    def type_name(self) -> str:
        return GGML_TYPES.get(self.ggml_type, (f"type {self.ggml_type}",))[0]

    @property
    def shape(self) -> tuple[int, ...]:
        """torch order: outermost first ((N, K) for a weight)."""
        return tuple(reversed(self.dims))


class GGUFFile:
    """`metadata` {key: value (arrays as lists or numpy arrays)}, `tensors` {name: TensorInfo},
    `data(name)` the tensor's bytes as a read-only uint8 array."""

    def __init__(self, path):
        self.path = Path(path)
        real = folders.regular_file(self.path, self.path.parent, "GGUF file")
        try:
            self._map = np.memmap(real, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{self.path}: cannot map the GGUF file ({e})") from None
        self._pos = 0
        self.metadata: dict[str, object] = {}
        self.tensors: dict[str, TensorInfo] = {}
        try:
            self._parse()
        except (struct.error, UnicodeDecodeError, IndexError) as e:
            raise self._bad(f"truncated or malformed header ({type(e).__name__})") from None

    # ---- primitives -------------------------------------------------------------------------
    def _bad(self, why: str) -> CheckpointError:
        return CheckpointError(f"{self.path} is not a GGUF file qpass can read: {why}")

    def _take(self, n: int) -> memoryview:
        if n < 0 or self._pos + n > len(self._map):
            raise self._bad(f"a field at byte {self._pos} runs past the end of the file")
        out = memoryview(self._map[self._pos:self._pos + n])
        self._pos += n
        return out

    def _u(self, fmt: str):
        return struct.unpack(fmt, self._take(struct.calcsize(fmt)))[0]

    def _count(self, what: str) -> int:
        n = self._u("<Q")
        if n > MAX_ITEMS or n > len(self._map):
            raise self._bad(f"{what} {n} is larger than any model's")
        return n

    def _string(self) -> str:
        n = self._u("<Q")
        if n > len(self._map):
            raise self._bad(f"a string of {n} bytes is longer than the file")
        return bytes(self._take(n)).decode("utf-8")

    def _value(self, kind: int, depth: int = 0):
        if kind == STRING:
            return self._string()
        if kind == ARRAY:
            if depth:
                raise self._bad("nested metadata arrays")
            item, n = self._u("<I"), self._count("array length")
            if item in _NP:
                dt = np.dtype(_NP[item])
                arr = np.frombuffer(self._take(n * dt.itemsize), dtype=dt)
                return arr.astype(bool) if item == BOOL else arr
            return [self._value(item, depth + 1) for _ in range(n)]
        if kind not in _NP:
            raise self._bad(f"unknown metadata value type {kind}")
        dt = np.dtype(_NP[kind])
        v = np.frombuffer(self._take(dt.itemsize), dtype=dt)[0].item()
        return bool(v) if kind == BOOL else v

    # ---- the file ---------------------------------------------------------------------------
    def _parse(self) -> None:
        if bytes(self._take(4)) != MAGIC:
            raise self._bad("no GGUF magic")
        version = self._u("<I")
        if version not in (2, 3):
            raise self._bad(f"GGUF version {version}; qpass reads versions 2 and 3")
        n_tensors, n_kv = self._count("tensor count"), self._count("metadata count")
        for _ in range(n_kv):
            key = self._string()
            self.metadata[key] = self._value(self._u("<I"))
        infos = []
        for _ in range(n_tensors):
            name = self._string()
            nd = self._u("<I")
            if not 1 <= nd <= MAX_DIMS:
                raise self._bad(f"tensor {name!r} has {nd} dimensions")
            dims = tuple(self._u("<Q") for _ in range(nd))
            kind, off = self._u("<I"), self._u("<Q")
            if kind not in GGML_TYPES:
                raise self._bad(f"tensor {name!r} has unknown ggml type {kind}")
            _, per, size = GGML_TYPES[kind]
            n = 1
            for d in dims:
                if d <= 0 or d > len(self._map) * max(per, 1):
                    raise self._bad(f"tensor {name!r} has dimension {d}")
                n *= d
            if dims[0] % per:
                raise self._bad(f"tensor {name!r}: rows of {dims[0]} are not whole "
                                f"{GGML_TYPES[kind][0]} blocks of {per}")
            if name in self.tensors or any(i.name == name for i in infos):
                raise self._bad(f"tensor {name!r} appears twice")
            infos.append(TensorInfo(name, dims, kind, off, n // per * size))
        align = self.metadata.get("general.alignment", ALIGNMENT)
        if not isinstance(align, int) or align <= 0 or align & (align - 1):
            raise self._bad(f"general.alignment {align!r} is not a power of two")
        start = -(-self._pos // align) * align
        for t in infos:
            if t.offset % align or start + t.offset + t.nbytes > len(self._map):
                raise self._bad(f"tensor {t.name!r} ({t.nbytes} bytes at offset {t.offset}) "
                                f"lies outside the file or off its alignment")
            t.offset += start
            self.tensors[t.name] = t

    def data(self, name: str) -> np.ndarray:
        t = self.tensors[name]
        return self._map[t.offset:t.offset + t.nbytes]


def is_gguf(path) -> bool:
    """Whether `path` is a file starting with the GGUF magic (never raises; GGUFFile then
    holds it to the folder rule)."""
    try:
        p = Path(path)
        if not p.is_file():
            return False
        with open(p, "rb") as f:
            return f.read(4) == MAGIC
    except (OSError, ValueError, TypeError):
        return False

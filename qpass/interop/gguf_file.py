"""A GGUF version-3 file writer (the container llama.cpp reads), written from the format's
definition so qpass needs no gguf package to export; tests read the files back with the
`gguf` package's own GGUFReader.

Layout (little-endian): magic "GGUF", u32 version 3, u64 tensor count, u64 metadata count;
metadata as (string key, u32 value type, value); per tensor (string name, u32 n_dims, u64 dims
innermost first, u32 ggml type, u64 offset into the data section); zero padding to the
alignment (32); tensor data, each tensor starting at a multiple of the alignment. A string is
u64 byte length + UTF-8 bytes; an array is u32 element type + u64 count + elements."""
from __future__ import annotations

import os
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ALIGNMENT = 32
MAGIC, VERSION = b"GGUF", 3
# metadata value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
_SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f",
           BOOL: "<?", U64: "<Q", I64: "<q", F64: "<d"}
# ggml tensor types written here
GGML_F32, GGML_F16, GGML_Q4_0, GGML_Q8_0, GGML_BF16 = 0, 1, 2, 8, 30


@dataclass
class Value:
    """A typed metadata value: `kind` one of the value types above; for ARRAY, `item` is the
    element type and `value` a list."""
    kind: int
    value: object
    item: int | None = None


@dataclass
class Tensor:
    name: str
    ggml_type: int
    dims: tuple[int, ...]          # innermost (row length) first, as GGUF stores them
    data: bytes


def _string(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _scalar(kind: int, v) -> bytes:
    return _string(v) if kind == STRING else struct.pack(_SCALAR[kind], v)


def _value(v: Value) -> bytes:
    out = struct.pack("<I", v.kind)
    if v.kind != ARRAY:
        return out + _scalar(v.kind, v.value)
    out += struct.pack("<IQ", v.item, len(v.value))
    if v.item in _SCALAR and v.value:
        return out + np.asarray(v.value, dtype=np.dtype(_SCALAR[v.item])).tobytes()
    return out + b"".join(_scalar(v.item, x) for x in v.value)


def _pad(n: int) -> int:
    return (-n) % ALIGNMENT


def write_gguf(f, metadata: dict[str, Value], tensors: list[Tensor]) -> None:
    """Write one GGUF file to the binary stream `f`."""
    head = [MAGIC, struct.pack("<IQQ", VERSION, len(tensors), len(metadata))]
    for key, v in metadata.items():
        head += [_string(key), _value(v)]
    offset = 0
    for t in tensors:
        head += [_string(t.name), struct.pack("<I", len(t.dims)),
                 struct.pack(f"<{len(t.dims)}Q", *t.dims), struct.pack("<IQ", t.ggml_type, offset)]
        offset += len(t.data) + _pad(len(t.data))
    header = b"".join(head)
    f.write(header + b"\0" * _pad(len(header)))
    for t in tensors:
        f.write(t.data)
        f.write(b"\0" * _pad(len(t.data)))


def write_file(out: Path, metadata: dict[str, Value], tensors: list[Tensor]) -> Path:
    """OUT (a path checked to be new) written whole through a temporary sibling, fsynced, then
    published without ever replacing what appeared there meanwhile."""
    from qpass.errors import CheckpointError
    from qpass.folders.owned import publish_new
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write_gguf(f, metadata, tensors)
            f.flush()
            os.fsync(f.fileno())
        try:
            publish_new(tmp, out)                 # never replaces what appeared meanwhile
        except FileExistsError:
            raise CheckpointError(f"{out} appeared while qpass was writing it; choose a new "
                                  f"file name (nothing was written)") from None
    finally:
        tmp.unlink(missing_ok=True)
    return out

"""Host and device memory for streamed stages: how much is free, and giving freed host memory
back to the operating system between stages.

A stage allocates and frees gigabytes in pieces of many sizes; glibc keeps freed heap pages of
the smaller pieces for reuse, so a 32-block LLaDA-8B run measured 8.1 GiB peak RSS although
only one stage was ever live (3.7 GiB at 6 blocks; ~0.1-0.15 GiB more per block). malloc_trim
returns those pages: flat RSS between stages (bench/scale_8b.py, docs/PERFORMANCE.md). Other C
libraries (musl, macOS) return large frees themselves; there this is a no-op."""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
from pathlib import Path

import torch


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        return getattr(libc, "malloc_trim", None)
    except OSError:
        return None


def release_freed_memory() -> None:
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def available_bytes(device: torch.device) -> int | None:
    """Free memory on `device` (CUDA: mem_get_info; CPU: MemAvailable), None if unknown."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None

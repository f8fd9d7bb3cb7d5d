"""qpass.backends: the kernel registry, the reference backend and the Triton backend.

    qpass.backends.available()      # rows: name, priority, available, reason, ops
    qpass.backends.select("linear_w8a8", device="cuda", dtype=torch.bfloat16)
"""
from .base import Backend
from .registry import (ENTRY_POINT_GROUP, OPS, Fallback, available, backends,
                       clear_fallbacks, explain, fallbacks, get, kernel, load_entry_points,
                       register, select, unregister)

__all__ = ["ENTRY_POINT_GROUP", "OPS", "Backend", "Fallback", "available", "backends",
           "clear_fallbacks", "explain", "fallbacks", "get", "kernel", "load_entry_points",
           "register", "select", "unregister"]

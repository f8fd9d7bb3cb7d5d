"""The Backend contract (DESIGN §6): a name, whether it can run here, a priority, and kernels
per op. The registry (registry.py) picks among instances; built-in and third-party backends
subclass this and never import the registry."""
from __future__ import annotations

from typing import Any, Callable

# THE list of lowered ops: backends/op_schemas.py defines one `qpass::<op>` torch.library op per
# name, the registry accepts only these, and a backend's kernels are keyed by them.
OPS = ("linear_w4a16", "linear_w8a8", "linear_w4a8", "linear_w4a4", "linear_int_codes",
       "linear_fp8", "linear_fp4a16", "quant_per_token", "rmsnorm_quant", "silu_mul_quant",
       "hadamard", "attention", "attention_kv")


def kernels_named(namespace: dict, ops: tuple[str, ...] = OPS) -> dict[str, Callable]:
    """{op: the function of that name in `namespace`} for every op of `ops`: a backend that
    names its kernels after the ops builds its table with `kernels_named(globals())`."""
    missing = [op for op in ops if not callable(namespace.get(op))]
    if missing:
        raise TypeError(f"no kernel function named {', '.join(missing)}")
    return {op: namespace[op] for op in ops}


class Backend:
    """Base class. Subclasses set `name`, `priority` and `kernels`, and override
    `available()` / `supports()` where they are narrower than "any op they have a kernel for"."""

    name: str = "backend"
    priority: int = 0
    kernels: dict[str, Callable] = {}

    def available(self) -> tuple[bool, str]:
        return True, ""

    def supports(self, op: str, spec: Any = None, device: Any = None, dtype: Any = None) -> bool:
        return op in self.kernels

    def prepare(self, op: str, module: Any) -> str | None:
        """Called once per lowered module when a model is bound to this backend's kernels: a
        backend may build private weight layouts here (kept outside the checkpoint). Returns
        a short description of what it prepared, or None."""
        return None

    def why_not(self, op: str, spec: Any, device: Any, dtype: Any) -> str:
        """A human reason for `supports() == False`; backends may be more specific."""
        if op not in self.kernels:
            return f"no kernel for {op}"
        return f"does not support {op} for spec={spec}, device={device}, dtype={dtype}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} priority={self.priority}>"

"""The kernel registry: which backend runs which op on which device (DESIGN §6).

A `Backend` names itself, says whether it can run here (`available() -> (ok, reason)`), has a
priority and a dict of kernels per op, and answers `supports(op, spec, device, dtype)`.
`select()` picks the highest-priority available backend that supports the request and records
every backend it skipped with the reason, so reports can say why the fast path was not taken.
Third-party backends register through the entry-point group `qpass.backends` (an entry point
naming a Backend instance, a Backend subclass, or a zero-argument factory)."""
from __future__ import annotations

import importlib.metadata as importlib_metadata
from dataclasses import dataclass
from typing import Any, Callable

import torch

from qpass.errors import BackendError

from .base import OPS, Backend

ENTRY_POINT_GROUP = "qpass.backends"


@dataclass
class Fallback:
    """A backend that was passed over for a request, and why."""
    op: str
    device: str
    skipped: str
    chosen: str
    reason: str


_BACKENDS: dict[str, Backend] = {}
_FALLBACKS: list[Fallback] = []
_state = {"builtins": False, "entry_points": False, "generation": 0}
_entry_point_errors: dict[str, str] = {}


def register(backend: Backend, replace: bool = False) -> Backend:
    """Add a backend (an instance). A second backend of the same name needs replace=True."""
    if not isinstance(backend, Backend):
        raise BackendError(f"register() needs a qpass.backends.registry.Backend instance, got "
                           f"{type(backend).__name__}")
    if backend.name in _BACKENDS and not replace and _BACKENDS[backend.name] is not backend:
        raise BackendError(f"a backend named {backend.name!r} is already registered; pass "
                           f"replace=True to override it")
    _BACKENDS[backend.name] = backend
    _state["generation"] += 1
    return backend


def unregister(name: str) -> None:
    _BACKENDS.pop(name, None)
    _state["generation"] += 1


def generation() -> int:
    """Bumped on every registry change, so cached kernel choices are recomputed."""
    return _state["generation"]


def _load_builtins() -> None:
    if _state["builtins"]:
        return
    _state["builtins"] = True
    from .reference import ReferenceBackend
    from .triton import TritonBackend
    register(ReferenceBackend(), replace=True)
    register(TritonBackend(), replace=True)


def load_entry_points(force: bool = False) -> None:
    """Import backends advertised in the `qpass.backends` entry-point group. A broken plugin
    does not break qpass: its error is kept and shown by `available()`."""
    if _state["entry_points"] and not force:
        return
    _state["entry_points"] = True
    for ep in importlib_metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
            backend = obj() if (isinstance(obj, type) or (callable(obj) and
                                                          not isinstance(obj, Backend))) else obj
            register(backend, replace=True)
        except Exception as e:  # a plugin's bug must not take qpass down
            _entry_point_errors[ep.name] = f"failed to load entry point {ep.value}: {e!r}"


def _ensure_loaded() -> None:
    _load_builtins()
    load_entry_points()


def backends() -> list[Backend]:
    """All registered backends, highest priority first."""
    _ensure_loaded()
    return sorted(_BACKENDS.values(), key=lambda b: -b.priority)


def get(name: str) -> Backend:
    _ensure_loaded()
    if name not in _BACKENDS:
        raise BackendError(f"unknown backend {name!r}; registered: {', '.join(_BACKENDS)}")
    return _BACKENDS[name]


def _available(b: Backend) -> tuple[bool, str]:
    try:
        ok, reason = b.available()
    except Exception as e:
        return False, f"available() raised {e!r}"
    return bool(ok), reason or ""


def available() -> list[dict]:
    """One row per backend (and per plugin that failed to load): name, priority, available,
    reason, ops. This is what `qpass backends` prints."""
    rows = []
    for b in backends():
        ok, reason = _available(b)
        rows.append({"name": b.name, "priority": b.priority, "available": ok,
                     "reason": reason, "ops": sorted(b.kernels)})
    for name, err in _entry_point_errors.items():
        rows.append({"name": name, "priority": None, "available": False, "reason": err, "ops": []})
    return rows


def _device_str(device) -> str:
    return torch.device(device).type if device is not None else "cpu"


def explain(op: str, device=None, spec: Any = None, dtype: Any = None,
            prefer: str = "auto") -> tuple[Backend | None, list[tuple[str, str]]]:
    """(chosen backend or None, [(skipped backend, reason), ...]) without recording anything."""
    if op not in OPS:
        raise BackendError(f"unknown op {op!r}; ops: {', '.join(OPS)}")
    order = backends()
    if prefer not in (None, "auto"):
        first = get(prefer)
        order = [first] + [b for b in order if b is not first]
    skipped: list[tuple[str, str]] = []
    for b in order:
        ok, reason = _available(b)
        if ok and not b.supports(op, spec, device, dtype):
            ok, reason = False, b.why_not(op, spec, device, dtype)
        if ok:
            return b, skipped
        skipped.append((b.name, reason))
    return None, skipped


def select(op: str, device=None, spec: Any = None, dtype: Any = None,
           prefer: str = "auto") -> Backend:
    """The highest-priority available backend supporting (op, spec, device, dtype). With
    `prefer` naming a backend, that one is tried first; passing over it (or any higher-priority
    backend) is recorded as a Fallback with the reason."""
    chosen, skipped = explain(op, device, spec, dtype, prefer)
    dev = _device_str(device)
    if chosen is None:
        details = "; ".join(f"{n}: {r}" for n, r in skipped)
        raise BackendError(f"no backend can run {op} on {dev} (spec={spec}, dtype={dtype}): "
                           f"{details}")
    for name, why in skipped:
        _record(Fallback(op, dev, name, chosen.name, why))
    return chosen


def _record(f: Fallback) -> None:
    if f not in _FALLBACKS:
        _FALLBACKS.append(f)


def kernel(op: str, device=None, spec: Any = None, dtype: Any = None,
           prefer: str = "auto") -> Callable:
    """The kernel function of the selected backend."""
    return select(op, device, spec, dtype, prefer).kernels[op]


def fallbacks() -> list[Fallback]:
    """Every recorded fallback (op, device, skipped backend, chosen backend, reason)."""
    return list(_FALLBACKS)


def clear_fallbacks() -> None:
    _FALLBACKS.clear()

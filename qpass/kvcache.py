"""The run-time K/V cache that the attention and RoPE graph ops consult (DESIGN §13).

A dLLM denoiser has no cache of its own: every step recomputes every row. Fast-dLLM's
approximate cache keeps the keys/values of the rows that change little (the committed prefix,
and with `dual` the still-masked suffix) from the last full forward and recomputes only a
window of rows. The graph stays as it was (FP, captured, simulated or lowered): the samplers
activate a `KVCache` around the forward, and the ops read it.

    cache = KVCache()
    with cache.refresh(key_mask):        # full forward over (B, L): K/V of every layer kept
        logits = model(x, key_mask)
    with cache.window(lo, hi):           # the model sees x[:, lo:hi] only
        logits_w = model(x[:, lo:hi])    # rows lo..hi-1; attention reads the cached K/V
                                         # outside [lo, hi) and the fresh K/V inside it

* RoPE (`qpass.ops.rope`) takes its table rows from `position_offset()` (lo in a window);
* attention ops hand their key-side tensors to `attend()`: in a refresh each layer's tensors
  are stored (any representation whose token axis is -2: float K/V, or int codes and
  per-token scales for a quantized cache); in a window the layer's cached tensors are returned
  with rows [lo, hi) replaced by the fresh ones, and the full-length key mask.
The cache is per canvas: its batch is the batch of the refresh, and a window must use it.

THE one context channel of qpass. The active cache reaches the ops through a ContextVar
(`active()`), not through an argument; no other per-call state reaches an op implicitly (the
backend registry and the kernel-call tally are process-wide tables, not per forward). Why: the
ops sit inside graphs that are captured, saved and reloaded (FP, captured, simulated, lowered;
docs/FORMATS.md's closed graph vocabulary). Passing the cache explicitly, as gpt-fast's
`setup_caches` does, would mean either cache buffers on the modules (a mutable state that the
saved checkpoint and every pass would have to know about) or an extra input threaded through
every captured graph to every attention node (a new graph signature and vocabulary version,
and checkpoints saved before would no longer load). The context channel leaves every graph as
it is; outside `refresh()`/`window()` it is None and every op runs as if it did not exist.

Layers are keyed by call order: the i-th `attend()` of a window gets the tensors of the i-th
`attend()` of the refresh. This relies on
  1. the model running the same attention ops in the same order in every forward: true of a
     traced/compiled graph (one fixed node order) and of the reference Denoiser (a plain loop
     over blocks); a forward whose attention calls depend on the data (early exit, a skipped
     or reordered layer) would be keyed wrongly and must not be run under a cache;
  2. one forward at a time per cache: the contextvar is per thread/asyncio task, and a cache
     refuses to be entered while it is active (no nesting, no second thread on the same cache).
What is checked: the count of attention calls per window equals the refresh's, and each call's
key-side tensors have the cached layer's shape (heads, head dim, number of tensors) and the
window's row count; a mismatch is a QpassError. tests/sampling/test_cache.py tests a forward
with two attention calls whose cached K/V differ (each call must get its own)."""
from __future__ import annotations

import contextlib
import contextvars
from typing import Iterator

import torch

from .errors import QpassError

_ACTIVE: contextvars.ContextVar["KVCache | None"] = contextvars.ContextVar("qpass_kvcache",
                                                                          default=None)


class KVCache:
    """Per-layer key-side tensors of one canvas, refreshed by full forwards."""

    def __init__(self) -> None:
        self.layers: list[tuple[torch.Tensor, ...]] = []
        self.key_mask: torch.Tensor | None = None
        self.length = 0          # sequence length of the last refresh
        self.mode: str | None = None
        self.start = 0
        self.stop = 0
        self._calls = 0

    # ----- what the sampler calls ------------------------------------------------------------
    @contextlib.contextmanager
    def refresh(self, key_mask: torch.Tensor | None = None) -> Iterator["KVCache"]:
        """A full forward: every attention layer's key-side tensors are (re)recorded."""
        self.layers, self.key_mask, self.length = [], key_mask, 0
        with self._active("refresh", 0, 0):
            yield self
        if not self.layers:
            raise QpassError("the model ran no qpass attention op during the cache refresh; the "
                             "K/V cache needs a denoiser built on qpass.ops.attention")

    @contextlib.contextmanager
    def window(self, start: int, stop: int) -> Iterator["KVCache"]:
        """A cached forward over rows [start, stop) of the refreshed canvas."""
        if not self.layers:
            raise QpassError("window() before any refresh(): run a full forward first")
        if not 0 <= start < stop <= self.length:
            raise QpassError(f"cache window [{start}, {stop}) is outside the cached sequence of "
                             f"length {self.length}")
        with self._active("window", start, stop):
            yield self
        if self._calls != len(self.layers):
            raise QpassError(f"the cached forward ran {self._calls} attention ops, the refresh "
                             f"{len(self.layers)}: the graph is not the one that filled the cache")

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for layer in self.layers for t in layer)

    # ----- what the ops call -----------------------------------------------------------------
    def attend(self, tensors: tuple[torch.Tensor, ...], key_mask, causal: bool = False):
        """(key-side tensors over the whole sequence, key mask) for this attention call."""
        if causal:
            raise QpassError("the K/V cache serves bidirectional denoisers; this attention is "
                             "causal (use cache='none')")
        i, self._calls = self._calls, self._calls + 1
        if self.mode == "refresh":
            if i == 0:
                self.length = tensors[0].shape[-2]
            self.layers.append(tuple(t.detach() for t in tensors))
            return tensors, key_mask
        if i >= len(self.layers):
            raise QpassError("the cached forward ran more attention ops than the refresh did")
        cached = self.layers[i]
        lo, hi = self.start, self.stop
        if tensors[0].shape[-2] != hi - lo or len(tensors) != len(cached):
            raise QpassError(f"attention call {i} got {tensors[0].shape[-2]} rows for the cache "
                             f"window [{lo}, {hi})")
        if any(c.shape[:-2] != t.shape[:-2] or c.shape[-1] != t.shape[-1]
               for c, t in zip(cached, tensors)):
            raise QpassError(f"attention call {i} does not match layer {i} of the refresh "
                             f"(shapes {[tuple(t.shape) for t in tensors]} vs "
                             f"{[tuple(c.shape) for c in cached]}): the forward ran its "
                             "attention ops in another order than the refresh did")
        out = tuple(torch.cat([c[..., :lo, :], t.to(c.dtype), c[..., hi:, :]], dim=-2)
                    for c, t in zip(cached, tensors))
        return out, self.key_mask

    @contextlib.contextmanager
    def _active(self, mode: str, start: int, stop: int):
        if _ACTIVE.get() is not None or self.mode is not None:
            raise QpassError("a K/V cache is already active; caches do not nest and one cache "
                             "serves one forward at a time")
        self.mode, self.start, self.stop, self._calls = mode, start, stop, 0
        token = _ACTIVE.set(self)
        try:
            yield
        finally:
            _ACTIVE.reset(token)
            self.mode = None


def active() -> KVCache | None:
    """The cache of the forward running now, or None (every ordinary forward)."""
    return _ACTIVE.get()


def position_offset() -> int:
    """Absolute position of the first row the model sees (0 outside a cache window)."""
    cache = _ACTIVE.get()
    return cache.start if cache is not None and cache.mode == "window" else 0

"""Linear-input statistics from calibration batches: the one collector (InputStats) and its two
drivers — forward pre-hooks over the whole graph (collect_input_stats) and the staged runner's
watch callbacks (watch_regions). Used by every pass that reads activations (ObserveActivations,
SmoothQuant, AWQ, GPTQ, DuQuant) and by `qpass inspect --outliers`; kept in core so that
inspection does not depend on a pass."""
from __future__ import annotations

from typing import Iterable, Iterator

import torch

from qpass.errors import CalibrationError


def iter_batches(calib, batch_size: int = 8) -> Iterator[tuple]:
    """Model-input tuples from a CalibrationSet, a (B, L) id tensor, or an iterable of those."""
    if calib is None:
        raise CalibrationError("no calibration data: pass calib=qpass.calibration."
                               "CalibrationSet.from_texts(...) (or a (B, L) tensor of token ids)")
    if hasattr(calib, "batches"):
        yield from calib.batches(batch_size)
    elif isinstance(calib, (str, bytes)):       # iterating text would recurse forever
        raise CalibrationError("calibration batches are token ids, not text: build "
                               "qpass.calibration.CalibrationSet.from_texts(texts, tokenizer, ...)")
    elif isinstance(calib, torch.Tensor):
        ids = calib if calib.dim() == 2 else calib.unsqueeze(0)
        for i in range(0, ids.shape[0], batch_size):
            yield (ids[i:i + batch_size],)
    elif isinstance(calib, tuple) and calib and isinstance(calib[0], torch.Tensor):
        yield calib
    elif isinstance(calib, Iterable):
        for item in calib:
            yield from iter_batches(item, batch_size)
    else:
        raise CalibrationError(f"cannot read calibration batches from {type(calib).__name__}")


def channel_ratio(absmax: torch.Tensor) -> float:
    """max / median of a per-channel absmax vector: how far the worst channel sticks out."""
    med = absmax.median().item()
    return float(absmax.max().item() / med) if med > 0 else float("inf")


class InputStats:
    """Running statistics of one linear input over calibration tokens: per-channel absmax and
    mean |x| (float64, CPU), overall min/max, the token count, and on request the Gram matrix
    Σ xᵀx (`gram=True`, in `gram_dtype` on `gram_device`: GPTQ's Hessian, AWQ's output error)
    and a seeded sample of at most `keep_rows` rows (float64: DuQuant, SmoothQuant's α search,
    static observers). The one collector every pass and `qpass inspect` use."""

    def __init__(self, name: str = "", gram: bool = False, gram_dtype: torch.dtype = torch.float64,
                 gram_device=None, keep_rows: int = 0, seed: int = 0):
        self.name = name
        self.want_gram, self.gram_dtype, self.gram_device = gram, gram_dtype, gram_device
        self.keep_rows = keep_rows
        self.gen = torch.Generator().manual_seed(seed)
        self.channel_absmax = self.sum_abs = self.gram = None
        self.lo, self.hi = float("inf"), float("-inf")
        self.tokens = 0
        self._rows: list[torch.Tensor] = []

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1])
        if not bool(torch.isfinite(x).all()):
            raise CalibrationError(f"NaN/Inf in the calibration input of {self.name or 'a linear'} "
                                   f"(shape {tuple(x.shape)}): check the model's weights and the "
                                   f"calibration data")
        if self.channel_absmax is None:
            k = x.shape[-1]
            self.channel_absmax = torch.zeros(k, dtype=torch.float64)
            self.sum_abs = torch.zeros(k, dtype=torch.float64)
            if self.want_gram:       # accumulated in float64: sums regrouped over data-parallel
                dev = self.gram_device if self.gram_device is not None else x.device   # ranks agree
                self.gram = torch.zeros(k, k, dtype=torch.float64, device=dev)
        if x.shape[0] == 0:           # an MoE expert no token of this batch was routed to
            return
        xa = x.abs()
        self.channel_absmax = torch.maximum(self.channel_absmax, xa.amax(0).double().cpu())
        self.sum_abs += xa.double().sum(0).cpu()
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))
        self.tokens += x.shape[0]
        if self.gram is not None:
            xg = x.to(device=self.gram.device, dtype=self.gram.dtype)
            self.gram.addmm_(xg.t(), xg)
        if self.keep_rows:
            self._rows.append(self._sample(x.double().cpu()))
            if sum(r.shape[0] for r in self._rows) > 4 * self.keep_rows:   # bound the memory
                self._rows = [self._sample(torch.cat(self._rows))]

    def _sample(self, rows: torch.Tensor) -> torch.Tensor:
        if rows.shape[0] <= self.keep_rows:
            return rows
        idx = torch.randperm(rows.shape[0], generator=self.gen)[:self.keep_rows]
        return rows[idx.sort().values]

    # ---- results ------------------------------------------------------------------------
    def _seen(self) -> None:
        if self.tokens == 0:
            raise CalibrationError(f"{self.name or 'a linear'} saw no calibration tokens; is the "
                                   f"calibration set empty?")

    @property
    def absmax(self) -> float:
        self._seen()
        return float(self.channel_absmax.max())

    @property
    def mean_abs(self) -> torch.Tensor:
        self._seen()
        return self.sum_abs / self.tokens

    @property
    def max_median_ratio(self) -> float:
        self._seen()
        return channel_ratio(self.channel_absmax)

    def top_outliers(self, k: int = 5) -> list[tuple[int, float]]:
        self._seen()
        vals, idx = self.channel_absmax.topk(min(k, self.channel_absmax.numel()))
        return [(int(i), float(v)) for i, v in zip(idx, vals)]

    @property
    def rows(self) -> torch.Tensor | None:
        """The kept rows (float64, at most keep_rows, in arrival order), or None."""
        return self._sample(torch.cat(self._rows)) if self._rows else None

    def hessian(self) -> torch.Tensor:
        """GPTQ's H = 2·Σ xᵀx / n, in the requested gram_dtype."""
        self._seen()
        return (self.gram * (2.0 / self.tokens)).to(self.gram_dtype)

    def all_reduce(self) -> None:
        """Combine the statistics of every data-parallel rank (no-op in one process)."""
        from .distributed import all_reduce, rank_and_world
        if rank_and_world()[1] == 1:
            return
        if self.keep_rows:
            raise CalibrationError("kept calibration rows (static observers, DuQuant, SmoothQuant's "
                                   "alpha search) are not gathered across ranks; run those passes "
                                   "in one process")
        if self.channel_absmax is None:
            raise CalibrationError(f"{self.name or 'a linear'} saw no calibration tokens on rank "
                                   f"{rank_and_world()[0]}: use at least as many calibration "
                                   f"batches as ranks")
        self.tokens = int(all_reduce(torch.tensor(float(self.tokens))).item())
        self.channel_absmax = all_reduce(self.channel_absmax, "max")
        self.sum_abs = all_reduce(self.sum_abs)
        self.lo = float(all_reduce(torch.tensor(self.lo), "min"))
        self.hi = float(all_reduce(torch.tensor(self.hi), "max"))
        if self.gram is not None:
            self.gram = all_reduce(self.gram)

    def rescale(self, s: torch.Tensor) -> None:
        """Become the statistics of X·diag(1/s) (after a smoothing scale was folded)."""
        s = s.double()
        self.channel_absmax, self.sum_abs = self.channel_absmax / s, self.sum_abs / s
        self.lo, self.hi = float("nan"), float("nan")        # not tracked through a rescale
        if self.gram is not None:
            sg = s.to(device=self.gram.device, dtype=self.gram.dtype)
            self.gram = self.gram / (sg[:, None] * sg[None, :])
        self._rows = [r / s for r in self._rows]

    def to_dict(self) -> dict:
        return {"absmax": self.absmax, "max_median_ratio": self.max_median_ratio,
                "top_outliers": self.top_outliers(), "min": self.lo, "max": self.hi,
                "tokens": self.tokens}


def _graph_device(g) -> torch.device:
    p = next(iter(g.gm.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


@torch.no_grad()
def collect_input_stats(g, calib, nodes=None, batch_size: int = 8, include_head: bool = True,
                        **opts) -> dict[str, InputStats]:
    """{linear module name: InputStats of its input} over one pass of `calib` through the whole
    graph (forward pre-hooks). nodes: the linears to watch (default every linear, the head
    too unless include_head=False); opts go to InputStats (gram=, keep_rows=, seed=)."""
    nodes = list(g.linears(include_head=include_head) if nodes is None else nodes)
    keep = opts.pop("keep_rows", 0)            # an int, or {module name: rows} per linear
    stats = {str(n.target): InputStats(str(n.target), keep_rows=keep.get(str(n.target), 0)
                                       if isinstance(keep, dict) else keep, **opts)
             for n in nodes}
    hooks = [g.module(n).register_forward_pre_hook(
        lambda _m, args, st=stats[str(n.target)]: st.add(args[0])) for n in nodes]
    dev = _graph_device(g)
    try:
        for batch in iter_batches(calib, batch_size):
            g.gm(*(b.to(dev) for b in batch))
    finally:
        for h in hooks:
            h.remove()
    for st in stats.values():
        if st.tokens:
            st.all_reduce()
    # a linear the batches ran through with zero rows (an MoE expert no token was routed to)
    # was reached; one whose hook never fired was not
    missing = [t for t, st in stats.items() if st.channel_absmax is None]
    if missing:
        raise CalibrationError(f"calibration batches never reached {missing[:5]}; is the "
                               f"calibration set empty?")
    return stats


def all_reduce_stats(stats) -> None:
    """After a staged run over this rank's batches: combine every InputStats over the ranks."""
    for st in stats:
        st.all_reduce()


def watch_regions(regions, **opts) -> tuple[dict, dict]:
    """For the staged runner (calibration/sequential.py): one InputStats per region (linears
    reading one tensor share it), watched on the region's first consumer. Returns
    ({region tensor node: InputStats}, {module target: stats.add})."""
    stats, watch = {}, {}
    for r in regions:
        if r.tensor not in stats:
            first = r.consumers[0]
            stats[r.tensor] = InputStats(str(first.target), **opts)
            watch[str(first.target)] = stats[r.tensor].add
    return stats, watch

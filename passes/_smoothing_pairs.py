"""Smoothing on top of the graph's regions (qpass.ir.regions.smoothing_regions): scale folding,
coverage of found/skipped pairs, and the records written for the report and `qpass inspect`.

A smoothing pair is a region whose producer's output channels are exactly the consumers' input
channels, so a per-channel scale s moves from the activations into the weights at no run-time
cost: X·diag(1/s) is folded into the producer, diag(s)·W (the consumers' columns) into the
consumers. Which regions qualify, and why the others do not, is the IR's business."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from qpass.ir.regions import KINDS, Region, smoothing_regions


@dataclass
class SmoothingCoverage:
    found: list[Region]
    skipped: list[Region]

    def counts(self) -> dict[str, int]:
        c = {f"found {k}": sum(p.kind == k for p in self.found) for k in KINDS}
        c.update({f"skipped {k}": sum(p.kind == k for p in self.skipped) for k in KINDS})
        return c

    def rows(self) -> list[dict]:
        return [p.to_row() for p in self.found + self.skipped]


def smoothing_coverage(g) -> SmoothingCoverage:
    """Found and skipped smoothing pairs (with reasons) of a QGraph; works on meta graphs."""
    pairs = smoothing_regions(g)
    return SmoothingCoverage([p for p in pairs if p.exact], [p for p in pairs if not p.exact])


# ---- folding -------------------------------------------------------------------------------
@torch.no_grad()
def fold_scale(g, pair: Region, s: torch.Tensor) -> None:
    """Fold X·diag(1/s) into the producer and diag(s) into the consumers' columns (float64
    math, one cast back); the graph keeps exactly its nodes."""
    s = s.detach().double()

    def scale_(t: torch.Tensor | None, factor: torch.Tensor) -> None:
        if t is not None:
            t.copy_((t.double() * factor.to(t.device)).to(t.dtype))

    prod = g.module(pair.producer)
    if pair.kind == "norm":
        scale_(prod.weight, 1.0 / s)
        scale_(getattr(prod, "bias", None), 1.0 / s)
    else:
        scale_(prod.weight, (1.0 / s)[:, None])
        scale_(prod.bias, 1.0 / s)
    for c in pair.consumers:
        scale_(g.module(c).weight, s[None, :])


def consumer_weight_absmax(g, pair: Region) -> torch.Tensor:
    """max |W[:, j]| over all consumers' column j (float64)."""
    return torch.stack([g.module(c).weight.detach().double().abs().amax(0).cpu()
                        for c in pair.consumers]).amax(0)


# ---- records for the report and `qpass inspect --after` (qpass/inspect/smoothing.py) -----
def record_folded(p: Region, s: torch.Tensor, pass_name: str, **extra) -> dict:
    """The pair's record (scale min/median/max + extra), also stored on the producer node."""
    rec = {"producer": str(p.producer.target), "kind": p.kind,
           "consumers": [str(c.target) for c in p.consumers],
           "block": p.producer.meta.get("qpass", {}).get("block"),
           "scale_min": float(s.min()), "scale_median": float(s.median()),
           "scale_max": float(s.max()), **extra}
    p.producer.meta.setdefault("qpass", {})["smoothing"] = dict(rec, pass_name=pass_name)
    for c in p.consumers:
        c.meta.setdefault("qpass", {})["smoothed_by"] = str(p.producer.target)
    return rec


def record_skipped(pairs: list[Region], pass_name: str) -> list[dict]:
    """Rows for the pairs that could not be folded, also stored on their producer nodes."""
    rows = []
    for p in pairs:
        if p.exact:
            continue
        row = p.to_row()
        p.producer.meta.setdefault("qpass", {})["smoothing_skipped"] = dict(row, pass_name=pass_name)
        rows.append(row)
    return rows

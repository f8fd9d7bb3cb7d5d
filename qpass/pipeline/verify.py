"""Probe batches and the comparisons the executor and the report use (DESIGN §3): a
recording run of a whole graph (the report's per-linear output SQNR), the relative change an
exact pass may cause by compute dtype (stage_verify.py checks it per stage), and SQNR."""
from __future__ import annotations

import math

import torch
import torch.fx as fx


# max relative change of the logits an exact pass may cause, by compute dtype
TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 5e-2}


class RecordingInterpreter(fx.Interpreter):
    """Runs a GraphModule node by node and keeps the tensor outputs of the selected nodes."""

    def __init__(self, gm: fx.GraphModule, keep=None):
        super().__init__(gm)
        self.keep = keep                  # None = every node; else a set of node names
        self.outputs: dict[str, torch.Tensor] = {}

    def run_node(self, n: fx.Node):
        out = super().run_node(n)
        if isinstance(out, torch.Tensor) and (self.keep is None or n.name in self.keep):
            self.outputs[n.name] = out.detach()
        return out


@torch.no_grad()
def record(gm: fx.GraphModule, probe: tuple, keep=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(logits, {node name: output}) of one run of `gm` on `probe`."""
    rec = RecordingInterpreter(gm, keep)
    logits = rec.run(*probe)
    return logits.detach(), rec.outputs


def relative_change(ref: torch.Tensor, new: torch.Tensor) -> float:
    """max|new - ref| / max|ref| in float64 (inf if shapes differ or the result is not finite)."""
    if ref.shape != new.shape:
        return float("inf")
    r, n = ref.double(), new.double()
    denom = r.abs().max().clamp(min=torch.finfo(torch.float64).tiny)
    val = float(((n - r).abs().max() / denom)) if r.numel() else 0.0
    return val if val == val else float("inf")   # NaN -> inf


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    """10·log10(Σref² / Σ(ref−approx)²) in float64; inf when identical (weights or outputs)."""
    r, a = ref.detach().double(), approx.detach().double()
    noise = (r - a).pow(2).sum().item()
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(max(r.pow(2).sum().item(), 1e-300) / noise)


def tolerance_for(dtype: torch.dtype) -> float:
    return TOLERANCE.get(dtype, 1e-4)


PROBE_SHAPE = (2, 32)          # one cheap probe batch: 2 sequences of 32 tokens


def default_probe(vocab_size: int, device, seed: int = 0) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, PROBE_SHAPE, generator=gen)
    return (ids.to(device),)

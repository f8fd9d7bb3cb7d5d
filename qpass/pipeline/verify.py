"""Verification of `exact` passes on a probe batch (DESIGN §3).

Before an exact pass runs, every node's output on the probe batch is recorded; afterwards the
logits are compared (max|Δ| / max|ref|). On failure the new graph is replayed with the same
recorder and the first node — in the new graph's order, among nodes that exist by name in both
graphs — whose output changed beyond tolerance is named in the VerificationError."""
from __future__ import annotations

import torch
import torch.fx as fx

from ..errors import VerificationError

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


def tolerance_for(dtype: torch.dtype) -> float:
    return TOLERANCE.get(dtype, 1e-4)


def first_divergence(gm: fx.GraphModule, probe: tuple, before: dict[str, torch.Tensor],
                     tol: float) -> tuple[str, float] | None:
    """(node name, relative change) of the first node of `gm` whose output differs from the
    recorded one by more than `tol`; None if every shared node agrees."""
    _, after = record(gm, probe)
    for n in gm.graph.nodes:
        if n.name in after and n.name in before:
            rel = relative_change(before[n.name], after[n.name])
            if rel > tol:
                return n.name, rel
    return None


def verify_exact(pass_name: str, gm: fx.GraphModule, probe: tuple, ref_logits: torch.Tensor,
                 before: dict[str, torch.Tensor]) -> float:
    """Raise VerificationError if the pass changed the logits beyond tolerance; return the
    measured relative change."""
    with torch.no_grad():
        new_logits = gm(*probe)
    tol = tolerance_for(ref_logits.dtype)
    rel = relative_change(ref_logits, new_logits)
    if rel <= tol:
        return rel
    div = first_divergence(gm, probe, before, tol)
    where = ("no node present in both graphs diverges (the change is in new nodes)" if div is None
             else f"first diverging node: {div[0]!r} ({_describe(gm, div[0])}, relative change "
                  f"{div[1]:.3e})")
    raise VerificationError(f"pass {pass_name} is declared exact but changed the logits by a max "
                            f"relative {rel:.3e} (> {tol:.0e} in {ref_logits.dtype}) on the probe "
                            f"batch; {where}. Fix the pass, or declare it exact=False")


def _describe(gm: fx.GraphModule, name: str) -> str:
    for n in gm.graph.nodes:
        if n.name == name:
            tgt = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", n.target)
            return f"{n.op} {tgt}"
    return "?"


PROBE_SHAPE = (2, 32)          # one cheap probe batch: 2 sequences of 32 tokens


def default_probe(vocab_size: int, device, seed: int = 0) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, PROBE_SHAPE, generator=gen)
    return (ids.to(device),)

"""DuQuant: per linear input, smoothing + block rotations + zig-zag permutation (exact).

For every group of linears reading the same input x (q/k/v, gate/up, o, down), with calibration
rows X of that input:
  s  = max|X|^α / max|W|^(1−α)                    per input channel (W: the group's weights)
  R₁ = block-diagonal rotation, greedily built: in each block, repeatedly move the channel
       with the largest |activation| first and spread it over the block with a Hadamard,
       then pair the loudest with the quietest channel by 45° Givens rotations, as long as
       each step lowers the block's peak (≤ max_rotation_steps steps per block)
  P  = zig-zag permutation: channels sorted by peak are dealt to blocks 0,1,…,B−1,B−1,…,0,…
       so every block gets a similar share of the outlier mass
  R₂ = a second greedy block rotation on the permuted channels
The activation side becomes one inserted node x → x·M with M = diag(1/s)·R₁·P·R₂ (a
`channel_transform` call holding M as a graph buffer); the weight side is folded offline as
W' = W·diag(s)·R₁·P·R₂, so x·M·W'ᵀ = x·Wᵀ exactly (R₁PR₂ is orthogonal). Everything is built
in float64 and cast once."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from qpass import hadamard
from qpass.errors import CalibrationError
from qpass.calibration.stats import InputStats, all_reduce_stats, channel_ratio
from qpass.ir.regions import Region, input_regions
from qpass.pipeline.pass_base import Fact, Pass, PassContext, PassResult

from ._channel_transform import fold_and_insert

_EPS = 1e-5


def block_size_for(n: int, block_size: int) -> int:
    """The largest divisor of n that is ≤ block_size (n itself when n ≤ block_size)."""
    for b in range(min(block_size, n), 0, -1):
        if n % b == 0:
            return b
    return 1


def _spread_steps(Xb: torch.Tensor, Rb: torch.Tensor, max_steps: int) -> int:
    """DuQuant's greedy step, all blocks at once: move each block's loudest channel to
    position 0 and apply an orthonormal Hadamard S (every entry ±1/√b, so that channel is
    spread evenly over the block); a block stops once a step no longer lowers its peak."""
    nb, rows, b = Xb.shape
    S = hadamard.matrix(b).to(torch.float64) / math.sqrt(b)
    ar = torch.arange(nb)
    active = torch.ones(nb, dtype=torch.bool)
    steps = 0
    for _ in range(max_steps):
        peak = Xb.abs().amax(1)                                                  # (nb, b)
        i = peak.argmax(1)
        idx = torch.arange(b).repeat(nb, 1)
        idx[ar, i] = 0
        idx[:, 0] = i                                                            # swap i ↔ 0
        Xs = torch.gather(Xb, 2, idx[:, None, :].expand(nb, rows, b)) @ S
        Rs = torch.gather(Rb, 2, idx[:, None, :].expand(nb, b, b)) @ S
        active &= Xs.abs().amax((1, 2)) < peak.amax(1) * (1 - 1e-6)
        if not active.any():
            break
        Xb[active], Rb[active] = Xs[active], Rs[active]
        steps += int(active.sum())
    return steps


def greedy_block_rotation(X: torch.Tensor, block: int, max_steps: int) -> tuple[torch.Tensor, int]:
    """Orthogonal block-diagonal R (n×n, float64) lowering each block's peak |X·R|, and the
    number of steps taken. X: (rows, n) calibration rows. First DuQuant's spreading steps
    (when the block size has a Hadamard matrix), then with the remaining budget 45° Givens
    steps pairing every block's loudest channel with its quietest; a block stops for good
    once a step no longer lowers its peak."""
    rows, n = X.shape
    nb = n // block
    if block < 2:
        return torch.eye(n, dtype=torch.float64), 0
    Xb = X.to(torch.float64).reshape(rows, nb, block).permute(1, 0, 2).clone()   # (nb, rows, b)
    Rb = torch.eye(block, dtype=torch.float64).repeat(nb, 1, 1)                  # (nb, b, b)
    steps = _spread_steps(Xb, Rb, max_steps) if hadamard.supported(block) else 0
    peak = Xb.abs().amax(1)                                                      # (nb, b)
    ar = torch.arange(nb)
    active = torch.ones(nb, dtype=torch.bool)
    c = 1.0 / math.sqrt(2.0)
    for _ in range(max_steps - steps // max(nb, 1)):
        i = peak.argmax(1)
        others = peak.clone()
        others[ar, i] = math.inf
        j = others.argmin(1)
        xi, xj = Xb[ar, :, i], Xb[ar, :, j]                                      # (nb, rows)
        ni, nj = c * (xi + xj), c * (xj - xi)
        pi, pj = ni.abs().amax(1), nj.abs().amax(1)
        active &= torch.maximum(pi, pj) < peak[ar, i] * (1 - 1e-6)
        if not active.any():
            break
        b_, i_, j_ = ar[active], i[active], j[active]
        Xb[b_, :, i_], Xb[b_, :, j_] = ni[active], nj[active]
        ri, rj = Rb[b_, :, i_], Rb[b_, :, j_]
        Rb[b_, :, i_], Rb[b_, :, j_] = c * (ri + rj), c * (rj - ri)
        peak[b_, i_], peak[b_, j_] = pi[active], pj[active]
        steps += int(active.sum())
    return torch.block_diag(*Rb), steps


def zigzag_permutation(peaks: torch.Tensor, block: int) -> torch.Tensor:
    """perm with X[:, perm] dealing channels (by descending peak) to blocks in zig-zag order."""
    n = peaks.numel()
    n_blocks = n // block
    slots: list[list[int]] = [[] for _ in range(n_blocks)]
    for k, ch in enumerate(torch.argsort(peaks, descending=True).tolist()):
        r = k % (2 * n_blocks)
        slots[r if r < n_blocks else 2 * n_blocks - 1 - r].append(ch)
    return torch.tensor([ch for s in slots for ch in s], dtype=torch.long)


def permutation_matrix(perm: torch.Tensor) -> torch.Tensor:
    """P with X·P == X[:, perm]."""
    n = perm.numel()
    P = torch.zeros(n, n, dtype=torch.float64)
    P[perm, torch.arange(n)] = 1.0
    return P


@dataclass(eq=False, repr=False)
class DuQuant(Pass):
    """Smoothing + rotation + permutation per linear input, folded into weights (exact)."""

    provides = frozenset({Fact.ROTATED, Fact.SMOOTHED})
    exact = True
    needs_calibration = True
    changes_weights = True

    block_size: int = 128
    max_rotation_steps: int = 256
    alpha: float = 0.5
    permute: bool = True
    seed: int = 0
    sample_rows: int = 512

    def groups(self, g) -> list[Region]:
        """The input regions (linears reading one tensor); the head stays in high precision."""
        return input_regions(g)

    def transform_for(self, X: torch.Tensor, absmax: torch.Tensor, weights: list[torch.Tensor]):
        """(activation matrix M, weight matrix T with W' = W·T, info) for one input group."""
        n = X.shape[1]
        w_max = torch.stack([w.abs().amax(0) for w in weights]).amax(0).clamp(min=_EPS)
        s = (absmax.clamp(min=_EPS) ** self.alpha / w_max ** (1 - self.alpha)).clamp(min=_EPS)
        Xs = X / s
        b = block_size_for(n, self.block_size)
        R1, steps1 = greedy_block_rotation(Xs, b, self.max_rotation_steps)
        O = R1
        steps2 = 0
        if self.permute and n // b > 1:
            P = permutation_matrix(zigzag_permutation((Xs @ R1).abs().amax(0), b))
            R2, steps2 = greedy_block_rotation(Xs @ R1 @ P, b, self.max_rotation_steps)
            O = R1 @ P @ R2
        M = O / s[:, None]                      # diag(1/s)·O
        T = s[:, None] * O                      # diag(s)·O
        info = {"block": b, "steps": steps1 + steps2,
                "ratio_before": channel_ratio(absmax),
                "ratio_after": channel_ratio((X @ M).abs().amax(0))}
        return M, T, info

    # statistics of the earlier stages as they were before DuQuant, the model it transforms
    stage_inputs = "before"

    def start(self, g, ctx: PassContext, saved=None) -> dict:
        """Number the groups once on the whole captured graph, so that each transform buffer
        is named by its group (duquant_transform_<k>) whichever stage makes it."""
        return {r.consumers[0]: k for k, r in enumerate(self.groups(g))}

    def run(self, g, ctx: PassContext) -> PassResult:
        """This stage's groups, their statistics collected over the stage's cached inputs."""
        nodes = ctx.nodes
        groups = [(ctx.run[r.consumers[0]], r) for r in self.groups(g) if r.consumers[0] in nodes]
        targets = [str(r.consumers[0].target) for _, r in groups]
        stats = {t: InputStats(t, keep_rows=self.sample_rows, seed=self.seed) for t in targets}
        if stats:
            ctx.runner.run_stage(ctx.stage, ctx.inputs,
                                 watch={t: st.add for t, st in stats.items()})
            all_reduce_stats(stats.values())
            missing = [t for t, st in stats.items() if st.channel_absmax is None]
            if missing:
                raise CalibrationError(f"calibration batches never reached {missing[:5]}; is the "
                                       f"calibration set empty?")
        return self._transform(g, ctx, groups, stats)

    def _transform(self, g, ctx: PassContext, groups, stats) -> PassResult:
        """Fold each (index, region) group's transform into its weights and insert x·M."""
        res = PassResult()
        task = ctx.task("DuQuant: transforms", total=len(groups))
        before, after = {}, {}             # per group (first linear): merge over stages
        for k, region in groups:
            lins = region.consumers
            st = stats[str(lins[0].target)]
            M, T, info = self.transform_for(st.rows, st.channel_absmax,
                                            [g.module(n).weight.detach().to(torch.float64).cpu()
                                             for n in lins])
            res.nodes_changed += fold_and_insert(g, region, M, T, f"duquant_transform_{k}",
                                                 f"duquant_{lins[0].name}", "DuQuant", info)
            before[str(lins[0].target)] = info["ratio_before"]
            after[str(lins[0].target)] = info["ratio_after"]
            ctx.advance(task)                # the executor recompiles the edited graph
        res.metrics.update(transforms=len(groups), ratio_before=before, ratio_after=after)
        return res

    @staticmethod
    def merged_metrics(metrics: dict) -> dict:
        """The report's summary (max and mean channel ratio over all groups) from the
        per-group ratios, once on the stages' merged metrics."""
        before = list(metrics.get("ratio_before", {}).values())
        after = list(metrics.get("ratio_after", {}).values())
        return dict(metrics,
                    max_median_before=max(before, default=0.0),
                    max_median_after=max(after, default=0.0),
                    mean_max_median_before=sum(before) / max(len(before), 1),
                    mean_max_median_after=sum(after) / max(len(after), 1))

"""LearnedRotate's training loop: Cayley SGD on R1 and the R2s from the Hadamard start, on
calibration rows drawn per step from a seeded generator (step s always sees the same rows, so
a resumed run repeats an uninterrupted one), a checkpoint every `save_every` steps, and the
guard: the rotations are kept only when their held-out calibration loss is below the
Hadamard start's by more than a relative `min_gain` (the loss of a W4A4 model moves by ~1% when
a rounding decision flips, so a smaller gain on a few held-out rows is not evidence);
otherwise the Hadamard comes back, and the result says so."""
from __future__ import annotations

import math
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from qpass.folders.owned import clear_name

from . import _cayley

CHECKPOINT = "learned-rotation.pt"          # a name work_dir.NAMES knows


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    lr: float
    momentum: float
    batch: int
    seed: int
    save_every: int
    train_r2: bool
    min_gain: float = 0.0


@dataclass
class Trained:
    """The rotations to fuse and how they came about (reported by the pass)."""
    R1: torch.Tensor
    R2: list
    fell_back: bool
    held_start: float
    held_end: float
    losses: list = field(default_factory=list)     # training-batch loss per step (before it)
    resumed_at: int = 0
    seconds: float = 0.0                           # training time of this process
    peak_rss_bytes: int = 0

    def metrics(self) -> dict:
        steps = len(self.losses)
        done = steps - self.resumed_at
        return {"train_steps": steps, "heldout_loss_hadamard": self.held_start,
                "heldout_loss_learned": self.held_end, "fell_back_to_hadamard": self.fell_back,
                "train_loss_first": self.losses[0] if self.losses else None,
                "train_loss_last": self.losses[-1] if self.losses else None,
                "train_seconds": self.seconds,
                "train_seconds_per_step": self.seconds / done if done else None,
                "peak_rss_bytes": self.peak_rss_bytes, "resumed_at_step": self.resumed_at}


def split_rows(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(training rows, held-out rows): the last eighth (at least one row) is held out."""
    held = max(1, n // 8) if n > 1 else 0
    idx = torch.arange(n)
    return idx[: n - held], idx[n - held:]


def step_rows(train: torch.Tensor, step: int, batch: int, seed: int) -> torch.Tensor:
    """The rows step `step` trains on: a function of (seed, step) only."""
    gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(step))
    return train[torch.randperm(len(train), generator=gen)[:batch]]


def mean_loss(model, R1, R2, rows: torch.Tensor, batch: int) -> float:
    with torch.no_grad():
        vals = [model.loss(R1, R2, rows[i:i + batch]).item() * len(rows[i:i + batch])
                for i in range(0, len(rows), batch)]
    return sum(vals) / max(1, len(rows))


def _f32(R1, R2):
    return (R1.float().requires_grad_(True), [r.float().requires_grad_(True) for r in R2])


def _load(path: Path | None, key: str):
    if path is None or not path.is_file() or path.is_symlink():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:                     # a torn or foreign file: start over
        return None
    return state if isinstance(state, dict) and state.get("key") == key else None


def _save(path: Path, state: dict) -> None:
    tmp = clear_name(path.with_name(path.name + ".tmp"))
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(model, R1: torch.Tensor, R2: list, cfg: TrainConfig, checkpoint: Path | None,
          key: str, task=None, on_step=None) -> Trained:
    """Train R1 (and the R2s when cfg.train_r2) from the orthogonal (float64) R1, R2 on
    `model` (a RotatedModel). `checkpoint`: the file to save to and resume from (a state
    written for another `key` is ignored); `on_step(step)` is called after each step."""
    train_rows, held_rows = split_rows(model.rows())
    start = {"R1": R1.double(), "R2": [r.double() for r in R2]}
    state = _load(checkpoint, key)
    if state is None:
        held0 = mean_loss(model, R1.float(), [r.float() for r in R2], held_rows, cfg.batch) \
            if len(held_rows) else math.nan
        state = {"key": key, "step": 0, "R1": start["R1"], "R2": start["R2"], "M1": None,
                 "M2": None, "losses": [], "held_start": held0}
    resumed_at = state["step"]
    if task is not None and resumed_at:
        task.advance(resumed_at)
    X1, X2, M1, M2 = state["R1"], list(state["R2"]), state["M1"], state["M2"]
    M2 = list(M2) if M2 is not None else [None] * len(X2)
    losses = list(state["losses"])
    t0 = time.perf_counter()
    for s in range(resumed_at, cfg.steps):
        r1, r2 = _f32(X1, X2)
        loss = model.loss(r1, r2, step_rows(train_rows, s, cfg.batch, cfg.seed))
        if not torch.isfinite(loss):
            losses.append(float("nan"))
            break
        loss.backward()
        losses.append(loss.item())
        X1, M1 = _cayley.step(X1, r1.grad, M1, cfg.lr, cfg.momentum)
        if cfg.train_r2:
            for i, r in enumerate(r2):
                X2[i], M2[i] = _cayley.step(X2[i], r.grad, M2[i], cfg.lr, cfg.momentum)
        if task is not None:
            task.advance()
            task.describe(f"step {s + 1}/{cfg.steps}: loss {losses[-1]:.4f}")
        done = s + 1
        if checkpoint is not None and (done % cfg.save_every == 0 or done == cfg.steps):
            _save(checkpoint, {"key": key, "step": done, "R1": X1, "R2": X2, "M1": M1,
                               "M2": M2, "losses": losses, "held_start": state["held_start"]})
        if on_step is not None:
            on_step(done)
    seconds = time.perf_counter() - t0
    held0 = state["held_start"]
    diverged = not all(math.isfinite(v) for v in losses)
    held1 = math.nan if diverged or not len(held_rows) else \
        mean_loss(model, X1.float(), [r.float() for r in X2], held_rows, cfg.batch)
    keep = math.isfinite(held1) and held1 < held0 * (1 - cfg.min_gain)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if checkpoint is not None:
        clear_name(checkpoint)       # the run goes on with the result; the folder may go
    return Trained(X1 if keep else start["R1"], X2 if keep else start["R2"], not keep,
                   held0, held1, losses, resumed_at, seconds, peak)

"""LearnedRotate: SpinQuant-style learned rotations, fused exactly as Rotate fuses its Q.

R1 (the residual rotation, d×d) and one R2 per v→o pair (head_dim × head_dim) start from the
Hadamards Rotate uses (H·diag(signs)/√d from `seed`, the orthonormal per-head Hₕ) and are
trained with Cayley SGD (passes/_cayley.py) on the model's own loss under the pipeline's
scheme, weights and activations fake-quantized with straight-through rounding
(passes/_rotation_model.py): next-token loss for causal models, the masked-diffusion ELBO of
the calibration states for dLLMs. Training runs once, in `start`, on the whole graph as
captured; each stage then folds the trained rotations with Rotate's own fusing code and puts
the online Hadamards (before down- and o-projections) in, so the pass manager verifies
exactness as for Rotate. Deterministic from `seed`; with an output, a checkpoint of the
rotations every `save_every` steps in the run's work folder lets an interrupted run resume.
Guard: unless the trained rotations' held-out calibration loss is below the Hadamard start's,
the Hadamard is fused instead, and the report says so."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from qpass import hadamard
from qpass.errors import PipelineError
from qpass.pipeline.pass_base import PassContext, PassResult

from ._rotation_model import RotatedModel
from ._rotation_train import CHECKPOINT, TrainConfig, train
from .rotate import Rotate, _orthonormal_hadamard, _RotateRun


@dataclass(eq=False, repr=False)
class LearnedRotate(Rotate):
    """Rotate with R1 / R2 learned on calibration data (see the module doc). `steps` Cayley
    SGD steps of `batch` calibration rows at learning rate `lr` (momentum `momentum`);
    `train_r2=False` keeps the per-head Hadamards and learns R1 only; `min_gain`: the relative
    held-out loss gain over the Hadamard the guard asks for; `fake_quant_weights=False`
    trains under activation quantization only (SpinQuant's W16A4 recipe when GPTQ rounds the
    weights afterwards)."""
    VERSION = 1
    needs_calibration = True
    needs_whole_model = True           # trains on every layer at once: `qpass quantize` loads
                                       # a checkpoint directory instead of streaming it

    steps: int = 100
    lr: float = 1.5
    momentum: float = 0.9
    batch: int = 8
    train_r2: bool = True
    save_every: int = 10
    min_gain: float = 0.01
    fake_quant_weights: bool = True

    def __post_init__(self):
        for name in ("steps", "batch", "save_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if name == "steps" else 1):
                raise PipelineError(f"LearnedRotate: {name} must be a "
                                    f"{'non-negative' if name == 'steps' else 'positive'} "
                                    f"integer, got {v!r}")
        if not (self.lr > 0 and 0 <= self.momentum < 1 and 0 <= self.min_gain < 1):
            raise PipelineError(f"LearnedRotate: lr must be > 0 and momentum in [0, 1), got "
                                f"lr={self.lr!r}, momentum={self.momentum!r}; min_gain in [0, 1), "
                                f"got {self.min_gain!r}")

    def start(self, g, ctx: PassContext, saved=None) -> "_LearnedRun":
        """Train the rotations on the whole graph (before any stage is changed)."""
        from qpass.specs import Scheme
        plan = self._stream(g)
        if ctx.scheme is None:
            raise PipelineError("LearnedRotate trains under the pipeline's quantizers; give the "
                                "pipeline a scheme, e.g. Pipeline([...], scheme='w4a4')")
        if not hasattr(ctx.calib, "clean_ids"):
            raise PipelineError("LearnedRotate trains on calibration windows; pass calib= a "
                                "qpass.calibration.CalibrationSet (from_texts / from_ids)")
        model = RotatedModel(self, g, plan, Scheme.parse(ctx.scheme), ctx.calib,
                             weights=self.fake_quant_weights)
        dev = model.device
        R1 = hadamard.random_matrix(plan.hidden_size, self.seed).to(dev)
        R2 = [_orthonormal_hadamard(hd, dev) for hd in model.head_dims()]
        cfg = TrainConfig(self.steps, self.lr, self.momentum, self.batch, self.seed,
                          self.save_every, self.train_r2, self.min_gain)
        path = Path(ctx.work_dir) / CHECKPOINT if ctx.work_dir is not None else None
        task = ctx.task("LearnedRotate: train R1/R2", total=self.steps, unit="steps")
        try:
            result = train(model, R1, R2, cfg, path, self._key(g, ctx), task)
        finally:
            task.close()
        if result.fell_back:       # Rotate's own run state: bit for bit what Rotate fuses
            return _FallbackRun(plan, hadamard.random_signs(plan.hidden_size, self.seed),
                                self.seed, result)
        heads = {v: r for (v, _, _), r in zip(model.pairs, result.R2)}
        return _LearnedRun(plan, result.R1, heads, self.seed, result)

    def _key(self, g, ctx) -> str:
        """What a checkpoint must match to be resumed: this pass's config, the scheme, the
        calibration tokens and the model's weights."""
        h = hashlib.sha256(json.dumps([self.config(), str(ctx.scheme)], sort_keys=True,
                                      default=str).encode())
        for t in (ctx.calib.input_ids, ctx.calib.clean_ids, ctx.calib.mask_ratios):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        for name, p in sorted(g.gm.named_parameters()):
            h.update(name.encode())
            h.update(p.detach().float().sum().cpu().numpy().tobytes())
        return h.hexdigest()

    def run(self, g, ctx: PassContext) -> PassResult:
        res = super().run(g, ctx)
        if ctx.run.plan.embed in ctx.nodes:          # once per run: the training's record
            t = ctx.run.trained
            res.metrics.update(t.metrics())
            if t.fell_back:
                res.notes.append(
                    f"LearnedRotate: the trained rotations' held-out calibration loss "
                    f"{t.held_end:.4f} is not {self.min_gain:.0%} below the Hadamard start's "
                    f"{t.held_start:.4f}; "
                    f"the Hadamard rotation (Rotate's, seed {self.seed}) is used instead")
            else:
                res.notes.append(f"LearnedRotate: held-out calibration loss {t.held_start:.4f} "
                                 f"(Hadamard) → {t.held_end:.4f} (learned, {len(t.losses)} steps)")
        return res


@dataclass(frozen=True)
class _FallbackRun(_RotateRun):
    """The guard's fallback: Rotate's Hadamard run state, with the training's record."""
    trained: object = None


@dataclass(frozen=True)
class _LearnedRun:
    """LearnedRotate's state for one run: the plan, dense R1 and R2 per v node, the record."""
    plan: object
    R1: torch.Tensor
    heads: dict
    seed: int
    trained: object

    def times_q(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.R1.to(device=x.device, dtype=x.dtype)

    def times_qt(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.R1.T.to(device=x.device, dtype=x.dtype)

    def head(self, p, hd: int, device) -> torch.Tensor:
        return self.heads[p.v.target].to(device=device, dtype=torch.float64)

"""LearnedAffine: FlatQuant-style learned input transforms, trained block by block (exact).

Every group of linears reading one tensor (q/k/v, gate/up, o, down: `input_regions`) gets an
invertible transform x → x·M, W → W·T with M·Tᵀ = I (passes/_affine_transform.py: Kronecker
factors A⊗B, a per-channel scale, a learnable activation clip). Per stage (transformer block),
on the stage's cached inputs — the earlier stages already quantized, as the model will run —
the transforms of all its groups are trained together with Adam to make the block's
fake-quantized outputs (weights and activations under the pipeline's scheme, straight-through
rounding) match its float outputs on the same inputs: FlatQuant's layer-wise objective, so a
block costs a few forward/backward passes of one block, never of the model. The trained
transforms are folded in float64 (passes/_channel_transform.py: W' = W·T, a `channel_transform`
node x·M in the graph), so the pass is exact and the pipeline verifies it. The learned clip
ratio of each group is left in its linears' node meta ("act_clip"), where ObserveActivations
takes it unless it is given a ratio or a search. It composes with
Rotate (after it: the transforms start from the rotated basis, on top of QuaRot's Hadamards).

Guard: a stage keeps its transforms only if their fake-quantized loss on all its calibration
batches is below the identity's by `min_gain` (relative); otherwise nothing is inserted there
and the report says so. Deterministic from `seed` (batch order, every init)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from qpass.errors import PipelineError
from qpass.hadamard.fast import dense_sylvester
from qpass.ir.regions import input_regions, is_float_linear
from qpass.ir.structure import role
from qpass.pipeline.pass_base import Pass, PassContext, PassResult

from ._affine_transform import AffineTransform
from ._channel_transform import fold_and_insert
from ._rotation_model import ste_quantize


def _quant_act(x, spec, clip):
    return x if spec is None else ste_quantize(x, spec, clip=clip)


def _train_forward(mod, tr: AffineTransform, wspec, aspec):
    """The linear as it trains: quantize(x·M) · quantize(W·T)ᵀ + b."""
    def forward(x):
        W = tr.weight(mod.weight)
        if wspec is not None:
            W = ste_quantize(W, wspec)
        return F.linear(_quant_act(tr.act(x), aspec, tr.clip), W, mod.bias)
    return forward


@dataclass(eq=False, repr=False)
class LearnedAffine(Pass):
    """Learned invertible input transforms per linear group (see the module doc): `epochs`
    passes over the stage's calibration batches at Adam learning rate `lr` (the clip ratios at
    `clip_lr`), cosine-decayed; `min_gain` the relative loss gain a stage's transforms must
    show over the identity to be kept; `fake_quant_weights=False` trains under activation
    quantization only (the weights left to GPTQ afterwards); `learn_clip=False` trains and
    leaves the activation range unclipped; `target` what the block's outputs must match:
    "block", its own float outputs on the same (quantized) inputs, or "model", the float
    model's outputs of this block (its inputs the float model's own: OmniQuant's and GPTAQ's
    objective, so a block also learns to undo what the quantized blocks before it left);
    `mask_weight` the weight of a [MASK] position's token error against a visible one's on
    a masked-diffusion model's calibration batches (1: all tokens alike)."""
    VERSION = 1
    # no fact: the guard may keep every block as it was, and nothing later needs one
    exact = True
    needs_calibration = True
    changes_weights = True

    epochs: int = 8
    lr: float = 5e-3
    clip_lr: float = 5e-2
    min_gain: float = 0.01
    seed: int = 0
    loss: str = "token"
    learn_clip: bool = True
    fake_quant_weights: bool = True
    target: str = "block"
    mask_weight: float = 1.0

    @property
    def reference_inputs(self) -> str | None:
        """target="model" compares with the float model's own run (the executor's cache of
        the earlier stages as they were before this pass)."""
        return "before" if self.target == "model" else None

    def __post_init__(self):
        if not isinstance(self.epochs, int) or isinstance(self.epochs, bool) or self.epochs < 0:
            raise PipelineError(f"LearnedAffine: epochs must be a non-negative integer, got "
                                f"{self.epochs!r}")
        if not self.mask_weight > 0:
            raise PipelineError(f"LearnedAffine: mask_weight must be > 0, got "
                                f"{self.mask_weight!r}")
        if self.target not in ("block", "model"):
            raise PipelineError(f"LearnedAffine: target must be 'block' or 'model', got "
                                f"{self.target!r}")
        if self.loss not in ("token", "tensor"):
            raise PipelineError(f"LearnedAffine: loss must be 'token' or 'tensor', got "
                                f"{self.loss!r}")
        if not (self.lr > 0 and self.clip_lr >= 0 and 0 <= self.min_gain < 1):
            raise PipelineError(f"LearnedAffine: lr must be > 0, clip_lr ≥ 0 and min_gain in "
                                f"[0, 1); got lr={self.lr!r}, clip_lr={self.clip_lr!r}, "
                                f"min_gain={self.min_gain!r}")

    def start(self, g, ctx: PassContext, saved=None) -> dict:
        """Number the groups once on the whole graph (names fixed whichever stage makes them)."""
        if ctx.scheme is None:
            raise PipelineError("LearnedAffine trains under the pipeline's quantizers; give the "
                                "pipeline a scheme, e.g. Pipeline([...], scheme='w4a4')")
        return {r.consumers[0]: k for k, r in enumerate(input_regions(g))}

    def _groups(self, g, ctx: PassContext) -> list:
        """(index, region, [(wspec, aspec) per linear]) for this stage's groups whose inputs
        the scheme quantizes."""
        from qpass.specs import Scheme
        scheme = Scheme.parse(ctx.scheme)
        nodes = set(ctx.stage.nodes)
        out = []
        for r in input_regions(g):
            if r.consumers[0] not in nodes or not all(is_float_linear(g, n) for n in r.consumers):
                continue
            specs = [scheme.specs_for(n.target, role(n), g.module(n).in_features)[:2]
                     for n in r.consumers]
            if any(a is not None for _, a in specs):
                out.append((ctx.run[r.consumers[0]], r, specs))
        return out

    def run(self, g, ctx: PassContext) -> PassResult:
        res = PassResult()
        groups = self._groups(g, ctx)
        if not groups or self.epochs == 0:
            return res
        data = list(zip(ctx.inputs, ctx.runner.batches()))
        dev = g.module(groups[0][1].consumers[0]).weight.device
        gen = torch.Generator().manual_seed(self.seed * 7919 + ctx.stage.index)
        clip0 = 0.98 if self.learn_clip else None
        trs = {k: AffineTransform(g.module(r.consumers[0]).in_features, clip0).to(dev)
               for k, r, _ in groups}
        refs = ctx.reference if self.target == "model" else ctx.inputs
        with torch.no_grad():
            targets = [self._outputs(ctx, v, b) for v, (_, b) in zip(refs, data)]
        mods = [g.module(n) for _, r, _ in groups for n in r.consumers]
        try:
            for k, r, specs in groups:
                for n, (w, a) in zip(r.consumers, specs):
                    w = w if self.fake_quant_weights else None
                    g.module(n).forward = _train_forward(g.module(n), trs[k], w, a)
            before = self._loss_all(ctx, data, targets)
            self._train(ctx, data, targets, trs, gen)
            after = self._loss_all(ctx, data, targets)
        finally:
            for m in mods:
                m.__dict__.pop("forward", None)
        name = ctx.stage.name
        res.metrics["stage_loss"] = {name: {"identity": before, "learned": after}}
        if not after < before * (1 - self.min_gain):
            res.notes.append(f"LearnedAffine: {name}: the learned transforms' loss {after:.4g} is "
                             f"not {self.min_gain:.0%} below the identity's {before:.4g}; "
                             f"kept the block as it was")
            return res
        for k, r, _ in groups:
            M, T = trs[k].matrices()
            clip = round(float(trs[k].clip), 3)
            info = {"clip": clip, "condition": trs[k].condition()}
            res.nodes_changed += fold_and_insert(g, r, M, T, f"affine_transform_{k}",
                                                 f"affine_{r.consumers[0].name}", "LearnedAffine",
                                                 info)
            if self.learn_clip:            # ObserveActivations uses it unless told a ratio
                for n in r.consumers:
                    n.meta["qpass"]["act_clip"] = clip
        return res

    def _outputs(self, ctx: PassContext, values, batch) -> list[torch.Tensor]:
        env = ctx.runner.execute(ctx.stage, values, batch)
        return [env[n] for n in ctx.stage.live_out
                if isinstance(env.get(n), torch.Tensor) and env[n].is_floating_point()]

    def _loss(self, ctx, values, batch, target) -> torch.Tensor:
        """Σ over the stage's float outputs of the squared error relative to the float
        output's power: per token ("token": a token with a massive activation does not
        outweigh the others) or over the whole tensor ("tensor")."""
        out = self._outputs(ctx, values, batch)
        if self.loss == "tensor":
            return sum(((o - t) ** 2).mean() / (t ** 2).mean().clamp(min=1e-12)
                       for o, t in zip(out, target))
        total = 0
        for o, t in zip(out, target):
            err = ((o - t) ** 2).sum(-1) / (t ** 2).sum(-1).clamp(min=1e-12)
            w = self._token_weights(ctx, batch, err.shape)
            total = total + (err.mean() if w is None else (w * err).sum() / w.sum())
        return total

    def _token_weights(self, ctx, batch, shape):
        """mask_weight ≠ 1 on a masked-diffusion calibration batch: a [MASK] position's
        error counts mask_weight times a visible one's (the denoiser's predictions are read
        at the masked positions); None (plain mean) otherwise."""
        mask_id = getattr(ctx.calib, "mask_id", None)
        ids = batch[0] if batch else None
        if self.mask_weight == 1.0 or mask_id is None or not isinstance(ids, torch.Tensor) \
                or tuple(ids.shape) != tuple(shape):
            return None
        return 1 + (self.mask_weight - 1) * (ids == mask_id).to(torch.float32)

    def _loss_all(self, ctx, data, targets) -> float:
        with torch.no_grad():
            return sum(float(self._loss(ctx, v, b, t)) for (v, b), t in zip(data, targets)) \
                / len(data)

    def _train(self, ctx, data, targets, trs, gen) -> None:
        mats = [p for tr in trs.values() for p in (tr.A, tr.B, tr.log_s)]
        clips = [tr.clip_logit for tr in trs.values() if tr.clip_logit is not None]
        opt = torch.optim.Adam([{"params": mats, "lr": self.lr},
                                {"params": clips, "lr": self.clip_lr}])
        total = self.epochs * len(data)
        base = [grp["lr"] for grp in opt.param_groups]
        task = ctx.task(f"LearnedAffine: {ctx.stage.name}", total=total)
        step = 0
        for _ in range(self.epochs):
            for i in torch.randperm(len(data), generator=gen).tolist():
                for grp, lr in zip(opt.param_groups, base):     # cosine decay to 0
                    grp["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
                opt.zero_grad(set_to_none=True)
                with torch.enable_grad(), dense_sylvester():     # faster, same transform
                    loss = self._loss(ctx, *data[i], targets[i])
                    loss.backward()
                opt.step()
                step += 1
                ctx.advance(task)

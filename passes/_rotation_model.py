"""The model as LearnedRotate trains it: its weights as functions of R1 (residual rotation)
and R2 (per v→o pair), every quantized linear's weight and input fake-quantized with
straight-through rounding, and the model's own loss.

The rotated weights are exactly what Rotate's fusing writes (passes/rotate.py's conventions),
written as differentiable expressions of R1/R2 on the graph as captured (norms not fused yet:
a reader's weight is W·diag(γ)·R1 and its norm's γ reads as 1, FuseNorms' fold):
  embedding E·R1; reader (W·diag γ)·R1; writer R1ᵀ·W, b·R1; v per KV head R2ᵀ·W_h, b_h·R2;
  o columns W_o·blockdiag(R2); an online Hadamard H before down/o: input x·Hᵀ, weight W·Hᵀ.
The forward is torch.func.functional_call on the graph module with these weights and forward
pre-hooks on the quantized linears (their inputs fake-quantized per token); nothing of the
graph is changed. Loss: next-token cross-entropy for causal models; for dLLMs the
masked-diffusion ELBO of the calibration states (Σ over masked tokens of CE / t, per token;
Dream's shifted logits predict position i from i−1)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from qpass import hadamard
from qpass.errors import PipelineError
from qpass.formats.codes import SCALE_FLOOR, fake_quantize
from qpass.ir.regions import norm_regions
from qpass.ir.structure import role


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def ste_quantize(x: torch.Tensor, spec, clip=None) -> torch.Tensor:
    """Fake quantization of x under `spec` with straight-through rounding. For a symmetric
    integer spec (channel / token / group / tensor) the scale absmax·clip/divisor is part of
    the graph, so the gradient sees how a rotation moves the absmax (as SpinQuant's
    quantizers do); `clip` (a number or a learnable tensor, LearnedAffine's) multiplies the
    spec's own clip ratio there. Any other spec rounds through qpass.formats with an identity
    gradient (and no extra clip)."""
    if spec.is_float or not spec.symmetric or spec.grid == "signed" or spec.observer != "minmax":
        return x + (fake_quantize(x.detach(), spec) - x).detach()
    shape = x.shape
    if spec.granularity == "group":
        xs = x.reshape(*shape[:-1], shape[-1] // spec.group_size, spec.group_size)
    elif spec.granularity == "tensor":
        xs = x.reshape(1, -1)
    else:                                           # channel rows of W, token rows of x
        xs = x
    amax = xs.abs().amax(dim=-1, keepdim=True) * spec.clip_ratio
    if clip is not None:
        amax = amax * clip
    s = (amax / spec.sym_divisor).clamp(min=SCALE_FLOOR)
    q = torch.clamp(_round_ste(xs / s), spec.qmin, spec.qmax) * s
    return q.reshape(shape)


class RotatedModel:
    """Rotated, fake-quantized forward and loss of the captured graph `g` under `scheme`,
    for the rotation plan `plan` of `rot` (a Rotate)."""

    def __init__(self, rot, g, plan, scheme, calib, weights: bool = True):
        self.g, self.plan, self.calib = g, plan, calib
        self.causal = bool(getattr(g.config, "causal", False))
        self.shift = bool(getattr(g.config, "logit_shift", False))
        self.mask_id = getattr(calib, "mask_id", None)
        mods = dict(g.gm.named_modules())
        if any(p.device.type == "meta" for p in g.gm.parameters()):
            raise PipelineError(f"{rot.name} trains on the whole model's weights, which a "
                                f"streamed run does not hold; run it in memory (no --stream)")
        self.device = next(g.gm.parameters()).device
        self.base = {n: p.detach().float() for n, p in g.gm.named_parameters(remove_duplicate=False)}
        gamma = {}
        self.norm_names = []
        regions = {r.producer: r for r in norm_regions(g)}
        for u in plan.norms:
            w = getattr(mods[u.target], "weight", None)
            if w is not None:
                self.norm_names.append(f"{u.target}.weight")
                for c in regions[u].consumers:
                    gamma[c.target] = w.detach().float()
        self.gamma = gamma
        self.readers = [n.target for n in plan.readers]
        self.writers = [n.target for n in plan.writers]
        self.embed = plan.embed.target
        self.pairs = []                               # (v target, o target, head dim)
        for p in plan.vo:
            hd, _ = rot.head_dim(g, p)
            if hd is not None:
                self.pairs.append((p.v.target, p.o.target, hd))
        self.online = {lin.target for _, lin in plan.online
                       if hadamard.supported(mods[lin.target].in_features)}
        self.wspec, self.aspec = {}, {}
        for n in g.linears(include_head=True):
            w, a, _ = scheme.specs_for(n.target, role(n), mods[n.target].in_features)
            if w is not None and weights:      # weights=False: activations only (W16A4)
                self.wspec[n.target] = w
            if a is not None:
                self.aspec[n.target] = a
        self.modules = mods
        if not self.causal and getattr(calib, "masking", None) != "diffusion":
            raise PipelineError(f"{rot.name} trains a dLLM on the masked-diffusion loss of its "
                                f"calibration states; build the calibration with "
                                f"masking='diffusion' (CalibrationSet.from_texts / from_ids)")

    def head_dims(self) -> list[int]:
        return [hd for _, _, hd in self.pairs]

    # ---- weights as functions of R1, R2 -----------------------------------------------
    def weights(self, R1: torch.Tensor, R2: list) -> dict:
        """{parameter name: tensor} for every parameter of the graph (the model's own, detached:
        no gradient flows into them)."""
        w = dict(self.base)

        def W(name):
            return w[f"{name}.weight"]
        for name in self.readers:        # a high-precision reader (the head) turns its input
            g = self.gamma.get(name)     # back by R1ᵀ instead (_hooks): d² per token, not V·d²
            base = self.base[f"{name}.weight"]
            base = base * g if g is not None else base
            w[f"{name}.weight"] = base @ R1 if name in self.wspec else base
        for name in self.norm_names:
            w[name] = torch.ones_like(self.base[name])
        for name in self.writers:
            w[f"{name}.weight"] = R1.T @ W(name)
            if f"{name}.bias" in self.base:
                w[f"{name}.bias"] = self.base[f"{name}.bias"] @ R1
        for (v, o, hd), r2 in zip(self.pairs, R2):
            Wv = W(v)
            w[f"{v}.weight"] = torch.einsum("ji,kjd->kid", r2, Wv.reshape(-1, hd, Wv.shape[1])
                                            ).reshape(Wv.shape)
            if f"{v}.bias" in self.base:
                w[f"{v}.bias"] = (self.base[f"{v}.bias"].reshape(-1, hd) @ r2).reshape(-1)
            Wo = W(o)
            w[f"{o}.weight"] = (Wo.reshape(Wo.shape[0], -1, hd) @ r2).reshape(Wo.shape)
        for name, spec in self.wspec.items():
            x = W(name)
            if name in self.online:               # the stored weight is W·Hᵀ; back by ·H
                x = hadamard.transform(ste_quantize(hadamard.transform(x), spec), inverse=True)
            else:
                x = ste_quantize(x, spec)
            w[f"{name}.weight"] = x
        return w

    def _hooks(self, R1) -> list:
        """Input fake quantization of the quantized linears; the embedding's output times R1
        and a high-precision reader's input times R1ᵀ (their weights stay unrotated: the
        same products as E·R1 and W·R1, without rotating V×d matrices every step)."""
        handles = [self.modules[self.embed].register_forward_hook(lambda m, a, out: out @ R1)]
        for name in set(self.aspec) | {r for r in self.readers if r not in self.wspec}:
            spec = self.aspec.get(name)
            online = name in self.online
            back = name in self.readers and name not in self.wspec

            def pre(mod, args, spec=spec, online=online, back=back):
                x = args[0]
                if spec is not None and online:      # the linear reads x·Hᵀ, quantized
                    x = hadamard.transform(ste_quantize(hadamard.transform(x), spec), inverse=True)
                elif spec is not None:
                    x = ste_quantize(x, spec)
                if back:
                    x = x @ R1.T
                return (x,) + tuple(args[1:])
            handles.append(self.modules[name].register_forward_pre_hook(pre))
        return handles

    def logits(self, R1, R2, ids: torch.Tensor) -> torch.Tensor:
        handles = self._hooks(R1)
        try:
            return torch.func.functional_call(self.g.gm, self.weights(R1, R2), (ids,),
                                              tie_weights=False, strict=False)
        finally:
            for h in handles:
                h.remove()

    # ---- loss ---------------------------------------------------------------------------
    def rows(self) -> int:
        return int(self.calib.input_ids.shape[0])

    def loss(self, R1, R2, rows: torch.Tensor) -> torch.Tensor:
        """The model's own objective on calibration rows `rows` (mean per scored token)."""
        ids = self.calib.input_ids[rows].to(self.device)
        clean = self.calib.clean_ids[rows].to(self.device)
        logits = self.logits(R1, R2, clean if self.causal else ids).float()
        V = logits.shape[-1]
        if self.causal:
            return F.cross_entropy(logits[:, :-1].reshape(-1, V), clean[:, 1:].reshape(-1))
        masked = ids == self.mask_id
        if self.shift:                           # position i−1 predicts token i
            logits, masked, clean = logits[:, :-1], masked[:, 1:], clean[:, 1:]
        t = self.calib.mask_ratios[rows].to(self.device).float().clamp(min=1e-3)
        ce = F.cross_entropy(logits.reshape(-1, V), clean.reshape(-1), reduction="none")
        ce = ce.view(clean.shape) * masked / t[:, None]
        return ce.sum() / clean.numel()

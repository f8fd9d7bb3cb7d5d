"""Running a pipeline on a model captured as it is (DESIGN §2, §3, §7): the model's own
transformers code computes every state, qpass rounds its weights stage by stage.

The stages are qpass.ir.model_structure's (layers in call order, tied layers together).
For each stage, in order, the calibration states run through the model's own forward — with
the earlier stages already quantized, so a stage is calibrated on what the quantized model
feeds it ("sequential"; each stage once, all its linears from the same forward, as
llm-compressor's non-true-sequential flow) — while hooks gather, per linear, H ∝ Σ x xᵀ of its
inputs over every call (a weight tied between DiffusionGemma's encoder and decoder gets the
prompt's tokens and the canvas's) and, per expert of a fused expert store, H of exactly the
tokens routed to that expert (expert_inputs.py). The weight-rounding pass then rounds each
matrix through its `round_weight` (RTN, GPTQ): linears become QuantLinear modules (packed
codes, at every path that shared the weight), expert slices are replaced by their dequantized
codes (the codes are kept for saving and export).

The cost is one forward of the whole model per stage on the calibration states: quadratic in
depth, paid for exactness (the model's own code, its cache and self-conditioning, decides
every input); docs/ARCHITECTURE.md has the numbers. Passes that rewrite a graph (FuseNorms,
Rotate, SmoothQuant, Lower, …) do not run on these models yet: one PipelineError names them."""
from __future__ import annotations

import time

import torch
import torch.nn as nn

from qpass.display import progress as progress_lines
from qpass.errors import CalibrationError, PipelineError
from qpass.ir.model_structure import Item, ModelStructure, discover
from qpass.ir.qlinear import QuantLinear
from qpass.pipeline.expert_inputs import ExpertInputs, expert_params
from qpass.specs import Scheme


def check_passes(pipeline, what: str) -> object:
    """The pipeline's one weight-rounding pass (PipelineError otherwise)."""
    rounding = [p for p in pipeline.passes if hasattr(p, "round_weight")]
    other = [p.name for p in pipeline.passes if not hasattr(p, "round_weight")]
    if other or len(rounding) != 1:
        raise PipelineError(
            f"{what} is captured as it is (its own transformers code), where qpass runs "
            f"weight-rounding pipelines: one RTN or GPTQ pass (presets w4a16-rtn, w4a16-gptq, "
            f"w3a16-gptq, w8a8-rtn, q4_0-gptq, …); this pipeline has "
            f"{', '.join(other) or 'no rounding pass'}, which rewrite a graph qpass does not "
            f"run for this family yet")
    return rounding[0]


class _Hessians:
    """H = Σ x xᵀ (float64) and the token count per key."""

    def __init__(self):
        self.H: dict = {}
        self.n: dict = {}

    def add(self, key, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).double()
        if not torch.isfinite(x).all():
            raise CalibrationError(f"calibration inputs of {key} hold NaN or Inf; check the "
                                   f"model in float32 and the calibration data")
        h = self.H.get(key)
        self.H[key] = x.T @ x if h is None else h + x.T @ x
        self.n[key] = self.n.get(key, 0) + x.shape[0]


class AsIsRun:
    def __init__(self, pipeline, model: nn.Module, states: list[dict], progress=None,
                 streamer=None):
        self.pipeline, self.model, self.states = pipeline, model, states
        self.progress, self.streamer = progress, streamer
        self.rounding = check_passes(pipeline, type(model).__name__)
        self.scheme = Scheme.parse(pipeline.scheme_given or self.rounding.scheme)

    def run(self):
        from qpass.runtime.as_is_model import AsIsModel
        model = self.model
        if not self.states:
            raise CalibrationError("no calibration states: give calibration text or ids")
        structure = discover(model, self.states[0])
        scheme = self.fitted = self._fitted(structure)
        specs = {it.path: self._specs(it, scheme) for it in structure.items}
        needs_h = bool(getattr(self.rounding, "needs_calibration", False))
        t0 = time.perf_counter()
        with torch.no_grad():
            fp_logits = _logits(model, self.states[0])
        rows = []
        codes: dict[str, dict] = {}
        with progress_lines.phase("quantize", total=len(structure.stages), unit="stages",
                                  enabled=self.progress) as task:
            for stage in structure.stages:
                items = [it for it in structure.of_stage(stage.index)
                         if specs[it.path][0] is not None]
                task.describe(f"{stage.name}: {self.rounding.name}")
                hess = self._collect(model, items, stage, structure) if needs_h and items \
                    else _Hessians()
                with self._weights(stage.layers):
                    for it in items:
                        rows.append(self._round(model, it, specs[it.path], hess, codes))
                if self.streamer is not None:
                    self.streamer.pin_stage(
                        stage.layers,
                        {f"{a}.{n}": qws for it in items if it.path in codes
                         for a in it.aliases for n, qws in codes[it.path].items()},
                        [a for it in items if it.kind == "linear" for a in it.aliases])
                task.advance()
        with torch.no_grad():
            q_logits = _logits(model, self.states[0])   # streamed: experts from their codes
        if self.streamer is not None:
            self.streamer.finish()
        rel = float((q_logits - fp_logits).norm() / fp_logits.norm().clamp_min(1e-30))
        report = {"pipeline": repr(self.pipeline), "scheme": scheme.name,
                  "seconds": round(time.perf_counter() - t0, 3), "items": rows,
                  "kept": [{"path": it.path, "kind": it.kind, "role": it.role,
                            "reason": specs[it.path][2] or it.reason}
                           for it in structure.items if specs[it.path][0] is None],
                  "logits_rel_error": rel, "calibration_states": len(self.states),
                  "stages": [s.name for s in structure.stages]}
        from qpass.runtime.as_is_model import structure_rows
        return AsIsModel(model, structure_rows(structure), {k: v[:2] for k, v in specs.items()},
                         codes, report)

    def _weights(self, layers: list[str]):
        import contextlib
        return self.streamer.loaded(layers) if self.streamer is not None else \
            contextlib.nullcontext()

    # ---- specs ----------------------------------------------------------------------------
    def _fitted(self, structure: ModelStructure) -> Scheme:
        ks = []
        for it in structure.items:
            if it.role in ("linear", "experts") and it.reason is None:
                m = it.module(self.model)
                ks += [m.in_features] if it.kind == "linear" else \
                    [p.shape[2] for _, p in expert_params(m)]
        return self.scheme.fit_to(ks) if self.scheme.weight is not None and \
            self.scheme.weight.granularity == "group" else self.scheme

    def _specs(self, it: Item, scheme: Scheme):
        """(weight spec, act spec, reason kept) of one item."""
        if it.kind == "weight" or (it.reason is not None and it.role in ("linear", "experts")):
            return None, None, it.reason    # never called on text, or not a linear module
        m = it.module(self.model)
        k = m.in_features if it.kind == "linear" else \
            min(p.shape[2] for _, p in expert_params(m))
        role = "linear" if it.role == "experts" else it.role
        w, a, reason = scheme.specs_for(it.path, role, k)
        if it.kind == "experts":
            a = None                # the experts' own code runs them: weights only
        return w, a, reason or it.reason

    # ---- statistics -----------------------------------------------------------------------
    def _collect(self, model, items: list[Item], stage, structure) -> _Hessians:
        hess, handles = _Hessians(), []
        stop = _StopAfter(model, stage, items, structure)
        handles += stop.hooks()
        for it in items:
            for alias in it.aliases:
                mod = model.get_submodule(alias)
                if it.kind == "linear":
                    handles.append(mod.register_forward_pre_hook(
                        lambda m, args, key=it.path: hess.add(key, args[0])))
                else:
                    watch = ExpertInputs(mod, lambda name, e, x, key=it.path:
                                         hess.add((key, name, e), x))
                    handles += watch.hooks()
        try:
            with torch.no_grad():
                for st in self.states:
                    stop.reset()
                    try:
                        model(**st)
                    except _StageDone:
                        pass
        finally:
            for h in handles:
                h.remove()
        return hess

    # ---- rounding -------------------------------------------------------------------------
    def _round(self, model, it: Item, spec, hess: _Hessians, codes: dict) -> dict:
        wspec, aspec, _ = spec
        m = it.module(model)
        if it.kind == "linear":
            W = m.weight.detach()
            H, n = hess.H.get(it.path), hess.n.get(it.path, 0)
            qw = self._one(W, H, wspec, n)
            q = QuantLinear.from_linear(m, wspec, aspec, qweight=qw)
            for alias in it.aliases:
                _set_submodule(model, alias, q)
            err = _rel_error(W, q.dequantized_weight(torch.float64), H)
            return {"path": it.path, "kind": "linear", "role": it.role, "spec": str(wspec),
                    "act": str(aspec) if aspec else None, "tokens": n, "aliases": len(it.aliases),
                    "rel_error": err}
        errs, tokens, empty = [], 0, 0
        codes[it.path] = {}
        param_specs = {}
        for name, P in expert_params(m):
            pspec = self.fitted.specs_for(it.path, "linear", P.shape[2])[0] or wspec
            param_specs[name] = str(pspec)
            per = []
            for e in range(P.shape[0]):
                key = (it.path, name, e)
                H, n = hess.H.get(key), hess.n.get(key, 0)
                empty += n == 0
                tokens += n
                qw = self._one(P[e].detach(), H, pspec, n)
                deq = qw.dequantize(P.dtype)
                errs.append(_rel_error(P[e].detach(), deq.double(), H))
                P.data[e] = deq                     # every path sharing P sees it
                per.append(qw)
            codes[it.path][name] = per
        finite = [e for e in errs if e == e]
        return {"path": it.path, "kind": "experts", "role": it.role, "spec": str(wspec),
                "param_specs": param_specs, "act": None, "tokens": tokens, "aliases": len(it.aliases),
                "experts_without_tokens": empty,
                "rel_error": sum(finite) / len(finite) if finite else float("nan")}

    def _one(self, W, H, spec, n: int):
        if H is None or n == 0:             # no calibration token reached it: round to nearest
            from qpass.formats import QuantizedWeight
            return QuantizedWeight.from_float(W.float(), spec)
        return self.rounding.round_weight(W, H, spec, n)


class _StageDone(Exception):
    """Raised by _StopAfter: the rest of this forward cannot change the stage's statistics."""


class _StopAfter:
    """Ends a statistics forward once every module of the stage (its layers, and its items
    outside layers) has been called as often as one forward calls it (counted by
    model_structure's forward): later layers cannot feed it, so their compute is skipped —
    the stage's inputs, and so its statistics, are the same as a full forward's."""

    def __init__(self, model, stage, items, structure):
        self.model = model
        paths = list(stage.layers) + [a for it in items for a in it.aliases
                                      if not any(a.startswith(lp + ".") for lp in stage.layers)]
        self.want = {p: structure.calls.get(p, 0) for p in paths}
        self.active = all(n > 0 for n in self.want.values()) and bool(self.want)
        self.seen: dict[str, int] = {}

    def reset(self) -> None:
        self.seen = {}

    def hooks(self) -> list:
        if not self.active:
            return []
        return [self.model.get_submodule(p).register_forward_hook(self._hook(p))
                for p in self.want]

    def _hook(self, path):
        def hook(mod, args, out):
            self.seen[path] = self.seen.get(path, 0) + 1
            if all(self.seen.get(p, 0) >= n for p, n in self.want.items()):
                raise _StageDone
        return hook


def _logits(model, state: dict) -> torch.Tensor:
    out = model(**state)
    return (out.logits if hasattr(out, "logits") else out).float()


def _rel_error(W: torch.Tensor, Wq: torch.Tensor, H) -> float:
    """‖(W − Wq) X‖² / ‖W X‖² from H ∝ X Xᵀ (NaN without calibration inputs)."""
    if H is None:
        return float("nan")
    D = W.double() - Wq.double()
    num = torch.einsum("nk,kl,nl->", D, H, D)
    den = torch.einsum("nk,kl,nl->", W.double(), H, W.double())
    return float(num / den.clamp_min(1e-300))


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, name, module)

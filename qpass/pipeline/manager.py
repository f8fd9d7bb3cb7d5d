"""The pass manager (DESIGN §3): `Pipeline(passes).run(model) -> CompiledDenoiser`.

The order is checked when the pipeline is built (before any compute). A run captures a copy
of the model (the caller's model is never modified), runs the passes under a rich progress
display, times each, verifies every `exact` pass on a small probe batch, and ends with a
report whose coverage table must have no uncovered linear."""
from __future__ import annotations

import copy
import math
import os
import time
from typing import Iterable, Sequence

import torch

from qpass.errors import CalibrationError, CheckpointError, PipelineError
from qpass.pipeline.facts import ensure_provided
from qpass.pipeline.pass_base import PASSES, Fact, Pass, PassContext
from qpass.ir.qlinear import is_quantized_module
from qpass.pipeline.coverage import check_coverage, coverage
from qpass.pipeline.order import auto_order, check_order
from qpass.runtime.report import LinearRecord, PassRecord, Report
from qpass.pipeline.verify import default_probe, record, verify_exact
from qpass.specs import Scheme

QUANTIZING_FACTS = (Fact.WEIGHTS_QUANTIZED, Fact.ACTS_QUANTIZED)


def sqnr_db(ref: torch.Tensor, approx: torch.Tensor) -> float:
    """10·log10(Σref² / Σ(ref−approx)²) in float64; inf when identical."""
    r, a = ref.double(), approx.double()
    noise = (r - a).pow(2).sum().item()
    signal = r.pow(2).sum().item()
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(max(signal, 1e-300) / noise)


class Pipeline:
    """An ordered, checked list of passes.

    scheme: the quantization scheme of the whole pipeline (a name such as "w4a4", a spec
    string or a Scheme); every pass with a scheme parameter left at None reads it. verify:
    check exact passes on the probe batch (default True: it costs two forward passes of a
    2×32 batch per exact pass). allow_uncovered: accept linears that are neither quantized
    nor kept by a rule. initial_facts: facts that already hold for the input."""

    def __init__(self, passes: Sequence[Pass], scheme=None, verify: bool | None = None,
                 allow_uncovered: bool = False, initial_facts: Iterable[Fact] = ()):
        self.scheme_given = None if scheme is None else Scheme.parse(scheme)
        self.passes = [p.with_scheme(self.scheme_given) if isinstance(p, Pass) else p
                       for p in passes]
        self.verify = True if verify is None else bool(verify)
        self.allow_uncovered = allow_uncovered
        self.initial_facts = frozenset(Fact(f) for f in initial_facts)
        check_order(self.passes, self.initial_facts)

    @classmethod
    def from_manifest(cls, directory, **kw) -> "Pipeline":
        """The pipeline a compiled checkpoint was made with, rebuilt from its manifest (every
        pass from its versioned config); run it on the same model and calibration data to
        reproduce the checkpoint bit for bit."""
        from qpass.runtime.checkpoint import GRID_VERSION, read_manifest
        manifest = read_manifest(directory)
        entries = manifest.get("pipeline")
        if not isinstance(entries, list):
            raise CheckpointError(f"{directory}: the manifest records no pipeline")
        passes = []
        for e in entries:
            name = e.get("name") if isinstance(e, dict) else None
            if name not in PASSES:
                raise PipelineError(f"{directory}: pass {name!r} is not known to this qpass; "
                                    f"import the module that defines it first")
            config = e.get("config") or {}
            if "version" not in config:
                raise PipelineError(f"{directory}: pass {name} was recorded before pass configs "
                                    f"were versioned; this checkpoint loads and runs, but its "
                                    f"pipeline cannot be rebuilt exactly")
            passes.append(PASSES[name].from_config(config))
        if manifest.get("version", 0) < GRID_VERSION:
            raise PipelineError(f"{directory} was saved before the full-range symmetric grid "
                                f"became the default (checkpoint version "
                                f"{manifest.get('version')}): it loads and runs as saved, but "
                                f"its recorded specs meant the restricted grid; rebuild the "
                                f"pipeline by hand with ':restricted' specs to reproduce it")
        scheme = manifest.get("pipeline_scheme")
        return cls(passes, scheme=None if scheme is None else Scheme.from_dict(scheme), **kw)

    def strict_groups(self) -> "Pipeline":
        """Make every scheme of this pipeline refuse (SpecError) a group size that does not
        divide a layer's K, instead of fitting it (Scheme.fit_weight)."""
        return self._schemes_with(strict_groups=True)

    def group_fit(self, mode: str) -> "Pipeline":
        """How every scheme of this pipeline fits a group size that does not divide some K:
        "model" (one group size for the whole model, the default) or "layer" (Scheme.fit_to)."""
        return self._schemes_with(group_fit=mode)

    def _schemes_with(self, **changes) -> "Pipeline":
        from dataclasses import replace
        for p in self.passes:
            for attr in ("scheme", "spec_or_scheme"):
                if isinstance(getattr(p, attr, None), Scheme):
                    setattr(p, attr, replace(getattr(p, attr), **changes))
        if self.scheme_given is not None:
            self.scheme_given = replace(self.scheme_given, **changes)
        return self

    @classmethod
    def auto_order(cls, passes: Sequence[Pass], **kw) -> "Pipeline":
        """A pipeline of `passes` sorted by their facts (stable w.r.t. the given order)."""
        scheme = kw.get("scheme")
        bound = [p.with_scheme(Scheme.parse(scheme)) if scheme is not None and isinstance(p, Pass)
                 else p for p in passes]
        return cls(auto_order(bound, kw.get("initial_facts", ())), **kw)

    def __repr__(self) -> str:
        return f"Pipeline([{', '.join(map(repr, self.passes))}])"

    def __iter__(self):
        return iter(self.passes)

    def __len__(self) -> int:
        return len(self.passes)

    @property
    def quantizes(self) -> bool:
        return any(p.provides & set(QUANTIZING_FACTS) for p in self.passes)

    def scheme(self):
        """The pipeline's scheme, else that of the last quantizing pass that has one (for the
        coverage table)."""
        if self.scheme_given is not None:
            return self.scheme_given
        for p in reversed(self.passes):
            if p.provides & set(QUANTIZING_FACTS) and getattr(p, "scheme", None) is not None:
                return p.scheme
        return None

    # ------------------------------------------------------------------------------------
    def prepare(self, model_or_qgraph, probe=None, dtype=None, seed: int = 0):
        """(QGraph on a private copy of the model, probe batch or None on the meta device)."""
        from qpass.ir import QGraph, capture
        if isinstance(model_or_qgraph, QGraph):
            g = model_or_qgraph
            if dtype is not None:
                g.gm.to(dtype)
        else:
            from qpass.models.from_hf import from_hf, is_transformers_model
            model = model_or_qgraph
            if is_transformers_model(model):
                model = from_hf(model)     # shares weights; the deep copy below owns its own
            p = next(iter(model.parameters()), None)
            on_meta = p is not None and p.device.type == "meta"
            model = model if on_meta else copy.deepcopy(model)
            if dtype is not None:
                model = model.to(dtype)
            device = p.device if p is not None else torch.device("cpu")
            if probe is None:
                vocab = getattr(getattr(model, "config", None), "vocab_size", 100)
                probe = default_probe(vocab, device, seed)
            g = capture(model, probe)
        on_meta = any(t.device.type == "meta" for t in g.gm.parameters())
        if probe is not None and not isinstance(probe, tuple):
            probe = (probe,)
        if probe is None and not on_meta:
            vocab = getattr(g.config, "vocab_size", 100)
            dev = next(iter(g.gm.parameters())).device
            probe = default_probe(vocab, dev, seed)
        return g, (None if on_meta else probe)

    def run(self, model_or_qgraph, calib=None, probe=None, verify: bool | None = None,
            dtype=None, progress: bool = True, seed: int = 0, out=None, device=None):
        """Run the passes and return a CompiledDenoiser (with `.report`).

        Given an HF checkpoint directory (a path) instead of a model, the run streams stage by
        stage (qpass/pipeline/streaming.py, DESIGN §12): weights are read per block onto
        `device`, the compiled checkpoint is written to `out` (required) and its path is
        returned; rerunning after a crash resumes after the last complete stage."""
        from qpass.runtime.compiled import CompiledDenoiser
        if isinstance(model_or_qgraph, (str, os.PathLike)):
            from qpass.pipeline.streaming import stream_to
            if out is None:
                raise PipelineError("streaming a checkpoint directory writes the result to disk: "
                                    "pass out=DIR")
            if any(p.needs_calibration for p in self.passes) and calib is None:
                raise CalibrationError(f"pass(es) {', '.join(p.name for p in self.passes if p.needs_calibration)} "
                                       f"need calibration data; pass calib=CalibrationSet...")
            with _progress(progress) as prog:
                return stream_to(self, model_or_qgraph, out, calib, device or "cpu", dtype,
                                 self.verify if verify is None else verify, seed,
                                 PassContext(progress=prog))
        need = [p.name for p in self.passes if p.needs_calibration]
        if need and calib is None:
            raise CalibrationError(f"pass(es) {', '.join(need)} need calibration data; pass "
                                   f"calib=qpass.calibration.CalibrationSet.from_texts(...)")
        verify = self.verify if verify is None else verify
        g, probe = self.prepare(model_or_qgraph, probe, dtype, seed)
        _check_finite(g.gm)
        passes = self.passes
        report = Report()
        ctx = PassContext(calib=calib, probe=probe, seed=seed, scheme=self.scheme_given)
        fp_linear_out = {}
        if probe is not None and self.quantizes:
            keep = {n.name for n in g.linears()}
            _, fp_linear_out = record(g.gm, probe, keep)
        with _progress(progress) as prog:
            ctx.progress = prog
            tasks = [prog.add_task(f"{p.name}", total=1) if prog is not None else None
                     for p in passes]
            for p, task in zip(passes, tasks):
                report.passes.append(self._run_one(p, g, ctx, verify and probe is not None))
                if prog is not None:
                    prog.update(task, completed=1)
        if self.quantizes:
            report.coverage = coverage(g, self.scheme(), planned=False)
            check_coverage(report.coverage, self.allow_uncovered)
        report.linears = _linear_records(g, probe, fp_linear_out)
        return CompiledDenoiser.from_run(g, self, report)

    def apply(self, g, ctx: PassContext, upto: int | None = None):
        """Run the passes (the first `upto + 1` of them when given) on the QGraph `g` in
        place, yielding (index, pass, PassResult) after each: what `run` and `qpass inspect`
        share. Recompiles after every pass and checks the facts it provides."""
        for i, p in enumerate(self.passes[: None if upto is None else upto + 1]):
            yield i, p, self._apply_one(p, g, ctx)

    @staticmethod
    def _apply_one(p: Pass, g, ctx: PassContext):
        with torch.no_grad():
            res = p.run(g, ctx)
        g.recompile()                            # the one place a graph is recompiled
        if res is None:
            raise PipelineError(f"pass {p.name}.run returned None; it must return a PassResult")
        ensure_provided(p, g)
        return res

    def _run_one(self, p: Pass, g, ctx: PassContext, verify: bool) -> PassRecord:
        if verify and p.exact:
            ref_logits, before = record(g.gm, ctx.probe)
        t0 = time.perf_counter()
        res = self._apply_one(p, g, ctx)
        seconds = time.perf_counter() - t0
        rel = verify_exact(p.name, g.gm, ctx.probe, ref_logits, before) if verify and p.exact else None
        return PassRecord(p.name, repr(p), seconds, list(res.nodes_changed), dict(res.metrics),
                          list(res.notes), rel)


def _linear_records(g, probe, fp_out: dict) -> list[LinearRecord]:
    quantized = [n for n in g.linears() if is_quantized_module(g.module(n))]
    if not quantized:
        return []
    final = {}
    if probe is not None and fp_out:
        _, final = record(g.gm, probe, {n.name for n in quantized})
    rows = []
    for n in quantized:
        m, meta = g.module(n), n.meta.get("qpass", {})
        out_sqnr = sqnr_db(fp_out[n.name], final[n.name]) if n.name in fp_out and n.name in final \
            and fp_out[n.name].shape == final[n.name].shape else None
        ws, as_ = getattr(m, "weight_spec", None), getattr(m, "act_spec", None)
        rows.append(LinearRecord(n.target, None if ws is None else str(ws),
                                 None if as_ is None else str(as_), meta.get("weight_sqnr_db"), out_sqnr))
    return rows


class _NoProgress:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _progress(enabled: bool):
    if not enabled:
        return _NoProgress()
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    return Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                    console=Console(stderr=True), transient=False)


def _check_finite(gm) -> None:
    """NaN/Inf weights are named before any pass, not blamed on the first pass they reach."""
    import torch
    for name, t in list(gm.named_parameters()) + list(gm.named_buffers()):
        if t.is_floating_point() and t.device.type != "meta" and not bool(torch.isfinite(t).all()):
            raise CalibrationError(f"tensor {name!r} of the model holds NaN or Inf values; fix the "
                                   f"weights before quantizing (nothing was run)")

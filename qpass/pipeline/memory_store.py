"""The in-memory form of a run (DESIGN §3): the executor's stages are already loaded, nothing
is read or written per stage, and nothing resumes. The store captures a private copy of the
model (the caller's model is never changed; a QGraph given by the caller is worked on in
place), and at the end checks coverage, measures every quantized linear's output SQNR on the
probe batch against the float graph and returns the CompiledDenoiser (saved when `out` is
given; the run then holds `out`'s work-folder lock, work_dir.py)."""
from __future__ import annotations

import copy

import torch

from qpass.errors import CalibrationError
from qpass.pipeline.work_dir import WorkFolder


class MemoryStore:
    """Stages of a model (or QGraph) held in memory; see the module doc."""

    def __init__(self, model_or_qgraph, probe=None, dtype=None, out=None, finish: bool = True):
        self.source, self.probe, self.dtype_arg = model_or_qgraph, probe, dtype
        self.out, self.finishes = out, finish
        self.on_meta = False
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.fp_linear_out: dict = {}
        # a run writing `out` holds its work folder's lock (work_dir.py), as a streamed one
        # does: a second run writing the same `out` fails at once, not after its compute
        self.folder = WorkFolder(out).acquire() if out is not None else None

    def close(self) -> None:
        if self.folder is not None:
            self.folder.release()

    # ---- capture ------------------------------------------------------------------------
    def capture(self, seed: int = 0):
        """(QGraph on a private copy of the model, probe batch or None on the meta device)."""
        from qpass.ir import QGraph, capture
        from qpass.pipeline.verify import default_probe
        probe = self.probe
        if isinstance(self.source, QGraph):
            g = self.source
            if self.dtype_arg is not None:
                g.gm.to(self.dtype_arg)
        else:
            from qpass.models.from_hf import from_hf, is_transformers_model
            model = self.source
            if is_transformers_model(model):
                model = from_hf(model)     # shares weights; the deep copy below owns its own
            from qpass.models import on_meta
            p = next(iter(model.parameters()), None)
            model = model if on_meta(model) else copy.deepcopy(model)
            if self.dtype_arg is not None:
                model = model.to(self.dtype_arg)
            device = p.device if p is not None else torch.device("cpu")
            if probe is None:
                vocab = getattr(getattr(model, "config", None), "vocab_size", 100)
                probe = default_probe(vocab, device, seed)
            g = capture(model, probe)
        tensors = list(g.gm.parameters()) + list(g.gm.buffers())
        self.on_meta = any(t.device.type == "meta" for t in tensors)
        floats = [t for t in tensors if t.is_floating_point()]
        if floats:
            self.device, self.dtype = floats[0].device, floats[0].dtype
        if probe is not None and not isinstance(probe, tuple):
            probe = (probe,)
        if probe is None and not self.on_meta:
            probe = default_probe(getattr(g.config, "vocab_size", 100), self.device, seed)
        self.probe = None if self.on_meta else probe
        if not self.on_meta:
            _check_finite(g.gm)
        return g, self.probe

    def before_passes(self, g, quantizes: bool) -> None:
        """The float graph's linear outputs on the probe (the report's output SQNR)."""
        from qpass.pipeline.verify import record
        if self.finishes and self.probe is not None and quantizes:
            _, self.fp_linear_out = record(g.gm, self.probe, {n.name for n in g.linears()})

    # ---- per stage: nothing to read, write or free ----------------------------------------
    def resume(self, pipeline, calib):
        return [], {}                   # nothing to resume: restore() is never asked for

    def load(self, g, stage) -> None:
        pass

    def save(self, g, stage, records, cache, shadows) -> None:
        pass

    def free(self, g, stage) -> None:
        pass

    # ---- the result ---------------------------------------------------------------------
    def finish(self, g, pipeline, report, records):
        from qpass.pipeline.coverage import check_coverage, coverage
        from qpass.runtime.compiled import CompiledDenoiser
        if self.finishes and pipeline.quantizes:
            report.coverage = coverage(g, pipeline.scheme(), planned=self.on_meta)
            check_coverage(report.coverage, pipeline.allow_uncovered)
        if self.finishes:
            report.linears = _linear_records(g, self.probe, self.fp_linear_out)
        out = CompiledDenoiser.from_run(g, pipeline, report)
        if self.out is not None:
            out.save(self.out)
        return out


def _linear_records(g, probe, fp_out: dict) -> list:
    from qpass.ir.qlinear import is_quantized_module
    from qpass.pipeline.verify import record, sqnr_db
    from qpass.runtime.report import LinearRecord
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
                                 None if as_ is None else str(as_), meta.get("weight_sqnr_db"),
                                 out_sqnr))
    return rows


def _check_finite(gm) -> None:
    """NaN/Inf weights are named before any pass, not blamed on the first pass they reach."""
    for name, t in list(gm.named_parameters()) + list(gm.named_buffers()):
        if t.is_floating_point() and t.device.type != "meta" and not bool(torch.isfinite(t).all()):
            raise CalibrationError(f"tensor {name!r} of the model holds NaN or Inf values; fix the "
                                   f"weights before quantizing (nothing was run)")

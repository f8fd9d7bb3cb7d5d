"""The pipeline (DESIGN §3): `Pipeline(passes).run(model) -> CompiledDenoiser`.

The order is checked when the pipeline is built (before any compute). `run` hands the passes
to the one executor (qpass/pipeline/executor.py), which walks the model's stages — in memory
(memory_store.py: a private copy of the model, nothing written unless `out` is given) or from
an HF checkpoint directory (disk_store.py: each stage read, run, written and freed; resumable)
— and returns a CompiledDenoiser in both forms. A Pipeline is a value: `replace`,
`with_pass`, `strict_groups` and `group_fit` return new pipelines."""
from __future__ import annotations

import os
from dataclasses import replace as _replace
from typing import Iterable, Sequence

from qpass.errors import CheckpointError, PipelineError
from qpass.pipeline.pass_base import PASSES, Fact, Pass
from qpass.pipeline.order import auto_order, check_order
from qpass.specs import Scheme

QUANTIZING_FACTS = (Fact.WEIGHTS_QUANTIZED, Fact.ACTS_QUANTIZED)
_KEEP = object()


def _reads(p, scheme) -> bool:
    """Whether pass `p` quantizes with `scheme` (ObserveActivations: up to its observer)."""
    own = getattr(p, "scheme", None)
    return (scheme is not None and hasattr(p, "SCHEME_FIELD") and isinstance(own, Scheme)
            and _replace(own, act=scheme.act) == scheme)


class Pipeline:
    """An ordered, checked list of passes.

    scheme: the quantization scheme of the whole pipeline (a name such as "w4a4", a spec
    string or a Scheme); every pass with a scheme parameter left at None reads it. verify:
    check exact passes on every stage's cached inputs (default True: it costs two runs of
    the stage per exact pass). allow_uncovered: accept linears that are neither quantized
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

    def replace(self, *, passes=None, scheme=_KEEP, verify=_KEEP, allow_uncovered=_KEEP,
                initial_facts=_KEEP) -> "Pipeline":
        """A new pipeline with the given fields changed (the order is checked again)."""
        return Pipeline(list(self.passes if passes is None else passes),
                        scheme=self.scheme_given if scheme is _KEEP else scheme,
                        verify=self.verify if verify is _KEEP else verify,
                        allow_uncovered=self.allow_uncovered if allow_uncovered is _KEEP
                        else allow_uncovered,
                        initial_facts=self.initial_facts if initial_facts is _KEEP
                        else initial_facts)

    def with_pass(self, p: Pass) -> "Pipeline":
        """A new pipeline with `p` in place of the pass of the same class, else appended."""
        passes = list(self.passes)
        same = [i for i, q in enumerate(passes) if type(q) is type(p)]
        if same:
            passes[same[0]] = p
        else:
            passes.append(p)
        return self.replace(passes=passes)

    def with_scheme(self, scheme) -> "Pipeline":
        """A new pipeline quantizing with `scheme` (a name, spec string or Scheme): every pass
        that reads this pipeline's scheme reads the new one, a pass given another scheme of its
        own keeps it. `presets.get("w4a16-gptq").with_scheme("w4a16:g64")` is the GPTQ preset
        at group size 64 (`qpass quantize --pipeline P --scheme S`)."""
        old = self.scheme()
        passes = [_replace(p, **{p.SCHEME_FIELD: None}) if _reads(p, old) else p
                  for p in self.passes]
        return self.replace(passes=passes, scheme=Scheme.parse(scheme))

    def strict_groups(self) -> "Pipeline":
        """A new pipeline whose schemes refuse (SpecError) a group size that does not divide
        a layer's K, instead of fitting it (Scheme.fit_weight)."""
        return self._schemes_with(strict_groups=True)

    def group_fit(self, mode: str) -> "Pipeline":
        """A new pipeline whose schemes fit a group size that does not divide some K by
        `mode`: "model" (one group size for the whole model, the default) or "layer"."""
        return self._schemes_with(group_fit=mode)

    def _schemes_with(self, **changes) -> "Pipeline":
        passes = []
        for p in self.passes:
            fields = {attr: _replace(getattr(p, attr), **changes)
                      for attr in ("scheme", "spec_or_scheme")
                      if isinstance(getattr(p, attr, None), Scheme)}
            if "spec_or_scheme" in fields:          # ObserveActivations keeps both in step
                fields.pop("scheme", None)
            passes.append(_replace(p, **fields) if fields else p)
        scheme = None if self.scheme_given is None else _replace(self.scheme_given, **changes)
        return self.replace(passes=passes, scheme=scheme)

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
    def run(self, model_or_dir, calib=None, probe=None, verify: bool | None = None,
            dtype=None, progress: bool | None = True, seed: int = 0, out=None, device=None,
            offload_dir: str | None = None, batch_size: int = 8, overwrite: bool = False,
            trust_remote_code: bool = False):
        """Run the passes stage by stage through the one executor; returns a
        CompiledDenoiser (with `.report`; `.path` where it was written).

        Arguments are checked before any compute, each mistake one QpassError line
        (run_args.py). model_or_dir: a model (qpass.models.load(...), a transformers model, a
        QGraph), a checkpoint directory, or a zoo name (its embedded checkpoint, streamed like
        any directory, so it needs out= too; load it for an in-memory run). calib: a
        CalibrationSet; text (a str or a list of str), cut by CalibrationSet.from_texts(texts,
        model.tokenizer, n=128, seq_len=512 or the model's maximum, seed=seed); or token ids
        (an integer tensor, a list of ints or of equal-length int lists), given to
        CalibrationSet.from_ids: (n, seq_len) rows are the windows themselves, a 1-D stream is
        cut with the same defaults as text. Text and ids are masked as the dLLM sees them
        ("diffusion"; "none" for a causal model). A list of (B, L) id tensors or (input_ids,)
        tuples is fed as given (nothing masked); anything else is a CalibrationError naming
        what is accepted (qpass/calibration/coerce.py). probe: None or a (B, L) id tensor;
        out: None or a directory path; batch_size: an int >= 1.

        Given a model (or QGraph), the run works on a private copy in memory and saves the
        result to `out` when given. Given an HF checkpoint directory (a path, or a model
        loaded on the meta device from one), it streams (DESIGN §12): weights are read per
        stage onto `device`, the compiled checkpoint is written to `out` (required), and the
        result holds no tensors (qpass.load_compiled(result.path) computes with it); a rerun
        after a crash resumes after the last complete stage. offload_dir: keep the cached
        stage inputs on disk there instead of in memory; batch_size: calibration sequences
        per stage run. progress: report the stage loop through qpass.display.progress (True: bars on
        a terminal; None: as the enclosing step or the command line says; False: silent).
        overwrite: replace a qpass checkpoint already at `out` (default False: refused before
        any compute, naming what it holds; CompiledDenoiser.save replaces, as save_pretrained
        does). trust_remote_code: a checkpoint that ships its own model code (LLaDA2, SDAR,
        …) runs it only when True; models qpass's reference family does not load are
        captured as they are (qpass/pipeline/as_is_run.py)."""
        if out is not None and not overwrite and isinstance(out, (str, os.PathLike)):
            from qpass.runtime.output import check_not_replacing
            check_not_replacing(out, "out=", "pass overwrite=True to replace it")
        from qpass.pipeline.executor import Executor
        from qpass.calibration.coerce import as_calibration
        from qpass.pipeline import run_args
        model_or_dir = run_args.check_model(model_or_dir)
        from qpass.pipeline.as_is_entry import as_is_source, run_as_is
        if as_is_source(model_or_dir):              # its own code, captured as it is
            run_args.check_out(out)
            run_args.check_batch_size(batch_size)
            return run_as_is(self, model_or_dir, calib, out, overwrite, progress, seed,
                             batch_size, trust_remote_code, device, dtype)
        run_args.check_out(out)
        run_args.check_batch_size(batch_size)
        store = self._store(model_or_dir, probe, dtype, out, device)
        try:
            tokenizer, config = run_args.model_parts(store, model_or_dir)
            run_args.check_probe(probe, config)
            calib = as_calibration(calib, tokenizer, config, seed)
            verify = self.verify if verify is None else verify
            return Executor(self, store, calib, verify, seed, progress, offload_dir,
                            batch_size).run()
        finally:
            store.close()                 # the work folder's lock (work_dir.py)

    def apply(self, g, calib=None, probe=None, seed: int = 0, verify: bool | None = None,
              progress: bool | None = False):
        """Run the passes on the QGraph `g` in place (no copy, no coverage check): what
        `qpass inspect` uses to look at the graph after a pass. Returns the report."""
        from qpass.calibration.coerce import as_calibration
        from qpass.pipeline.executor import Executor
        from qpass.pipeline.memory_store import MemoryStore
        verify = self.verify if verify is None else verify
        calib = as_calibration(calib, getattr(g, "tokenizer", None), getattr(g, "config", None),
                               seed)
        return Executor(self, MemoryStore(g, probe, finish=False), calib, verify, seed,
                        progress).run().report

    @staticmethod
    def _store(model_or_dir, probe, dtype, out, device):
        from qpass.pipeline.memory_store import MemoryStore
        source = getattr(model_or_dir, "checkpoint_dir", None)
        from qpass.models import on_meta
        meta = on_meta(model_or_dir)
        if isinstance(model_or_dir, (str, os.PathLike)) or \
                (meta and source is not None and out is not None):
            from qpass.pipeline.disk_store import DiskStore
            if out is None:
                raise PipelineError(f"streaming the checkpoint directory {model_or_dir} writes "
                                    f"the result to disk: pass out=DIR, or load the model for an "
                                    f"in-memory run: run(qpass.models.load(...), calib)")
            directory = model_or_dir if source is None or not meta else source
            return DiskStore(directory, out, device or "cpu", dtype,
                             model=model_or_dir if meta else None)
        if out is not None:
            from qpass.runtime.checkpoint import check_target
            check_target(out)                          # before any compute
        return MemoryStore(model_or_dir, probe, dtype, out)


"""The one executor (DESIGN §3, §12): every pipeline runs stage by stage, in memory or from a
checkpoint directory.

The captured graph is split into stages (prefix, block 0 … block n−1, suffix;
qpass/calibration/sequential.py). Before the first stage every pass's `start` fixes what the
stages share (Rotate's Q); then, stage by stage, the store loads the stage's weights (a
checkpoint directory's shards; nothing in memory), every pass runs on the stage in pipeline
order, and after each pass the executor alone

  - adopts the nodes the pass inserted into the stage (qpass/pipeline/stage_nodes.py),
  - recompiles the graph,
  - verifies an exact pass on the stage's outputs over its cached inputs (stage_verify.py),
  - checks the facts the pass provides on the stage (facts.py);

then the stage is run once more to cache its outputs for the next one, and the store writes
and frees it (nothing in memory). Passes that must see the earlier stages in another state
than "after every pass" (Pass.stage_inputs) get their own boundary cache. Facts that say
something happened somewhere (ROTATED, WEIGHTS_QUANTIZED, …) are checked at the end over
every stage, also those a resumed run completed earlier. The store then assembles the result:
a CompiledDenoiser in both forms (its tensors on the meta device and `path` set when the run
streamed to disk)."""
from __future__ import annotations

import time

import torch

from qpass.display import progress as progress_lines
from qpass.errors import CalibrationError, PipelineError
from qpass.pipeline.facts import check_stage, check_witnessed
from qpass.pipeline.pass_base import PassContext
from qpass.pipeline.stage_results import StageRecord, copy_cache, merge_results


class _Batches:
    """Model-input tuples in the shape the sequential runner reads: the probe batch, or the
    batches of a (B, L) id tensor given as calibration data."""

    def __init__(self, batches: list):
        self.items = batches

    def __len__(self) -> int:
        return len(self.items)

    def batches(self, batch_size: int = 8):
        return self.items


class Executor:
    """One run of `pipeline` over the stages `store` holds (MemoryStore or DiskStore)."""

    def __init__(self, pipeline, store, calib=None, verify: bool = True, seed: int = 0,
                 progress: bool | None = None, offload_dir: str | None = None,
                 batch_size: int = 8):
        self.pipeline, self.store, self.calib = pipeline, store, calib
        self.verify, self.seed, self.progress = verify, seed, progress
        self.offload_dir, self.batch_size = offload_dir, batch_size

    # ---- setup --------------------------------------------------------------------------
    def _runner(self, g, probe):
        """(SequentialRunner or None, stages): a runner only when some pass reads activations
        or an exact pass is verified, on the calibration set or else the probe batch."""
        from qpass.calibration.sequential import SequentialRunner, split_stages
        passes = self.pipeline.passes
        calibrating = [p.name for p in passes if p.needs_calibration]
        if calibrating and self.store.on_meta:
            raise PipelineError(f"pass(es) {', '.join(calibrating)} need real weights and cannot "
                                f"run on a structure-only (meta) model; load it with weights")
        self.verify = self.verify and any(p.exact for p in passes) and not self.store.on_meta
        if not (calibrating or self.verify):
            return None, split_stages(g)
        from qpass.calibration.stats import iter_batches
        if self.calib is None:
            data = _Batches([probe])
        elif hasattr(self.calib, "batches"):
            data = self.calib
        else:                                   # a (B, L) id tensor or batches of them
            data = _Batches(list(iter_batches(self.calib, self.batch_size)))
        if self.calib is not None and hasattr(self.calib, "check_vocab") and \
                getattr(g.config, "vocab_size", None) is not None:
            self.calib.check_vocab(g.config.vocab_size)
        runner = SequentialRunner(g, data, batch_size=self.batch_size, device=self.store.device,
                                  progress=self._ctx(), offload_dir=self.offload_dir)
        return runner, runner.stages

    def _ctx(self, **kw) -> PassContext:
        folder = getattr(self.store, "folder", None)
        return PassContext(calib=self.calib, scheme=self.pipeline.scheme_given, seed=self.seed,
                           progress=self.progress,
                           work_dir=folder.path if folder is not None else None, **kw)

    # ---- the walk -----------------------------------------------------------------------
    def run(self):
        """Walk every stage; returns the store's result (a CompiledDenoiser)."""
        if self.calib is None:
            need = [p.name for p in self.pipeline.passes if p.needs_calibration]
            if need:
                raise CalibrationError(f"pass(es) {', '.join(need)} need calibration data; pass "
                                       f"calib=qpass.calibration.CalibrationSet.from_texts(...)")
        g, probe = self.store.capture(self.seed)
        runner, stages = self._runner(g, probe)
        passes = self.pipeline.passes
        if any(p.changes_weights for p in passes):
            _untie_across_stages(g, stages)
        self.store.before_passes(g, self.pipeline.quantizes)
        done, saved = self.store.resume(self.pipeline, self.calib)
        self.states = {}
        for k, p in enumerate(passes):
            self.states[k] = p.start(g, self._ctx(), saved.get(str(k)))
            record = getattr(self.states[k], "record", None)
            if callable(record):
                saved[str(k)] = record()        # the store's dict: saved with its progress
        self.known = {n for st in stages for n in st.nodes}     # nodes a stage owns
        records: list[StageRecord] = list(done)
        cache = shadows = None
        if runner is not None:
            cache = runner.new_cache("input")
            for _ in runner.batches():
                cache.append({})
            shadows = {k: copy_cache(cache) for k, p in enumerate(passes)
                       if _shadow_state(p) is not None}
        with progress_lines.phase("quantize" if self.pipeline.quantizes else "pipeline",
                                  total=len(stages), unit="stages", done=len(done),
                                  enabled=self.progress) as task:
            if done:
                progress_lines.say(f"resuming: {len(done)} of {len(stages)} stages done by an "
                                   f"earlier run are read back, not recomputed")
            try:
                for stage in stages:
                    if stage.index < len(done):           # completed by an earlier run
                        task.describe(f"{stage.name}: restoring")
                        loaded = self.store.restore(g, stage, done[stage.index], runner,
                                                    self.known,
                                                    last=stage.index == len(done) - 1)
                        g.recompile()                # the one place a graph is recompiled
                        if loaded is not None:
                            cache, shadows = loaded
                        continue
                    record, cache, shadows = self._stage(g, stage, runner, cache, shadows,
                                                         stage is stages[-1], task)
                    records.append(record)
                    self.store.save(g, stage, records, cache, shadows)
                    self.store.free(g, stage)
                    task.advance()
            finally:
                for c in [cache] + list((shadows or {}).values()):
                    if c is not None:
                        c.clear()
            task.describe("finishing")
            seen = [set().union(*(set(r.facts.get(str(k), [])) for r in records))
                    for k in range(len(passes))]
            for p, facts in zip(passes, seen):
                check_witnessed(p, facts)
            return self.store.finish(g, self.pipeline, self._report(records), records)

    def _stage(self, g, stage, runner, cache, shadows, is_last: bool, task):
        """Run every pass on `stage`; returns (its record, the next stage's caches)."""
        from qpass.calibration.sequential import BoundaryCache
        self.store.load(g, stage)
        passes = self.pipeline.passes
        record = StageRecord(stage.index)
        nxt = BoundaryCache() if runner is not None else None
        nxt_shadows = {k: BoundaryCache() for k in (shadows or {})}
        carried = is_last or runner is None       # nothing reads the suffix's outputs
        for k, p in enumerate(passes):
            task.describe(f"{stage.name}: {p.name}")
            if p.is_lowering and not carried:
                # the next stage calibrates on the simulated model, as the kernels compute it
                runner.run_stage(stage, cache, collect=nxt)
                carried = True
            shadow = shadows.get(k) if shadows is not None else None
            inputs = shadow if p.stage_inputs != "processed" else cache
            state = _shadow_state(p) if shadow is not None and not is_last else None
            if state == "before":
                runner.run_stage(stage, shadow, collect=nxt_shadows[k])
            record.results[str(k)], record.facts[str(k)] = self._run_pass(
                k, p, g, stage, runner, inputs, shadow if p.reference_inputs else None)
            if state == "after":
                runner.run_stage(stage, shadow, collect=nxt_shadows[k])
        if not carried:
            runner.run_stage(stage, cache, collect=nxt)
        return record, nxt, (nxt_shadows if shadows is not None else None)

    def _run_pass(self, k: int, p, g, stage, runner, inputs, reference) -> tuple[dict, list]:
        """One pass on one stage, then what only the executor does (module doc)."""
        from qpass.pipeline import stage_nodes
        from qpass.pipeline.stage_verify import StageCheck
        check = StageCheck(p, g, stage, runner, inputs, self.store.dtype, self.states[k]) \
            if self.verify and p.exact else None
        t0 = time.perf_counter()
        ctx = self._ctx(stage=stage, runner=runner, inputs=inputs, reference=reference,
                        run=self.states[k])
        try:
            with torch.no_grad():
                res = p.run(g, ctx)
        finally:
            ctx.close_tasks()
        seconds = time.perf_counter() - t0
        if res is None:
            raise PipelineError(f"pass {p.name}.run returned None; it must return a PassResult")
        new = stage_nodes.adopt(g.gm.graph, stage, self.known)
        if runner is not None:
            runner.adopt(stage, new)
        g.recompile()                            # (and after a restored stage, run())
        out = {"metrics": res.metrics, "notes": res.notes, "nodes_changed": res.nodes_changed,
               "seconds": seconds}
        if check is not None:
            out["verified_rel_change"] = check.finish()
        return out, sorted(check_stage(p, g, stage))

    def _report(self, records):
        from qpass.runtime.report import Report
        report = Report([merge_results(k, p, records) for k, p in enumerate(self.pipeline.passes)])
        for p, rec in zip(self.pipeline.passes, report.passes):
            rec.metrics = p.merged_metrics(rec.metrics)
        return report


def _shadow_state(p) -> str | None:
    """The state ("before"/"after") of the earlier stages in pass p's own boundary cache (its
    stage_inputs, or its reference_inputs), None when it reads the main cache only."""
    states = {s for s in (p.stage_inputs, p.reference_inputs) if s not in (None, "processed")}
    if len(states) > 1:
        raise PipelineError(f"pass {p.name} asks for its inputs {p.stage_inputs!r} and its "
                            f"reference {p.reference_inputs!r}: one boundary cache holds one "
                            "state; make them the same")
    return states.pop() if states else None


def _untie_across_stages(g, stages) -> None:
    """A parameter two stages share (a head tied to the embedding) becomes one copy per
    stage, as a streamed run reads it: a weight-changing pass working on one stage must not
    change what a later stage's passes see before they ran there."""
    owner: dict[int, int] = {}
    for stage in stages:
        for target in dict.fromkeys(n.target for n in stage.nodes if n.op == "call_module"):
            mod = g.gm.get_submodule(target)
            for name, p in list(mod.named_parameters(recurse=False)):
                if p.device.type == "meta":
                    continue
                if owner.setdefault(id(p), stage.index) != stage.index:
                    setattr(mod, name, torch.nn.Parameter(p.detach().clone(),
                                                          requires_grad=p.requires_grad))

"""Stage-wise execution of a pipeline over an HF checkpoint directory (DESIGN §12).

The model is built on the meta device and captured there (structure and shapes, no weights).
Then, stage by stage (prefix, block 0 … block n−1, suffix; calibration/sequential.py):

  1. the stage's weights are read from the checkpoint's safetensors shards onto `device`;
  2. every pass does its stage-wise work in pipeline order (`Pass.run_stage`), exact passes
     verified on this stage's outputs over the cached inputs (the probe or calibration batches,
     already through the quantized earlier stages; qpass/pipeline/stage_verify.py, which also
     checks a change of basis such as Rotate's as f'(x·Q) = f(x)·Q). What every stage must
     share (Rotate's Q) is fixed once by `Pass.begin_stream` before the first stage and kept
     in the progress file; nodes a pass inserts (online Hadamards, DuQuant's transforms) and
     the buffers only they read belong to the stage (qpass/pipeline/stage_nodes.py);
  3. the stage is recomputed and its outputs cached for the next one; its tensors are written
     as one shard of the output, hashed, recorded in the work directory's progress file with
     the boundary cache, and the stage's tensors are freed (back to meta).

Host memory therefore holds one stage's weights (plus the embedding while the prefix runs)
and the cached boundary activations. A run that dies restarts with the same arguments after
the last complete stage: the progress file names the run (pipeline configs, input files,
calibration) and every completed stage's shard and cache by sha256; anything that does not
match is recomputed. The shards are assembled into a compiled checkpoint at the end."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from qpass.errors import CheckpointError, PipelineError
from qpass.pipeline.host_memory import available_bytes, release_freed_memory
from qpass.pipeline.stream_resume import (StageRecord, load_progress, restore_attrs,
                                          restore_modules, run_key, save_progress, written)
from qpass.pipeline.stream_state import copy_cache, load_cache, merge_results
from qpass.runtime.checkpoint import sha256 as sha256_file

WORK = ".qpass-stream"            # the work directory inside the output's parent


class _Batches:
    """The probe batch in the shape the sequential runner reads (a one-batch calibration set)."""

    def __init__(self, batch: tuple):
        self.batch = batch

    def __len__(self) -> int:
        return 1

    def batches(self, batch_size: int = 8):
        return [self.batch]


class StreamingRun:
    """One stage-wise run of `pipeline` over `checkpoint_dir` (see the module doc)."""

    def __init__(self, pipeline, checkpoint_dir, work_dir, calib=None, device="cpu",
                 dtype=None, verify: bool = True, seed: int = 0, progress=None):
        from qpass.models.loading import build, read_config, tensor_sources
        from qpass.models.tokenizer import load_tokenizer
        self.pipeline, self.calib, self.seed = pipeline, calib, seed
        self.device, self.dtype = torch.device(device), dtype
        self.verify = verify
        self.checkpoint_dir = Path(checkpoint_dir)
        self.work = Path(work_dir)
        bad = [p.name for p in pipeline.passes if not p.stage_wise]
        if bad:
            raise PipelineError(f"pass(es) {', '.join(bad)} have no stage-wise form yet, so this "
                                f"pipeline cannot stream a checkpoint directory; load the model "
                                f"in memory (small models) or use stage-wise passes "
                                f"(FuseNorms, Rotate, DuQuant, SmoothQuant, AWQ, RTN, GPTQ, "
                                f"ObserveActivations, Lower)")
        self.cfg = read_config(self.checkpoint_dir)
        self.sources = tensor_sources(self.checkpoint_dir, self.cfg)   # checks keys first
        self.model = build(self.cfg, device="meta")
        self.model.tokenizer = load_tokenizer(self.checkpoint_dir)
        self.progress = progress
        self.resumed = False
        self.shared: dict[str, Any] = {}      # pass index -> its begin_stream state (resume)

    # ---- weights ------------------------------------------------------------------------
    @staticmethod
    def stage_modules(stage) -> list[str]:
        return list(dict.fromkeys(n.target for n in stage.nodes if n.op == "call_module"))

    def check_memory(self, g, stage) -> None:
        """One clear error, before reading, when the device cannot hold this stage: its
        weights in the compute dtype, twice (the pass's working copy and the quantized one)."""
        size = torch.finfo(self.dtype or torch.float32).bits // 8
        need = 2 * size * sum(p.numel() for t in self.stage_modules(stage)
                              for p in g.gm.get_submodule(t).parameters(recurse=False))
        free = available_bytes(self.device)
        if free is not None and need > free:
            raise PipelineError(f"{stage.name} needs about {need / 2**30:.1f} GiB on {self.device}, "
                                f"but only {free / 2**30:.1f} GiB are free; free memory, use a "
                                f"smaller --dtype, or another device")

    def materialize(self, g, stage) -> None:
        """Read the stage's parameters from the shards onto the device (float32 by default)."""
        from safetensors import safe_open

        from qpass.models.loading import read_tensor
        self.check_memory(g, stage)
        by_file: dict[Path, list[tuple[Any, str, str]]] = {}
        for target in self.stage_modules(stage):
            mod = g.gm.get_submodule(target)
            for pname, p in mod.named_parameters(recurse=False):
                full = f"{target}.{pname}"
                if full not in self.sources:
                    raise CheckpointError(f"{self.checkpoint_dir}: no tensor for parameter {full}")
                f, key = self.sources[full]
                by_file.setdefault(f, []).append((mod, pname, key))
        for f, items in by_file.items():
            if not f.exists():
                raise CheckpointError(f"shard {f} disappeared during the run; restore it and rerun "
                                      f"the same command to resume")
            with safe_open(str(f), framework="pt") as fh:
                for mod, pname, key in items:
                    t = read_tensor(fh, key, getattr(mod, pname).shape, self.device, self.dtype)
                    mod._parameters[pname] = torch.nn.Parameter(t, requires_grad=False)

    def stage_tensors(self, g, stage) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
        """(tensors to write, their kinds in the checkpoint's `tensors` format): the stage's
        modules and the graph buffers its nodes read (DuQuant's transform matrices)."""
        from qpass.pipeline.stage_nodes import attr_targets
        tensors, kinds = module_tensors(g.gm, self.stage_modules(stage))
        persistent = set(g.gm.state_dict(keep_vars=True))
        for target in attr_targets(g.gm.graph, stage.nodes):
            tensors[target] = _attr(g.gm, target).detach().to("cpu").contiguous()
            kinds[target] = {"kind": "buffer", "persistent": target in persistent}
        return tensors, kinds

    def module_entries(self, g, stage) -> dict:
        """The graph-format entries (class + constructor kwargs) of the stage's modules."""
        from qpass.runtime.graph_io import module_entry
        return {t: module_entry(g.gm.get_submodule(t)) for t in self.stage_modules(stage)}

    def free(self, g, stage) -> None:
        """Back to meta: the graph's modules and the built model's (which still holds the
        float module a pass replaced in the graph, with the weights read into it)."""
        from qpass.pipeline.stage_nodes import attr_targets
        for target in self.stage_modules(stage):
            g.gm.get_submodule(target).to("meta")
            try:
                built = self.model.get_submodule(target)
            except AttributeError:      # a module a pass added (e.g. Lower's SiluMulQuant)
                continue
            built.to("meta")
        for target in attr_targets(g.gm.graph, stage.nodes):
            owner, _, name = target.rpartition(".")
            mod = g.gm.get_submodule(owner)
            mod._buffers[name] = mod._buffers[name].to("meta")
        release_freed_memory()          # or peak RSS grows with depth (host_memory.py)

    # ---- resume (stream_resume.py) -----------------------------------------------------
    def _load_progress(self, key: str) -> list[StageRecord]:
        """The completed stages of an interrupted run with this key (hash-checked); their
        passes' begin_stream states go to self.shared."""
        records, self.shared = load_progress(self.work, key, self.shared)
        return records

    def _save_progress(self, key: str, records: list[StageRecord]) -> None:
        save_progress(self.work, key, self.shared, records)

    # ---- the run --------------------------------------------------------------------------
    def run(self):
        """Stream every stage; returns (QGraph on meta, stage records, shard paths)."""
        from safetensors.torch import save_file

        from qpass.calibration.sequential import BoundaryCache, SequentialRunner
        from qpass.ir import capture
        from qpass.models.rope import rope_tables
        from qpass.pipeline.facts import ensure_provided
        from qpass.pipeline.verify import default_probe
        from qpass.pipeline import stage_nodes
        from qpass.pipeline.pass_base import PassContext

        self.work.mkdir(parents=True, exist_ok=True)
        probe = default_probe(self.cfg.vocab_size, "meta", self.seed)
        g = capture(self.model, probe)
        cos, sin = rope_tables(self.cfg.head_dim, self.cfg.max_seq_len, self.cfg.rope_theta,
                               self.cfg.rope_scaling, device=self.device)
        for name, value in (("rope_cos", cos), ("rope_sin", sin)):
            if hasattr(g.gm, name):
                setattr(g.gm, name, value)
        data = self.calib if self.calib is not None else _Batches(
            default_probe(self.cfg.vocab_size, "cpu", self.seed))
        ctx = PassContext(calib=self.calib, probe=None, seed=self.seed,
                          scheme=self.pipeline.scheme_given,
                          progress=getattr(self.progress, "progress", None))
        runner = SequentialRunner(g, data, device=self.device, progress=self.progress)
        key = run_key(self.pipeline, self.checkpoint_dir, self.calib, self.device, self.dtype)
        done = self._load_progress(key)
        records: list[StageRecord] = list(done)
        self._begin(g, ctx)
        cache = runner.new_cache("input")
        for _ in runner._batches():
            cache.append({})
        # passes that read the earlier stages in another state than "after every pass" get
        # their own boundary cache (Pass.stage_inputs): index in the pipeline -> cache
        passes = self.pipeline.passes
        shadows = {k: copy_cache(cache) for k, p in enumerate(passes) if p.stage_inputs != "processed"}
        stages = runner.stages
        self.known = {n for st in stages for n in st.nodes}     # nodes a stage owns
        try:
            for stage in stages:
                if stage.index < len(done):           # completed by an earlier run: hash-checked
                    self.resumed = True
                    stage.nodes[:] = stage_nodes.restore(g.gm, stage.nodes, done[stage.index].nodes)
                    self._adopted(runner, stage, [n for n in stage.nodes if n not in self.known])
                    restore_attrs(g.gm, self.work, stage, done[stage.index])
                    restore_modules(g.gm, done[stage.index])
                    if stage.index == len(done) - 1:
                        cache, shadows = load_cache(self.work / done[stage.index].cache)
                    continue
                self.materialize(g, stage)
                results = {}
                nxt = BoundaryCache()
                nxt_shadows = {k: BoundaryCache() for k in shadows}
                is_last = stage is stages[-1]
                carried = is_last                 # nothing reads the suffix's outputs
                for k, p in enumerate(passes):
                    if p.is_lowering and not carried:
                        # the next stage calibrates on the simulated model, as in memory
                        runner.run_stage(stage, cache, collect=nxt)
                        carried = True
                    inputs = shadows.get(k, cache)
                    if p.stage_inputs == "before" and not is_last:
                        runner.run_stage(stage, inputs, collect=nxt_shadows[k])
                    results[p.name] = self._run_pass(p, g, ctx, stage, runner, inputs)
                    if p.stage_inputs == "after" and not is_last:
                        runner.run_stage(stage, inputs, collect=nxt_shadows[k])
                if not carried:
                    runner.run_stage(stage, cache, collect=nxt)
                shard = self.work / f"stage-{stage.index:05d}.safetensors"
                tensors, kinds = self.stage_tensors(g, stage)
                written(shard, lambda: save_file(tensors, str(shard), metadata={"format": "qpass-stage"}))
                tensors = None                            # the shard's buffers go before the next stage
                cache_file = self.work / f"cache-{stage.index:05d}.pt"
                saved = {"main": list(nxt), "shadows": {str(k): list(v) for k, v in nxt_shadows.items()}}
                written(cache_file, lambda: torch.save(saved, cache_file))
                saved = None
                records.append(StageRecord(stage.index, shard.name, sha256_file(shard),
                                           cache_file.name, sha256_file(cache_file), results,
                                           self.module_entries(g, stage), kinds,
                                           stage_nodes.record(stage.nodes)))
                self._save_progress(key, records)
                if stage.index > 0:                     # the previous cache is not needed again
                    prev = self.work / f"cache-{stage.index - 1:05d}.pt"
                    if prev.exists():
                        prev.write_bytes(b"")       # keep the name, drop the bytes
                self.free(g, stage)
                cache, shadows = nxt, nxt_shadows
        finally:
            cache.clear()
            for c in shadows.values():
                c.clear()
        if not self.resumed:       # resumed stages keep their float modules on meta in `g`
            for p in self.pipeline.passes:
                ensure_provided(p, g)
        return g, records, [self.work / r.shard for r in records]

    def _begin(self, g, ctx) -> None:
        """Every pass's begin_stream, once, before the first stage; a resumed run hands each
        the state the interrupted run recorded (Rotate gets back the same Q)."""
        for k, p in enumerate(self.pipeline.passes):
            state = p.begin_stream(g, ctx, self.shared.get(str(k)))
            if state is not None:
                self.shared[str(k)] = state

    def _adopted(self, runner, stage, new) -> None:
        """Nodes a pass inserted into `stage` join the runner's lookups (stage_nodes.adopt)."""
        self.known.update(new)
        for n in new:
            runner._by_name[n.name] = n
        for later in runner._later[:stage.index]:
            later.update(new)

    def _run_pass(self, p, g, ctx, stage, runner, cache) -> dict:
        from qpass.pipeline import stage_nodes
        from qpass.pipeline.stage_verify import StageCheck
        check = StageCheck(p, g, stage, runner, cache, self.dtype) if self.verify and p.exact \
            else None
        res = p.run_stage(g, ctx, stage, runner, cache)
        if res is None:
            raise PipelineError(f"pass {p.name}.run_stage returned None; it must return a PassResult")
        self._adopted(runner, stage, stage_nodes.adopt(g.gm.graph, stage, self.known))
        out = {"metrics": res.metrics, "notes": res.notes, "nodes_changed": res.nodes_changed}
        if check is not None:
            out["verified_rel_change"] = check.finish()
        return out


def module_tensors(gm, targets) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """The tensors of the modules at `targets` (CPU, contiguous) and their kinds."""
    tensors, kinds = {}, {}
    for target in targets:
        mod = gm.get_submodule(target)
        persistent = set(mod.state_dict(keep_vars=True))
        items = [(n, t, "param") for n, t in mod.named_parameters()] + \
                [(n, t, "buffer") for n, t in mod.named_buffers()]
        for name, t, kind in items:
            full = f"{target}.{name}" if target else name
            tensors[full] = t.detach().to("cpu").contiguous()
            kinds[full] = {"kind": kind, "persistent": name in persistent}
            if kind == "param":
                kinds[full]["requires_grad"] = False
    return tensors, kinds


def _attr(gm, target: str) -> torch.Tensor:
    owner, _, name = target.rpartition(".")
    return getattr(gm.get_submodule(owner), name)


def stream_to(pipeline, checkpoint_dir, out, calib=None, device="cpu", dtype=None,
              verify: bool = True, seed: int = 0, progress=None) -> Path:
    """Quantize the HF checkpoint at `checkpoint_dir` stage by stage into the compiled
    checkpoint `out` (validated before any compute); a rerun after a crash resumes."""
    from qpass.pipeline.coverage import check_coverage, coverage
    from qpass.runtime.checkpoint import check_target, save_streamed
    from qpass.runtime.compiled import library_versions
    from qpass.runtime.graph_io import graph_to_json
    from qpass.runtime.report import Report
    from safetensors.torch import save_file
    target = check_target(out)
    work = target.parent / f".{target.name}{WORK}"
    run = StreamingRun(pipeline, checkpoint_dir, work, calib, device, dtype, verify, seed, progress)
    g, records, shards = run.run()
    # tensors outside every stage's modules (the RoPE tables) go to one more shard
    owned = {name for r in records for name in r.kinds}
    persistent = set(g.gm.state_dict(keep_vars=True))
    extra = {k: v.detach().to("cpu").contiguous() for k, v in g.gm.named_buffers()
             if k not in owned and v.device.type != "meta"}
    kinds = {k: {"kind": "buffer", "persistent": k in persistent} for k in extra}
    globals_file = work / "globals.safetensors"
    save_file(extra, str(globals_file), metadata={"format": "qpass-stage"})
    graph = graph_to_json(g.gm)
    for r in records:
        graph["modules"].update(r.modules)
    all_kinds = dict(kinds)
    for r in records:
        all_kinds.update(r.kinds)
    report = Report([merge_results(p.name, records) for p in pipeline.passes])
    for p, rec in zip(pipeline.passes, report.passes):
        rec.metrics = p.merged_metrics(rec.metrics)
    if pipeline.quantizes:
        report.coverage = coverage(g, pipeline.scheme(), planned=True)
        check_coverage(report.coverage, pipeline.allow_uncovered)
    manifest = {"config": run.cfg.to_dict(),
                "pipeline": [{"name": p.name, "repr": repr(p), "config": p.config()}
                             for p in pipeline.passes],
                "pipeline_scheme": None if pipeline.scheme_given is None
                else pipeline.scheme_given.to_dict(),
                "versions": library_versions(), "report": report.to_dict(specs=False),
                "graph": graph, "tensors": all_kinds, "streamed": True}
    path = save_streamed(manifest, run.model.tokenizer, shards + [globals_file], target)
    for f in work.iterdir():                          # the run is complete: drop its state
        f.unlink()
    work.rmdir()
    return path

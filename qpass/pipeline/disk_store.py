"""The checkpoint-directory form of a run (DESIGN §12): stages read, run, written and freed.

The model is built on the meta device and captured there (structure and shapes, no weights).
For each stage the executor (executor.py) asks this store to

  1. `load` the stage's weights from the checkpoint's safetensors shards onto `device`;
  2. (the executor runs every pass on the stage, verifies and checks it);
  3. `save` the stage: its tensors as one shard of the output, hashed, recorded in the work
     directory's progress file with the boundary caches for the next stage;
  4. `free` the stage's tensors (back to meta).

Host memory therefore holds one stage's weights (plus the embedding while the prefix runs)
and the cached boundary activations. A run that dies restarts with the same arguments after
the last complete stage (`resume`, `restore`; resume.py): the progress file names the run
(pipeline configs, input files, calibration) and every completed stage's shard and cache by
sha256; anything that does not match is recomputed. `finish` assembles the shards into a
compiled checkpoint.

The work directory `.OUT.qpass-stream` is the run's own and locked for it (work_dir.py): never
a symlink, never another user's, a second run on OUT is refused at once; every file written
there is first made free by unlinking what held its name (never written through a link), and
only qpass's own names are removed when the run completes."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from qpass import folders
from qpass.errors import CheckpointError, PipelineError
from qpass.pipeline.host_memory import available_bytes, release_freed_memory
from qpass.folders.owned import clear_name
from qpass.pipeline.resume import (cache_name, ignored, load_progress, restore_attrs,
                                   restore_modules, run_key, save_progress, shard_name, written)
from qpass.pipeline.stage_results import load_cache
from qpass.pipeline.work_dir import WorkFolder
from qpass.runtime.checkpoint import sha256 as sha256_file


def stage_modules(stage) -> list[str]:
    return list(dict.fromkeys(n.target for n in stage.nodes if n.op == "call_module"))


class DiskStore:
    """Stages of the HF checkpoint at `checkpoint_dir`, written to the compiled checkpoint
    `out` (see the module doc). `model`: the structure already built on meta (from
    qpass.models.load(dir, device="meta")), else it is built here."""

    def __init__(self, checkpoint_dir, out, device="cpu", dtype=None, model=None):
        from qpass.models.loading import build, read_config, tensor_sources
        from qpass.models.tokenizer import load_tokenizer
        from qpass.runtime.checkpoint import check_target
        self.target = check_target(out)                  # before any compute
        self.folder = WorkFolder(self.target)            # the run's own, locked below
        self.work = self.folder.path
        self.device, self.dtype = torch.device(device), dtype
        self.checkpoint_dir = Path(checkpoint_dir)
        self.cfg = read_config(self.checkpoint_dir)
        self.sources = tensor_sources(self.checkpoint_dir, self.cfg)   # checks keys first
        if model is None:
            model = build(self.cfg, device="meta")
            model.tokenizer = load_tokenizer(self.checkpoint_dir)
        self.model = model
        self.on_meta = False          # the stages get real weights when they run
        self.shared: dict[str, Any] = {}      # pass index -> its start state (resume)
        self.key = None
        self.resumed = False
        self.last_cache = None        # the boundary caches a resumed run starts from
        self.folder.acquire()         # a second run writing `out` fails here, before compute

    def close(self) -> None:
        """Unlock the work folder (the run ended, however); it stays while resumable."""
        self.folder.release()

    # ---- capture and resume -------------------------------------------------------------
    def capture(self, seed: int = 0):
        """(QGraph of the meta model with real RoPE tables, the probe batch on the CPU)."""
        from qpass.ir import capture
        from qpass.models.rope import rope_tables
        from qpass.pipeline.verify import default_probe
        g = capture(self.model, default_probe(self.cfg.vocab_size, "meta", seed))
        cos, sin = rope_tables(self.cfg.head_dim, self.cfg.max_seq_len, self.cfg.rope_theta,
                               self.cfg.rope_scaling, device=self.device)
        for name, value in (("rope_cos", cos), ("rope_sin", sin)):
            if hasattr(g.gm, name):
                setattr(g.gm, name, value)
        return g, default_probe(self.cfg.vocab_size, "cpu", seed)

    def before_passes(self, g, quantizes: bool) -> None:
        pass

    def resume(self, pipeline, calib):
        """(completed stage records of an interrupted run of this pipeline, hash-checked;
        the passes' start states it recorded, by pass index). The executor adds this run's
        states to that dict, which every progress record then saves."""
        self.key = run_key(pipeline, self.checkpoint_dir, calib, self.device, self.dtype)
        records, self.shared = load_progress(self.work, self.key)
        if records:                   # read now: an unreadable cache means starting over
            path = self.work / records[-1].cache
            try:
                self.last_cache = load_cache(path)
            except Exception as e:    # weights_only refuses anything but tensors and lists
                ignored(path, f"{type(e).__name__}: {e}")
                records, self.shared = [], {}
        return records, self.shared

    def restore(self, g, stage, record, runner, known: set, last: bool):
        """A stage an earlier run completed: its graph edits, modules and buffers come back
        (on meta); for the last one, the boundary caches the next stage reads."""
        from qpass.pipeline import stage_nodes
        self.resumed = True
        stage.nodes[:] = stage_nodes.restore(g.gm, stage.nodes, record.nodes)
        new = [n for n in stage.nodes if n not in known]
        known.update(new)
        if runner is not None:
            runner.adopt(stage, new)
        restore_attrs(g.gm, self.work, stage, record)
        restore_modules(g.gm, record)
        return self.last_cache if last else None

    # ---- per stage ----------------------------------------------------------------------
    def check_memory(self, g, stage) -> None:
        """One clear error, before reading, when the device cannot hold this stage: its
        weights in the compute dtype, twice (the pass's working copy and the quantized one)."""
        size = torch.finfo(self.dtype or torch.float32).bits // 8
        need = 2 * size * sum(p.numel() for t in stage_modules(stage)
                              for p in g.gm.get_submodule(t).parameters(recurse=False))
        free = available_bytes(self.device)
        if free is not None and need > free:
            from qpass.display.units import fmt_bytes
            raise PipelineError(f"{stage.name} needs about {fmt_bytes(need)} on {self.device}, "
                                f"but only {fmt_bytes(free)} are free; free memory, use a "
                                f"smaller --dtype, or another device")

    def load(self, g, stage) -> None:
        """Read the stage's parameters from the shards onto the device (float32 by default)."""
        from safetensors import safe_open

        from qpass.models.loading import read_tensor
        self.check_memory(g, stage)
        by_file: dict[Path, list[tuple[Any, str, str]]] = {}
        for target in stage_modules(stage):
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
            real = folders.regular_file(f, self.checkpoint_dir, "shard")   # still inside, regular
            with safe_open(str(real), framework="pt") as fh:
                for mod, pname, key in items:
                    t = read_tensor(fh, key, getattr(mod, pname).shape, self.device, self.dtype)
                    mod._parameters[pname] = torch.nn.Parameter(t, requires_grad=False)

    def stage_tensors(self, g, stage) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
        """(tensors to write, their kind records): the stage's modules and the graph buffers
        its nodes read (DuQuant's transform matrices)."""
        from qpass.pipeline.stage_nodes import attr_targets
        from qpass.runtime.tensor_records import tensor_records
        tensors, kinds = tensor_records(g.gm, stage_modules(stage))
        persistent = set(g.gm.state_dict(keep_vars=True))
        for target in attr_targets(g.gm.graph, stage.nodes):
            tensors[target] = _attr(g.gm, target).detach().to("cpu").contiguous()
            kinds[target] = {"kind": "buffer", "persistent": target in persistent}
        return tensors, kinds

    def save(self, g, stage, records, cache, shadows) -> None:
        """Write the stage's shard and the boundary caches, then the progress record."""
        from safetensors.torch import save_file

        from qpass.pipeline import stage_nodes
        from qpass.runtime.graph_io import module_entry
        record = records[-1]
        shard = clear_name(self.work / shard_name(stage.index))   # never written through a link
        tensors, kinds = self.stage_tensors(g, stage)
        written(shard, lambda: save_file(tensors, str(shard), metadata={"format": "qpass-stage"}))
        tensors = None                            # the shard's buffers go before the next stage
        cache_file = clear_name(self.work / cache_name(stage.index))
        saved = {"main": list(cache or []),
                 "shadows": {str(k): list(v) for k, v in (shadows or {}).items()}}
        written(cache_file, lambda: torch.save(saved, cache_file))
        saved = None
        record.shard, record.sha256 = shard.name, sha256_file(shard)
        record.cache, record.cache_sha256 = cache_file.name, sha256_file(cache_file)
        record.modules = {t: module_entry(g.gm.get_submodule(t)) for t in stage_modules(stage)}
        record.kinds, record.nodes = kinds, stage_nodes.record(stage.nodes)
        save_progress(self.work, self.key, self.shared, records)
        if stage.index > 0:                     # the previous cache is not needed again
            prev = clear_name(self.work / cache_name(stage.index - 1))
            prev.touch(exist_ok=False)          # keep the name, drop the bytes

    def free(self, g, stage) -> None:
        """Back to meta: the graph's modules and the built model's (which still holds the
        float module a pass replaced in the graph, with the weights read into it)."""
        from qpass.pipeline.stage_nodes import attr_targets
        for target in stage_modules(stage):
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

    # ---- the result ---------------------------------------------------------------------
    def finish(self, g, pipeline, report, records):
        """Assemble the shards into the compiled checkpoint at `out`; drop the run's state."""
        from safetensors.torch import save_file

        from qpass.pipeline.coverage import check_coverage, coverage
        from qpass.runtime.checkpoint import save_streamed
        from qpass.runtime.compiled import CompiledDenoiser
        from qpass.runtime.graph_io import graph_to_json
        # tensors outside every stage's modules (the RoPE tables) go to one more shard
        owned = {name for r in records for name in r.kinds}
        persistent = set(g.gm.state_dict(keep_vars=True))
        extra = {k: v.detach().to("cpu").contiguous() for k, v in g.gm.named_buffers()
                 if k not in owned and v.device.type != "meta"}
        kinds = {k: {"kind": "buffer", "persistent": k in persistent} for k in extra}
        globals_file = clear_name(self.work / "globals.safetensors")
        save_file(extra, str(globals_file), metadata={"format": "qpass-stage"})
        graph = graph_to_json(g.gm)
        for r in records:
            graph["modules"].update(r.modules)
            kinds.update(r.kinds)
        if pipeline.quantizes:
            report.coverage = coverage(g, pipeline.scheme(), planned=True)
            check_coverage(report.coverage, pipeline.allow_uncovered)
        result = CompiledDenoiser.from_run(g, pipeline, report, graph=graph, tensors=kinds,
                                           streamed=True)
        shards = [self.work / r.shard for r in records] + [globals_file]
        result.path = save_streamed(result.manifest, self.model.tokenizer, shards, self.target)
        result.on_disk_only = True
        self.folder.clear()              # the run is complete: its state goes (close: the folder)
        for name, t in list(g.gm.named_buffers()):         # the result holds no tensors
            owner, _, attr = name.rpartition(".")
            (g.gm.get_submodule(owner) if owner else g.gm)._buffers[attr] = t.to("meta")
        return result


def _attr(gm, target: str) -> torch.Tensor:
    owner, _, name = target.rpartition(".")
    return getattr(gm.get_submodule(owner), name)

"""The sequential runner (DESIGN §5): execute a captured graph block by block.

The graph is split into stages along the discovered structure (`g.blocks()`): a prefix (from
the inputs to block 0's input on the residual stream: the embedding), one stage per block, and
a suffix (final norm + head). For every calibration batch the runner keeps only the values
that cross the current stage boundary (the residual stream, plus anything else a later stage
reads — the placeholders, tables computed once in the prefix, …). The pipeline's executor
(qpass/pipeline/executor.py) walks the stages with it: passes work on a stage over its cached
inputs, then the stage is recomputed and its outputs feed the next one. Peak memory is one
stage's activations plus the cached boundary values, independent of depth; with
`offload_dir` the cache lives on disk.

    runner = SequentialRunner(g, calib, batch_size=8)
    runner.run(callback)     # callback(stage, runner, cache) -> None, once per stage with linears

`runner.run_stage(stage, cache, watch={module target: fn})` executes the stage over every
cached batch and calls fn(input_tensor) with the input of each watched linear (before it
runs); `stop_after=` ends each batch early once that node ran. Any NaN/Inf raises
CalibrationError naming the block and the node that produced it.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch
import torch.fx as fx

from qpass.display import progress as progress_lines
from qpass.errors import CalibrationError
from qpass.ir.structure import BlockInfo, role


@dataclass
class Stage:
    """A contiguous piece of the graph: `nodes` in graph order. `block` is the BlockInfo for
    transformer blocks, None for the prefix and suffix."""
    name: str
    index: int
    nodes: list[fx.Node]
    block: BlockInfo | None = None
    live_out: list[fx.Node] = field(default_factory=list)   # values later stages read

    @property
    def linears(self) -> list[fx.Node]:
        return [n for n in self.nodes if role(n) in ("linear", "head")]


def split_stages(g) -> list[Stage]:
    """Prefix, one stage per discovered block, suffix. Placeholders belong to no stage (every
    stage can read the batch inputs)."""
    graph = g.gm.graph
    blocks = g.blocks()
    owner: dict[fx.Node, int] = {}
    for b in blocks:
        for n in list(b.nodes) + list(b.residual_adds):   # branches exclude their closing adds
            owner[n] = b.index + 1
    prefix_set: set[fx.Node] = set()
    if blocks and blocks[0].input is not None:
        todo = [blocks[0].input]
        while todo:
            n = todo.pop()
            if n in prefix_set or n.op == "placeholder":
                continue
            prefix_set.add(n)
            todo.extend(n.all_input_nodes)
    n_stages = len(blocks) + 2
    stage_nodes: list[list[fx.Node]] = [[] for _ in range(n_stages)]
    stage_of: dict[fx.Node, int] = {}
    for n in graph.nodes:
        if n.op in ("placeholder", "output"):
            continue
        s = owner.get(n, 0 if n in prefix_set else n_stages - 1)
        stage_of[n] = s
        stage_nodes[s].append(n)
    stages = [Stage("prefix", 0, stage_nodes[0])]
    stages += [Stage(f"block {b.index}", b.index + 1, stage_nodes[b.index + 1], b) for b in blocks]
    stages.append(Stage("suffix", n_stages - 1, stage_nodes[-1]))
    for st in stages:
        for n in st.nodes:
            later = [u for u in n.users if u.op == "output" or stage_of.get(u, -1) > st.index]
            if later:
                st.live_out.append(n)
    return stages


class _StageInterpreter(fx.Interpreter):
    """Runs a list of nodes given an environment; checks every tensor it produces."""

    def __init__(self, gm: fx.GraphModule, stage: Stage):
        super().__init__(gm, garbage_collect_values=False)
        self.stage = stage
        self.watch: dict[str, Callable] = {}

    def call_module(self, target, args, kwargs):
        fn = self.watch.get(target)
        if fn is not None:
            fn(args[0])
        return super().call_module(target, args, kwargs)

    def execute(self, env: dict, stop_after: str | None = None, check_each: bool = False) -> dict:
        """Run the stage's nodes. NaN/Inf are checked cheaply on the values leaving the stage;
        only when one is found is the batch re-run node by node to name the culprit."""
        start = dict(env) if not check_each else None
        self.env = env
        last = None
        for n in self.stage.nodes:
            out = self.run_node(n)
            if check_each:
                _check_finite(out, self.stage, n)
            env[n] = last = out
            if stop_after is not None and n.name == stop_after:
                break
        if not check_each:
            tail = [env[n] for n in self.stage.live_out if n in env] + [last]
            if any(_nonfinite(v) for v in tail):
                self.execute(start, stop_after, check_each=True)
        return env


def _nonfinite(value: Any) -> bool:
    if not (isinstance(value, torch.Tensor) and value.is_floating_point()):
        return False
    # one reduction is cheap; a finite sum proves there is no NaN/Inf (overflow -> full check)
    return not bool(torch.isfinite(value.sum())) and not bool(torch.isfinite(value).all())


def _check_finite(value: Any, stage: Stage, node: fx.Node) -> None:
    if _nonfinite(value):
        raise CalibrationError(f"NaN/Inf activation in {stage.name} at node {node.name!r} "
                               f"({node.op} {node.target}): the calibration data or an earlier "
                               f"quantization step overflowed; check the inputs, use float32, "
                               f"or quantize less aggressively")


class BoundaryCache:
    """Per-batch values crossing a stage boundary: in memory, or one torch.save file per batch
    under `offload_dir` (we only ever load tensors we wrote, with weights_only=True)."""

    def __init__(self, offload_dir: str | None = None):
        self.offload_dir = offload_dir
        self._items: list[Any] = []

    def append(self, values: dict[str, Any]) -> None:
        if self.offload_dir is None:
            self._items.append(values)
            return
        path = os.path.join(self.offload_dir, f"batch_{len(self._items):05d}.pt")
        torch.save(values, path)
        self._items.append(path)

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for item in self._items:
            yield item if self.offload_dir is None else torch.load(item, weights_only=True)

    def clear(self) -> None:
        if self.offload_dir is not None:
            for p in self._items:
                if os.path.exists(p):
                    os.remove(p)
            if os.path.isdir(self.offload_dir) and not os.listdir(self.offload_dir):
                os.rmdir(self.offload_dir)
        self._items = []


class SequentialRunner:
    """Block-by-block execution of `g` over a CalibrationSet (see the module docstring)."""

    def __init__(self, g, calib, batch_size: int = 8, offload_dir: str | None = None,
                 device=None, progress=None):
        if calib is None or len(calib) == 0:
            raise CalibrationError("the sequential runner needs calibration data "
                                   "(a non-empty qpass.calibration.CalibrationSet)")
        self.g, self.calib, self.batch_size = g, calib, batch_size
        self.offload_dir = offload_dir
        self.device = device if device is not None else _graph_device(g.gm)
        self.progress = progress            # unused: run() reports through qpass.display.progress
        self.stages = split_stages(g)
        self.placeholders = [n for n in g.gm.graph.nodes if n.op == "placeholder"]
        self.output_node = next(n for n in g.gm.graph.nodes if n.op == "output")
        self._by_name = {n.name: n for n in g.gm.graph.nodes}
        # nodes run after each stage: a cached value stays while one of them reads it
        self._later = [{n for st in self.stages[i + 1:] for n in st.nodes} | {self.output_node}
                       for i in range(len(self.stages))]

    # ---- per-batch environments -----------------------------------------------------
    def _batch_env(self, batch: tuple) -> dict[fx.Node, Any]:
        env: dict[fx.Node, Any] = {}
        for i, ph in enumerate(self.placeholders):
            if i < len(batch):
                env[ph] = batch[i].to(self.device)
            else:   # an optional input the batch does not give (attention_mask=None)
                env[ph] = ph.args[0] if ph.args else None
        return env

    def _to_env(self, values: dict[str, Any], batch: tuple) -> dict[fx.Node, Any]:
        env = self._batch_env(batch)
        for name, v in values.items():
            env[self._by_name[name]] = v.to(self.device) if isinstance(v, torch.Tensor) else v
        return env

    def batches(self) -> list[tuple]:
        """The model-input tuples of the data set, in the order the caches hold them."""
        from .stats import iter_batches      # a CalibrationSet, or batches given as they are
        return list(iter_batches(self.calib, self.batch_size))

    def adopt(self, stage: Stage, new: list[fx.Node]) -> None:
        """Nodes a pass inserted into `stage` (qpass.pipeline.stage_nodes.adopt): the runner
        finds them by name and keeps the cached values they read while they are read."""
        for n in new:
            self._by_name[n.name] = n
        for later in self._later[:stage.index]:
            later.update(new)

    def new_cache(self, tag: str) -> BoundaryCache:
        if self.offload_dir is None:
            return BoundaryCache()
        d = tempfile.mkdtemp(prefix=f"{tag}_", dir=self.offload_dir)
        return BoundaryCache(d)

    # ---- execution ------------------------------------------------------------------
    def run_stage(self, stage: Stage, cache: BoundaryCache, watch: dict | None = None,
                  stop_after: str | None = None, collect: BoundaryCache | None = None,
                  keep: list[fx.Node] | None = None, trace: dict | None = None) -> None:
        """Execute `stage` on every cached batch. watch: {module target: fn(input)};
        collect: a cache receiving the values in `keep` (default: stage.live_out plus the
        still-live inputs) after each batch; trace: filled with {node name: tensor output}
        of the first batch (what a failed exactness check compares node by node)."""
        interp = _StageInterpreter(self.g.gm, stage)
        interp.watch = watch or {}
        for i, (values, batch) in enumerate(zip(cache, self.batches())):
            env = interp.execute(self._to_env(values, batch), stop_after)
            if trace is not None and i == 0:
                trace.update({n.name: env[n].detach() for n in stage.nodes
                              if isinstance(env.get(n), torch.Tensor)})
            if collect is not None:
                collect.append(self._carry(stage, env, values, keep))

    def execute(self, stage: Stage, values: dict[str, Any], batch: tuple) -> dict[fx.Node, Any]:
        """Run `stage` on one cached batch (its cached `values`, its model-input `batch`) and
        return the environment {node: value}; autograd records it when grad is enabled
        (LearnedAffine trains a stage's transforms through it)."""
        return _StageInterpreter(self.g.gm, stage).execute(self._to_env(values, batch))

    def _carry(self, stage: Stage, env, values: dict, keep) -> dict[str, Any]:
        """Values the next stages need: this stage's live-out plus earlier values still read."""
        out: dict[str, Any] = {}
        later = self._later[stage.index]
        for name, v in values.items():
            if any(u in later for u in self._by_name[name].users):
                out[name] = v
        for n in (keep if keep is not None else stage.live_out):
            v = env[n]
            out[n.name] = v.detach() if isinstance(v, torch.Tensor) else v
        return out

    def run(self, callback: Callable | None = None, keep_outputs: bool = False,
            description: str = "sequential") -> list[Any] | None:
        """Walk all stages: per stage with linears call callback(stage, self, cache), then
        recompute its outputs with the (possibly replaced) modules and move on. Returns the
        graph outputs per batch when keep_outputs, else None."""
        cache = self.new_cache("input")
        for batch in self.batches():
            cache.append({})
        outputs = None
        task = progress_lines.begin(description, total=len(self.stages), unit="stages")
        try:
            for stage in self.stages:
                task.describe(stage.name)
                if callback is not None and stage.linears:
                    callback(stage, self, cache)
                is_last = stage is self.stages[-1]
                if not is_last or keep_outputs:   # nothing reads the suffix's outputs otherwise
                    keep = list(self.output_node.all_input_nodes) if is_last else None
                    nxt = self.new_cache(f"stage{stage.index}")
                    try:
                        self.run_stage(stage, cache, collect=nxt, keep=keep)
                    except BaseException:
                        nxt.clear()
                        raise
                    cache.clear()
                    cache = nxt
                task.advance()
            if keep_outputs:
                outputs = [self._output_value(values) for values in cache]
            task.close()
        finally:
            task.close(ok=False)                  # (closed above unless this raised)
            cache.clear()
        return outputs

    def _output_value(self, values: dict[str, Any]):
        by_name = {n: values[n.name] for n in self.output_node.all_input_nodes}
        return fx.graph.map_arg(self.output_node.args[0], lambda n: by_name[n])


def _graph_device(gm: fx.GraphModule) -> torch.device:
    for t in list(gm.parameters()) + list(gm.buffers()):
        return t.device
    return torch.device("cpu")

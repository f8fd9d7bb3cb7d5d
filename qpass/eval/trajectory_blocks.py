"""Block variants of a quantization pipeline, for the per-block attribution of trajectory error.

A variant is the same pipeline run with a scheme override that keeps some transformer blocks
in high precision: every other pass (fusion, rotation, smoothing) still runs everywhere, so a
rotated model stays rotated and the variant differs from the full one only in which blocks'
linears (and attention, when the scheme quantizes it) are rounded. Blocks, and the nodes in
them, are found in the captured graph (QGraph.blocks), not from module names.

mode "quantize-one" (the default): variant b quantizes ONLY block b. Scored on the FP
canvases, its error is block b's own, measured on the FP inputs the block sees in the
reference trajectory, and free of the compounding of other blocks' errors, so the blocks can
be ranked directly. mode "restore-one": variant b quantizes every block BUT b; the error it
removes includes b's interactions with the other quantized blocks (what fixing b would buy)."""
from __future__ import annotations

import glob
from dataclasses import replace

import torch

from ..display import progress as progress_lines
from ..errors import QpassError
from ..ir import capture
from ..ir.structure import role
from ..pipeline import Pipeline
from ..specs import Scheme

MODES = ("quantize-one", "restore-one")


def block_node_names(model, example_len: int = 8) -> list[list[str]]:
    """Per transformer block (graph order): the names a Scheme override matches for its
    quantizable nodes — linear module targets and attention node names."""
    vocab = int(model.config.vocab_size)
    g = capture(model, (torch.zeros(1, example_len, dtype=torch.long) % vocab,))
    out = []
    for blk in g.blocks():
        names = [str(n.target) for n in blk.nodes if role(n) == "linear"]
        names += [str(n.name) for n in blk.nodes if role(n) == "attention"]
        out.append(names)
    if not out:
        raise QpassError("no transformer blocks were found in the model's graph; per-block "
                         "attribution needs the repeated-block structure")
    return out


def _keep_high_precision(scheme: Scheme, names: list[str]) -> Scheme:
    extra = tuple((glob.escape(n), None) for n in names)
    return replace(scheme, overrides=tuple(scheme.overrides) + extra)


def with_blocks_kept(pipeline: Pipeline, names: list[str]) -> Pipeline:
    """A copy of `pipeline` whose every scheme keeps the nodes `names` in high precision."""
    passes = []
    for p in pipeline.passes:
        attr = getattr(p, "SCHEME_FIELD", None)         # SchemedPass: the field its scheme is in
        value = getattr(p, attr, None) if attr else None
        if isinstance(value, Scheme):
            p = replace(p, **{attr: _keep_high_precision(value, names)})
        passes.append(p)
    scheme = pipeline.scheme_given
    return Pipeline(passes, scheme=None if scheme is None else _keep_high_precision(scheme, names),
                    verify=pipeline.verify, allow_uncovered=pipeline.allow_uncovered,
                    initial_facts=pipeline.initial_facts)


def block_variants(fp_model, make_pipeline, calib=None, mode: str = "quantize-one",
                   seed: int = 0, blocks: list[int] | None = None) -> dict[int, object]:
    """{block index: compiled variant} of the pipeline `make_pipeline()` returns (a fresh
    Pipeline per call: passes hold state) for mode "quantize-one" or "restore-one"."""
    if mode not in MODES:
        raise QpassError(f"attribution mode must be one of {MODES}, got {mode!r}")
    per_block = block_node_names(fp_model)
    chosen = range(len(per_block)) if blocks is None else blocks
    for b in chosen:
        if not 0 <= b < len(per_block):
            raise QpassError(f"block {b} does not exist: the model has {len(per_block)} blocks")
    out = {}
    with progress_lines.phase(f"attribution ({mode})", total=len(chosen),
                              unit="variants") as shown:
        for b in chosen:
            shown.describe(f"block {b}")
            if mode == "quantize-one":
                kept = [n for i, names in enumerate(per_block) if i != b for n in names]
            else:
                kept = per_block[b]
            pipe = with_blocks_kept(make_pipeline(), kept)
            out[b] = pipe.run(fp_model, calib, verify=False, progress=None, seed=seed)
            shown.advance()
    return out

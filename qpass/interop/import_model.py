"""What every importer builds: a CompiledDenoiser whose QuantLinear modules hold a foreign
checkpoint's integer codes and scales as they are (qpass's unsigned codes u, zero points z,
float32 scales: w = (u − z)·s, docs/FORMATS.md), every other tensor as a float parameter of
the reference Denoiser, under the model's generic names (blocks.3.q_proj, head, …).

The graph is traced from the Denoiser of the imported config, then rebuilt through the
compiled-checkpoint reader's own validation (graph_to_json → build_graph_module: every tensor
checked against its module and spec), so an imported model is exactly what load_compiled of a
saved one gives, and `.save(DIR)` writes an ordinary compiled checkpoint."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from qpass.errors import CheckpointError, SpecError
from qpass.formats import QuantizedWeight, packed_cols, unpack
from qpass.ir.capture import trace
from qpass.ir.qlinear import QuantLinear
from qpass.models.loading import build
from qpass.models.naming import key_map
from qpass.runtime.compiled import CompiledDenoiser
from qpass.runtime.graph_io import build_graph_module, graph_to_json
from qpass.runtime.manifest import library_versions
from qpass.runtime.report import CoverageRow, Report
from qpass.runtime.tensor_records import tensor_records
from qpass.specs import QuantSpec
from qpass.specs.quant_spec import GRIDS


@dataclass
class ImportedLinear:
    name: str                        # generic module name: "blocks.0.q_proj", "head"
    codes: torch.Tensor              # uint8 (N, K), unsigned codes u
    scales: torch.Tensor             # float32 (N, G); (N, 1) per channel; (1, 1) per tensor
    spec: QuantSpec
    act_spec: QuantSpec | None = None
    zeros: torch.Tensor | None = None        # int32 like scales, asymmetric specs only
    bias: torch.Tensor | None = None
    act_scale: torch.Tensor | None = None    # static activation scale (1, 1), if any
    source: str = ""                         # the file's name for it, for messages
    global_scale: torch.Tensor | None = None     # nvfp4's float32 global scale (1,)
    # K-quants: `scales` / `zeros` the sub-block scale / min codes, this the float16-valued
    # super-block scales (N, K/256, 1|2) (qpass/formats/kquant.py)
    super_scale: torch.Tensor | None = None


def linear_shapes(cfg) -> dict[str, tuple[int, int]]:
    """{generic linear name: (out, in)} of the config's model."""
    hd = cfg.head_dim
    per = {"q_proj": (cfg.n_heads * hd, cfg.d_model), "k_proj": (cfg.n_kv_heads * hd, cfg.d_model),
           "v_proj": (cfg.n_kv_heads * hd, cfg.d_model), "o_proj": (cfg.d_model, cfg.n_heads * hd),
           "gate_proj": (cfg.mlp_hidden, cfg.d_model), "up_proj": (cfg.mlp_hidden, cfg.d_model),
           "down_proj": (cfg.d_model, cfg.mlp_hidden)}
    out = {f"blocks.{i}.{p}": s for i in range(cfg.n_layers) for p, s in per.items()}
    out["head"] = (cfg.vocab_size, cfg.d_model)
    return out


def stream_codes(packed: torch.Tensor, bits: int, K: int, where: str) -> torch.Tensor:
    """Unsigned codes (rows, K) of compressed-tensors' packed words (rows, ceil(K·b/32))."""
    words = -(-K * bits // 32)
    if packed.dtype != torch.int32 or packed.dim() != 2 or packed.shape[1] != words:
        raise CheckpointError(f"{where}: expected int32 (rows, {words}) packed {bits}-bit codes "
                              f"of {K} values, found {packed.dtype} {tuple(packed.shape)}")
    full = F.pad(packed, (0, packed_cols(K, bits) - words))
    return unpack(full.contiguous(), bits, K)


def weight_grid(scales: torch.Tensor, symmetric: bool, where: str) -> str:
    """The spec grid that holds these scales: "full" (any symmetric or asymmetric grid
    dequantizes alike), or "signed" when a symmetric weight has negative scales (llama.cpp's
    Q4_0 choice, qpass's `signed` grid)."""
    if not bool((scales < 0).any()):
        return "full"
    if symmetric and "signed" in GRIDS:
        return "signed"
    raise CheckpointError(f"{where}: negative weight scales{'' if symmetric else ' with zero points'}"
                          f"; qpass holds negative scales only on its signed symmetric grid")


def quant_linear(q: ImportedLinear) -> QuantLinear:
    """The QuantLinear holding `q`'s codes and scales exactly (packed by qpass.formats)."""
    N, K = q.codes.shape
    m = QuantLinear(K, N, q.spec, q.act_spec, bias=q.bias is not None)
    try:
        m.set_qweight(QuantizedWeight.from_codes(q.codes, q.scales, q.zeros, q.spec,
                                                 q.global_scale, q.super_scale))
    except SpecError as e:
        raise CheckpointError(f"{q.source or q.name}: {e}") from None
    if q.bias is not None:
        m.bias = nn.Parameter(q.bias.detach().float().clone())
    if q.act_scale is not None:
        m.act_scale = q.act_scale.float().reshape(1, 1)
        m.act_zero = torch.full((1, 1), 1 << (q.act_spec.bits - 1), dtype=torch.int32)
    return m


def _coverage(cfg, linears: dict[str, ImportedLinear], fmt: str) -> list[CoverageRow]:
    rows = []
    names = [f"blocks.{i}.{p}" for i in range(cfg.n_layers)
             for p in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                       "down_proj")] + ["head"]
    for n in names:
        role = "head" if n == "head" else "linear"
        q = linears.get(n)
        if q is not None:
            rows.append(CoverageRow(n, role, "quantized", str(q.spec),
                                    None if q.act_spec is None else str(q.act_spec),
                                    f"imported from {fmt} ({q.source})"))
        else:
            why = "the head is the embedding (tied)" if n == "head" and cfg.tie_embeddings \
                else f"the {fmt} file stores it in float"
            rows.append(CoverageRow(n, role, "kept", None, None, why))
    return rows


def build_imported(cfg, linears: list[ImportedLinear], dense: dict[str, torch.Tensor],
                   tokenizer, fmt: str, path: Path, details: dict | None = None
                   ) -> CompiledDenoiser:
    """The CompiledDenoiser of config `cfg` with `linears` quantized and every other parameter
    from `dense` ({generic parameter name: float tensor}); CheckpointError naming what is
    missing or does not fit."""
    by_name = {q.name: q for q in linears}
    expected = set(key_map(cfg).values())
    if cfg.tie_embeddings:
        expected.discard("head.weight")
    have = set(dense) | {f"{n}.weight" for n in by_name} | \
        {f"{n}.bias" for n, q in by_name.items() if q.bias is not None}
    missing = sorted(expected - have)
    extra = sorted(have - expected - ({"head.weight"} if cfg.tie_embeddings else set()))
    if missing or extra:
        parts = ([f"missing {len(missing)}: {', '.join(missing[:6])}"] if missing else []) + \
                ([f"unexpected {len(extra)}: {', '.join(extra[:6])}"] if extra else [])
        raise CheckpointError(f"{path}: the {fmt} checkpoint's tensors do not make a "
                              f"{cfg.family} model of its config ({'; '.join(parts)})")
    model = build(cfg, device="meta")
    for name, q in by_name.items():
        lin = model.get_submodule(name)
        if tuple(q.codes.shape) != (lin.out_features, lin.in_features):
            raise CheckpointError(f"{path}: {q.source or name} is {tuple(q.codes.shape)} "
                                  f"(out, in); the config makes it "
                                  f"{(lin.out_features, lin.in_features)}")
        if (q.bias is not None) != (lin.bias is not None):
            raise CheckpointError(f"{path}: {q.source or name} {'has' if q.bias is not None else 'lacks'} "
                                  f"a bias; the config says the opposite")
        owner, _, attr = name.rpartition(".")
        setattr(model.get_submodule(owner) if owner else model, attr, quant_linear(q))
    params = dict(model.named_parameters(remove_duplicate=False))
    state = {}
    for k, t in dense.items():
        if k not in params:
            continue          # a tied head's own copy
        if tuple(t.shape) != tuple(params[k].shape):
            raise CheckpointError(f"{path}: tensor for {k} has shape {tuple(t.shape)}; the "
                                  f"config makes it {tuple(params[k].shape)}")
        if not torch.isfinite(t).all():
            raise CheckpointError(f"{path}: tensor for {k} holds NaN or Inf values")
        state[k] = t.detach().to(torch.float32)
    model.load_state_dict(state, strict=False, assign=True)
    if cfg.tie_embeddings and isinstance(model.head, nn.Linear):
        model.head.weight = model.embed.weight
    model._build_rope()
    model.tokenizer = tokenizer
    meta = [n for n, t in list(model.named_parameters()) + list(model.named_buffers())
            if t.device.type == "meta"]
    if meta:
        raise CheckpointError(f"{path}: the {fmt} checkpoint gives no tensor for {meta[:4]}")
    gm = trace(model)
    # through the compiled checkpoint's own reader: every tensor checked against its module
    store, kinds = tensor_records(gm)
    gm = build_graph_module(graph_to_json(gm), store, kinds, cfg)
    report = Report(coverage=_coverage(cfg, by_name, fmt))
    manifest = {"config": cfg.to_dict(), "pipeline": [], "pipeline_scheme": None,
                "versions": library_versions(), "report": report.to_dict(specs=False),
                "imported": {"format": fmt, "source": str(path), **(details or {})}}
    return CompiledDenoiser(gm, cfg, tokenizer, manifest, path=path)

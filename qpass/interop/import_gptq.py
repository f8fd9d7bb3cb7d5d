"""Import a GPTQ checkpoint (AutoGPTQ / GPTQModel `checkpoint_format: gptq`, also `gptq_v2`;
what qpass's own GPTQ export writes) of the LLaMA, LLaDA or Dream layout as a CompiledDenoiser
holding its codes and scales as they are.

Per quantized linear: `qweight` int32 (K·b/32, N) — codes packed along K, lowest bits first,
i.e. qpass's packing transposed; `qzeros` int32 (G, N·b/32) packed along N, holding zero − 1
in the v1 format (zero itself in v2); `scales` (G, N); `g_idx` (K,); `bias`. The weight is
s·(q − z) with q the unsigned code: qpass's (u − z)·s, so codes and zero points are copied and
float16 scales become float32 exactly. `sym: true` needs every zero at 2^(b−1) (a symmetric
qpass spec); `sym: false` gives an asymmetric spec with the file's zero points.

Refused, with one CheckpointError each: act-order checkpoints whose g_idx is not k // group
size (desc_act with permuted groups: a scale group's columns are scattered along K, which
qpass's contiguous groups cannot hold without a run-time column gather — refused rather than
approximated; `static_groups: true` act-order checkpoints have in-order g_idx and import),
bits other than 2/4/8 (3-bit GPTQ packs across words differently), v1 zero points that wrap to
2^b (a stored 2^b − 1: engines read zero 2^b, outside qpass's b-bit zero points), group sizes
that do not divide K, GPTQModel `dynamic` per-module overrides and repacked kernel formats
(marlin, bitblas, …)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from qpass.errors import CheckpointError
from qpass.interop.import_hf import (check_all_used, check_group_order, float_tensor,
                                     model_parts, scales32)
from qpass.interop.import_model import (ImportedLinear, build_imported, linear_shapes,
                                        stream_codes, weight_grid)
from qpass.specs import QuantSpec

FORMAT = "gptq"
BITS = (2, 4, 8)
ZERO_OFFSET = {"gptq": 1, "gptq_v2": 0}     # stored zero = zero − offset


def _settings(qc: dict, path: Path) -> tuple[int, int, bool, int]:
    """(bits, group size or -1, symmetric, zero offset) of quantization_config `qc`."""
    fmt = qc.get("checkpoint_format", qc.get("format", "gptq"))
    if fmt not in ZERO_OFFSET:
        raise CheckpointError(f"{path}: GPTQ checkpoint_format {fmt!r}; qpass imports the "
                              f"portable layouts {', '.join(ZERO_OFFSET)} (a kernel-repacked "
                              f"format such as marlin is read by its kernel only)")
    if qc.get("dynamic"):
        raise CheckpointError(f"{path}: GPTQModel `dynamic` per-module overrides are not "
                              f"imported; export the model with one bit width and group size")
    bits, group = qc.get("bits"), qc.get("group_size", -1)
    if bits not in BITS:
        raise CheckpointError(f"{path}: {bits!r}-bit GPTQ; qpass imports 2, 4 and 8 bits (3-bit "
                              f"GPTQ packs codes across words in its own order)")
    if not isinstance(group, int) or (group <= 0 and group != -1):
        raise CheckpointError(f"{path}: GPTQ group_size {group!r} is not a positive size or -1")
    return bits, group, bool(qc.get("sym", True)), ZERO_OFFSET[fmt]


def import_linear(T, mod: str, gen: str, N: int, K: int, bits: int, group: int, sym: bool,
                  offset: int, path: Path) -> ImportedLinear:
    where = f"{path}: {mod}"
    g = K if group == -1 else group
    if K % g:
        raise CheckpointError(f"{where}: group size {g} does not divide in_features {K}; "
                              f"qpass's groups split K evenly")
    per = 32 // bits
    if K % per or N % per:
        raise CheckpointError(f"{where}: ({N}, {K}) does not pack into whole int32 words of "
                              f"{per} {bits}-bit codes")
    G = K // g
    qweight = T.take(f"{mod}.qweight")
    if qweight.dtype != torch.int32 or tuple(qweight.shape) != (K // per, N):
        raise CheckpointError(f"{where}: qweight is {qweight.dtype} {tuple(qweight.shape)}; a "
                              f"{bits}-bit ({N}, {K}) weight has int32 {(K // per, N)}")
    codes = stream_codes(qweight.t().contiguous(), bits, K, where + " qweight")
    qzeros = T.take(f"{mod}.qzeros", "the zero points")
    if qzeros.dtype != torch.int32 or tuple(qzeros.shape) != (G, N // per):
        raise CheckpointError(f"{where}: qzeros is {qzeros.dtype} {tuple(qzeros.shape)}; "
                              f"expected int32 {(G, N // per)}")
    z = stream_codes(qzeros, bits, N, where + " qzeros").to(torch.int32).t() + offset   # (N, G)
    half, top = 1 << (bits - 1), 1 << bits
    if sym and not bool((z == half).all()):
        raise CheckpointError(f"{where}: sym is true but its zero points are not all "
                              f"{half}; the checkpoint contradicts its config")
    if bool((z >= top).any()):
        raise CheckpointError(f"{where}: a stored zero point of {top - 1} reads as {top} in the "
                              f"GPTQ v1 format (zero − 1 wrapped); qpass's zero points are "
                              f"{bits}-bit codes 0..{top - 1}, so this weight cannot be held "
                              f"exactly")
    s = T.take(f"{mod}.scales", "the scales")
    if tuple(s.shape) != (G, N):
        raise CheckpointError(f"{where}: scales are {tuple(s.shape)}; expected {(G, N)}")
    spec = QuantSpec(bits, symmetric=sym, granularity="channel" if G == 1 and group == -1
                     else "group", group_size=None if G == 1 and group == -1 else g,
                     scale_dtype="float16" if s.dtype == torch.float16 else "float32")
    scales = scales32(s, where + " scales").t().contiguous()
    spec = dataclasses.replace(spec, grid=weight_grid(scales, sym, where))
    check_group_order(T, f"{mod}.g_idx", K, g, where, "Re-quantize with desc_act=false or "
                      "static_groups=true (desc_act)")
    bias = float_tensor(T, f"{mod}.bias") if f"{mod}.bias" in T else None
    return ImportedLinear(gen, codes, scales, spec, None, None if sym else z.contiguous(), bias,
                          source=f"{mod} (qweight)")


def load_gptq(path, qc: dict):
    """A CompiledDenoiser of the GPTQ folder `path` (its quantization_config `qc`)."""
    path = Path(path)
    bits, group, sym, offset = _settings(qc, path)
    cfg, tokenizer, T, modules, hf_to_gen = model_parts(path)
    shapes = linear_shapes(cfg)
    linears = []
    for mod, gen in modules.items():
        if f"{mod}.qweight" in T:
            N, K = shapes[gen]
            linears.append(import_linear(T, mod, gen, N, K, bits, group, sym, offset, path))
    if not linears:
        raise CheckpointError(f"{path}: the GPTQ checkpoint holds no qweight of any linear of "
                              f"its {cfg.family} layout")
    quantized = {q.name for q in linears}
    dense = {gen: float_tensor(T, key) for key, gen in hf_to_gen.items()
             if gen.rpartition(".")[0] not in quantized}
    check_all_used(T, cfg, FORMAT)
    return build_imported(cfg, linears, dense, tokenizer, FORMAT, path,
                          {"bits": bits, "group_size": group, "sym": sym,
                           "checkpoint_format": qc.get("checkpoint_format", "gptq")})

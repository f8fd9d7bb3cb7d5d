"""Import a compressed-tensors checkpoint (what llm-compressor and qpass's own exporter write,
format version 0.20) of the LLaMA, LLaDA or Dream layout as a CompiledDenoiser holding its
integer codes and scales as they are.

Integer weights in the two layouts docs/INTEROP.md describes for the export:
  pack-quantized   .weight_packed int32 (N, ceil(K·b/32)): unsigned codes u = q + 2^(b−1),
                   one little-endian bit stream along K — qpass's packing, cut to the words
                   used; .weight_scale; .weight_shape; asymmetric .weight_zero_point packed
                   along N (per-tensor: int8, unpacked)
  int-/naive-quantized  .weight int8 (N, K) signed q; .weight_scale; asymmetric int8 zero
                   points
Both dequantize as (q − zp)·s = (u − z)·s with u = q + 2^(b−1), z = zp + 2^(b−1): qpass's
convention term for term, so the codes are copied and the scales (float16/bfloat16/float32)
become float32 exactly. Activations: per-token dynamic (W8A8 as llm-compressor writes it),
per-tensor dynamic, or static per-tensor with .input_scale — all symmetric, which compressed-
tensors quantizes on the same full grid as qpass (s = absmax/((2^b − 1)/2), round half to even).

Floating-point weights (FP8, NVFP4, MXFP4, MXFP8): import_ct_float.py.

Which config group a module belongs to follows compressed-tensors' own matching (exact names,
then `re:` patterns in sorted order, then class names such as `Linear`; `ignore` wins).
Refused, each with one CheckpointError naming the module and why: MXFP6, other fp4
activation layouts, non-square FP8 blocks, integer block or tensor-group strategies, act-order groups
(weight_g_idx not k // group size), group sizes that do not divide K, asymmetric or non-int
activations, output activation or KV-cache quantization, transforms (QuIP/SpinQuant online
rotations), sparsity, and checkpoints whose quantization_status is not `compressed`."""
from __future__ import annotations

import dataclasses
import re
from collections import OrderedDict
from pathlib import Path

import torch

from qpass.errors import CheckpointError
from qpass.interop.import_hf import (check_all_used, check_group_order, float_tensor,
                                     model_parts, scales32)
from qpass.interop.import_model import (ImportedLinear, build_imported, linear_shapes,
                                        stream_codes, weight_grid)
from qpass.interop.import_ct_float import import_float_linear, refuse as _refuse
from qpass.specs import QuantSpec

FORMAT = "compressed-tensors"
_INT_FORMATS = ("pack-quantized", "int-quantized", "naive-quantized")
_FLOAT_FORMATS = ("float-quantized", "nvfp4-pack-quantized", "mxfp4-pack-quantized",
                  "mxfp8-quantized")
_STRATEGIES = ("group", "channel", "tensor")


def check_config(qc: dict, path: Path) -> None:
    """The model-wide parts of quantization_config qpass can hold (everything else refused)."""
    status = qc.get("quantization_status", "compressed")
    if status != "compressed":
        raise _refuse(path, "the model", f"quantization_status is {status!r}: the weights are "
                      f"stored in float beside their quantization parameters; qpass imports "
                      f"compressed checkpoints (llm-compressor's save_compressed=True) whose "
                      f"codes it can keep without rounding anything itself")
    if qc.get("kv_cache_scheme"):
        raise _refuse(path, "the model", "it quantizes the KV cache (kv_cache_scheme), which "
                      "qpass computes differently (its kv<bits> specs); re-quantize without it")
    if qc.get("transform_config"):
        raise _refuse(path, "the model", "it applies online transforms (transform_config: "
                      "QuIP/SpinQuant rotations) that qpass's graph would not run")
    sp = qc.get("sparsity_config")
    if sp and (sp.get("format", "dense") != "dense" or sp.get("sparsity_structure")):
        raise _refuse(path, "the model", f"it is sparse-compressed ({sp.get('format')}); qpass "
                      f"imports dense quantized weights only")
    if not isinstance(qc.get("config_groups"), dict) or not qc["config_groups"]:
        raise _refuse(path, "the model", "quantization_config has no config_groups")


def targets_map(qc: dict) -> "OrderedDict[str, dict]":
    """{target: scheme} as compressed-tensors builds it (a later group's target replaces an
    earlier one's)."""
    out: OrderedDict[str, dict] = OrderedDict()
    for g in qc["config_groups"].values():
        if not isinstance(g, dict):
            raise CheckpointError("quantization_config.config_groups holds a non-object group")
        for t in g.get("targets") or []:
            out[str(t)] = g
    return out


def _name_match(name: str, target: str) -> bool:
    if target.startswith("re:"):
        return re.match(target[3:], name) is not None
    return target == name


def scheme_for(name: str, targets: "OrderedDict[str, dict]", ignore) -> dict | None:
    """The scheme compressed-tensors applies to the nn.Linear `name` (None: not quantized)."""
    if any(_name_match(name, t) or t == "Linear" for t in ignore or []):
        return None
    order = sorted(targets, key=lambda x: ("re:" in x, x))
    matched = [t for t in order if _name_match(name, t)] + \
              [t for t in order if t == "Linear" and not _name_match(name, t)]
    return targets[matched[0]] if matched else None


def weight_spec(args: dict, K: int, where: str, path: Path, float16: bool) -> QuantSpec:
    if not isinstance(args, dict):
        raise _refuse(path, where, "its scheme has no weight quantization")
    if args.get("type", "int") != "int":
        raise _refuse(path, where, f"its weights are {args.get('type')!r}-quantized "
                      f"({args.get('num_bits')} bits); this importer holds integer codes "
                      f"(FP8/NVFP4/MXFP4 import belongs to the floating-point grids)")
    strategy = args.get("strategy")
    if strategy not in _STRATEGIES:
        raise _refuse(path, where, f"weight strategy {strategy!r}; qpass holds group, channel "
                      f"and tensor scales")
    if args.get("dynamic"):
        raise _refuse(path, where, "its weights are quantized dynamically")
    bits, g = args.get("num_bits"), args.get("group_size")
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise _refuse(path, where, f"num_bits {bits!r}; qpass holds 1..8-bit integer codes")
    if strategy == "group" and (not isinstance(g, int) or g <= 0 or K % g):
        raise _refuse(path, where, f"group size {g!r} does not divide in_features {K}: the "
                      f"last group is partial, and qpass's groups split K evenly")
    return QuantSpec(bits, symmetric=bool(args.get("symmetric", True)), granularity=strategy,
                     group_size=g if strategy == "group" else None,
                     scale_dtype="float16" if float16 else "float32")


def act_spec(args, where: str, path: Path) -> QuantSpec | None:
    if not args:
        return None
    why = None
    if args.get("type", "int") != "int":
        why = f"{args.get('type')!r} activations (qpass quantizes activations to integers)"
    elif not args.get("symmetric", True):
        why = "asymmetric activations (compressed-tensors' zero points per token are not qpass's)"
    elif args.get("num_bits") not in (4, 8):
        why = f"{args.get('num_bits')}-bit activations (qpass: 4 or 8)"
    elif (args.get("strategy"), bool(args.get("dynamic"))) not in (
            ("token", True), ("tensor", True), ("tensor", False)):
        why = (f"{'dynamic' if args.get('dynamic') else 'static'} {args.get('strategy')} "
               f"activation scales (qpass: per-token dynamic, per-tensor dynamic or static)")
    if why:
        raise _refuse(path, where, why)
    return QuantSpec(args["num_bits"], granularity=args["strategy"],
                     dynamic=bool(args.get("dynamic")))


def _shape_of(T, mod: str, N: int, K: int, where: str) -> None:
    key = f"{mod}.weight_shape"
    if key not in T:
        return
    shape = T.take(key)
    if shape.numel() != 2 or [int(x) for x in shape.flatten()] != [N, K]:
        raise CheckpointError(f"{where}: weight_shape {shape.tolist()} is not the config's "
                              f"({N}, {K})")


def _scales(t: torch.Tensor, spec: QuantSpec, N: int, K: int, where: str) -> torch.Tensor:
    s = scales32(t, where)
    want = {"tensor": (1, 1), "channel": (N, 1)}.get(spec.granularity)
    if spec.granularity == "group":
        want = (N, K // spec.group_size)
    if s.numel() != want[0] * want[1] or (s.dim() == 2 and tuple(s.shape) != want):
        raise CheckpointError(f"{where}: weight_scale has shape {tuple(s.shape)}; a {spec} "
                              f"weight of shape ({N}, {K}) has {want}")
    return s.reshape(want).contiguous()


def _zeros(T, mod: str, spec: QuantSpec, packed: bool, shape, where: str):
    key = f"{mod}.weight_zero_point"
    half = 1 << (spec.bits - 1)
    if spec.symmetric:
        if key in T and bool(T.take(key).to(torch.int64).ne(0).any()):
            raise CheckpointError(f"{where}: the scheme is symmetric but weight_zero_point "
                                  f"holds nonzero zero points")
        return None
    zp = T.take(key, "the asymmetric scheme's zero points")
    N, G = shape
    if packed and spec.granularity != "tensor":
        z = stream_codes(zp.t().contiguous(), spec.bits, N, where + " weight_zero_point").t()
        if tuple(z.shape) != (N, G):
            raise CheckpointError(f"{where}: weight_zero_point unpacks to {tuple(z.shape)}, "
                                  f"not {(N, G)}")
        return z.to(torch.int32).contiguous()
    if zp.is_floating_point() or zp.numel() != N * G:
        raise CheckpointError(f"{where}: weight_zero_point is {zp.dtype} "
                              f"{tuple(zp.shape)}; expected {N * G} integer zero points")
    z = zp.to(torch.int32).reshape(N, G) + half
    if bool(((z < 0) | (z >= 1 << spec.bits)).any()):
        raise CheckpointError(f"{where}: zero points outside the {spec.bits}-bit code range")
    return z.contiguous()


def import_linear(T, mod: str, gen: str, scheme: dict, N: int, K: int, path: Path
                  ) -> ImportedLinear:
    where = f"{path}: {mod}"
    if isinstance(scheme.get("weights"), dict) and scheme["weights"].get("type") == "float":
        return import_float_linear(T, mod, gen, scheme, N, K, path)
    half = None
    if f"{mod}.weight_packed" in T:
        packed, fmt = True, "pack-quantized"
    elif f"{mod}.weight" in T and T.get(f"{mod}.weight").dtype == torch.int8:
        packed, fmt = False, "int-quantized"
    else:
        raise CheckpointError(f"{where}: a config group targets it but it holds neither "
                              f"weight_packed nor int8 weight codes; the checkpoint is not "
                              f"compressed or is incomplete")
    sfile = T.take(f"{mod}.weight_scale", "the weight scales")
    spec = weight_spec(scheme.get("weights"), K, mod, path, sfile.dtype == torch.float16)
    half = 1 << (spec.bits - 1)
    if packed:
        codes = stream_codes(T.take(f"{mod}.weight_packed"), spec.bits, K, where)
        _shape_of(T, mod, N, K, where)
    else:
        q = T.take(f"{mod}.weight")
        if tuple(q.shape) != (N, K):
            raise CheckpointError(f"{where}: weight is {tuple(q.shape)}, the config makes it "
                                  f"{(N, K)}")
        if bool(((q.to(torch.int16) < -half) | (q.to(torch.int16) >= half)).any()):
            raise CheckpointError(f"{where}: int8 weight codes outside the {spec.bits}-bit "
                                  f"signed range [{-half}, {half - 1}]")
        codes = (q.to(torch.int16) + half).to(torch.uint8)
    if tuple(codes.shape) != (N, K):
        raise CheckpointError(f"{where}: codes of shape {tuple(codes.shape)}, the config makes "
                              f"it {(N, K)}")
    scales = _scales(sfile, spec, N, K, where)
    spec = dataclasses.replace(spec, grid=weight_grid(scales, spec.symmetric, where))
    zeros = _zeros(T, mod, spec, packed, tuple(scales.shape), where)
    check_group_order(T, f"{mod}.weight_g_idx", K, spec.group_size if spec.granularity ==
                      "group" else K, where, "Re-quantize with actorder 'static' or 'weight' "
                      "(GPTQ's act-order with contiguous groups)")
    act = act_spec(scheme.get("input_activations"), mod, path)
    if scheme.get("output_activations"):
        raise _refuse(path, mod, "it quantizes output activations, which qpass does not")
    act_scale = None
    if act is not None and not act.dynamic:
        act_scale = scales32(T.take(f"{mod}.input_scale", "the static activation scale"),
                             where + " input_scale")
        if act_scale.numel() != 1:
            raise CheckpointError(f"{where}: input_scale has {act_scale.numel()} values; a "
                                  f"static per-tensor scale has one")
        if f"{mod}.input_zero_point" in T and bool(T.take(f"{mod}.input_zero_point").ne(0).any()):
            raise CheckpointError(f"{where}: symmetric activations with nonzero input_zero_point")
    bias = float_tensor(T, f"{mod}.bias") if f"{mod}.bias" in T else None
    return ImportedLinear(gen, codes, scales, spec, act, zeros, bias, act_scale,
                          source=f"{mod} ({fmt})")


def load_compressed_tensors(path, qc: dict):
    """A CompiledDenoiser of the compressed-tensors folder `path` (its quantization_config
    `qc`), codes and scales kept as they are."""
    path = Path(path)
    check_config(qc, path)
    cfg, tokenizer, T, modules, hf_to_gen = model_parts(path)
    targets = targets_map(qc)
    ignore = qc.get("ignore") or []
    linears, dense = [], {}
    shapes = linear_shapes(cfg)
    for mod, gen in modules.items():
        scheme = scheme_for(mod, targets, ignore)
        compressed = f"{mod}.weight_packed" in T or f"{mod}.weight_scale" in T
        if scheme is None and compressed:
            raise _refuse(path, mod, "it holds compressed tensors but no config group targets "
                          "it (or `ignore` lists it)")
        if scheme is not None:
            fmt = scheme.get("format") or qc.get("format")
            if fmt not in _INT_FORMATS + _FLOAT_FORMATS + ("mixed-precision", None):
                raise _refuse(path, mod, f"format {fmt!r}; qpass imports the formats "
                              f"{', '.join(_INT_FORMATS + _FLOAT_FORMATS)}")
            N, K = shapes[gen]
            linears.append(import_linear(T, mod, gen, scheme, N, K, path))
    quantized = {q.name for q in linears}
    for key, gen in hf_to_gen.items():
        if gen.rpartition(".")[0] not in quantized:
            dense[gen] = float_tensor(T, key)
    check_all_used(T, cfg, FORMAT)
    formats = sorted({q.source.rpartition("(")[2].rstrip(")") for q in linears})
    return build_imported(cfg, linears, dense, tokenizer, FORMAT, path,
                          {"layouts": formats, "version": qc.get("version")})

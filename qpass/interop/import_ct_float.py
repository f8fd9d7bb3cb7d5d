"""Floating-point linears of a compressed-tensors checkpoint (import_compressed_tensors.py
reads the config and the integer ones).

Floating-point weights (what qpass's exporter and compressed-tensors' compress_model write):
  float-quantized / naive-quantized FP8  .weight float8_e4m3fn (N, K): its bit patterns are
                   qpass's E4M3 codes; .weight_scale float32/float16/bfloat16 (exact as
                   float32) per channel (N, 1), tensor (1,), group (N, K/g) or square block
                   (⌈N/b⌉, ⌈K/b⌉) → fp8:channel / fp8:tensor / fp8:g<g> / fp8:b<b>;
                   activations per-token dynamic FP8 (FP8_DYNAMIC) → fp8:token:dyn, static
                   per-tensor FP8 with .input_scale (the FP8 preset) → fp8:tensor
  nvfp4-pack-quantized (NVFP4A16)  .weight_packed uint8 (N, K/2), two E2M1 codes a byte
                   (even element low); .weight_scale float8_e4m3fn (N, K/16) → qpass's
                   stored E4M3 scale codes; .weight_global_scale float32 (1,) → its global
                   scale: code·(b / G), compressed-tensors' float32 dequantization exactly;
                   NVFP4 (W4A4) activations (tensor_group 16, dynamic "local") with
                   .input_global_scale → nvfp4:tensor holding that global scale
  mxfp4-pack-quantized / mxfp8-quantized (MXFP4 / MXFP8)  .weight_packed uint8 (N, K/2) E2M1
                   pairs / .weight float8_e4m3fn (N, K); .weight_scale uint8 (N, K/32) E8M0
                   codes → mxfp4 / mxfp8 (code·2^(e−127)); dynamic 32-group activations →
                   mxfp4:token:dyn / mxfp8:token:dyn.
"""
from __future__ import annotations

from pathlib import Path

import torch

from qpass.errors import CheckpointError
from qpass.formats.floating import float_scale_shape
from qpass.interop.import_hf import float_tensor, scales32
from qpass.interop.import_model import ImportedLinear
from qpass.specs import QuantSpec


def refuse(path: Path, what: str, why: str) -> CheckpointError:
    """The one error of a compressed-tensors import: what cannot be imported, and why."""
    return CheckpointError(f"{path}: cannot import {what} from this compressed-tensors "
                           f"checkpoint: {why}")


def _fp8_spec(args: dict, K: int, where: str, path: Path) -> QuantSpec:
    strategy, g = args.get("strategy"), args.get("group_size")
    if strategy in ("channel", "tensor"):
        text = f"fp8:{strategy}"
    elif strategy == "group" and isinstance(g, int) and g > 0 and K % g == 0:
        text = f"fp8:g{g}"
    elif strategy == "block":
        b = args.get("block_structure")
        if not (isinstance(b, list) and len(b) == 2 and b[0] == b[1] and isinstance(b[0], int)
                and b[0] > 0):
            raise refuse(path, where, f"fp8 block_structure {b!r}; qpass's fp8:b<k> blocks "
                          f"are square")
        text = f"fp8:b{b[0]}"
    else:
        raise refuse(path, where, f"fp8 weight strategy {strategy!r} (group size {g!r}); qpass "
                      f"holds channel, tensor, block and K-dividing group scales")
    return QuantSpec.parse(text)


def float_act_spec(args, where: str, path: Path) -> QuantSpec | None:
    if not args:
        return None
    if _is_mx(args) and args.get("dynamic") is True and args.get("symmetric", True):
        return QuantSpec.parse(f"mx{_MX_HEADS[args['num_bits']]}:token:dyn")
    if (args.get("type"), args.get("num_bits"), args.get("strategy"), args.get("dynamic"),
            args.get("symmetric", True)) == ("float", 8, "token", True, True):
        return QuantSpec.parse("fp8:token:dyn")
    g = args.get("group_size")
    if (args.get("type"), args.get("num_bits"), args.get("strategy"), args.get("dynamic"),
            args.get("symmetric", True)) == ("float", 8, "group", True, True) and \
            isinstance(g, int) and g > 0:
        return QuantSpec.parse(f"fp8:g{g}:dyn")
    if (args.get("type"), args.get("num_bits"), args.get("strategy"), bool(args.get("dynamic")),
            args.get("symmetric", True)) == ("float", 8, "tensor", False, True):
        return QuantSpec.parse("fp8:tensor")
    if (args.get("type"), args.get("num_bits"), args.get("strategy"), args.get("dynamic"),
            g, args.get("symmetric", True)) == ("float", 4, "tensor_group", "local", 16, True):
        return QuantSpec.parse("nvfp4:tensor")      # NVFP4: static global, run-time blocks
    if args.get("type") == "float" and args.get("num_bits") == 4:
        why = (f"{args.get('strategy')} fp4 activations (dynamic {args.get('dynamic')!r}, group "
               f"size {g!r}); qpass imports NVFP4's (tensor_group 16, dynamic 'local', a "
               f"static input_global_scale) and MXFP4's (dynamic 32-groups, uint8 scales)")
    else:
        why = (f"{'dynamic' if args.get('dynamic') else 'static'} {args.get('strategy')} "
               f"{args.get('type')}{args.get('num_bits')} activations beside float weights "
               f"(qpass imports per-token dynamic fp8, FP8_DYNAMIC)")
    raise refuse(path, where, why)


_MX_HEADS = {4: "fp4", 8: "fp8"}


def _is_mx(args: dict) -> bool:
    """compressed-tensors' MX test (should_generate_mx_scales): float 4/8-bit 32-groups with
    uint8 (E8M0) scales."""
    return (args.get("type") == "float" and args.get("num_bits") in _MX_HEADS and
            args.get("strategy") == "group" and args.get("group_size") == 32 and
            str(args.get("scale_dtype")).removeprefix("torch.") == "uint8")


def _e8m0_scales(T, mod: str, N: int, K: int, where: str) -> torch.Tensor:
    s = T.take(f"{mod}.weight_scale", "the E8M0 block scales")
    if s.dtype != torch.uint8 or tuple(s.shape) != (N, K // 32):
        raise CheckpointError(f"{where}: expected uint8 (E8M0) weight_scale ({N}, {K // 32}), "
                              f"found {s.dtype} {tuple(s.shape)}")
    if bool((s == 255).any()):
        raise CheckpointError(f"{where}: weight_scale holds the E8M0 NaN code 255")
    return s.contiguous()


def _fp4_codes(T, mod: str, N: int, K: int, block: int, where: str) -> torch.Tensor:
    p = T.take(f"{mod}.weight_packed")
    if p.dtype != torch.uint8 or tuple(p.shape) != (N, K // 2) or K % block:
        raise CheckpointError(f"{where}: expected uint8 weight_packed ({N}, {K // 2}) of "
                              f"{block}-blocks along K={K}, found {p.dtype} {tuple(p.shape)}")
    return torch.stack((p & 0x0F, p >> 4), dim=-1).reshape(N, K).contiguous()


def _fp8_codes(t: torch.Tensor, N: int, K: int, where: str) -> torch.Tensor:
    if t.dtype != torch.float8_e4m3fn or tuple(t.shape) != (N, K):
        raise CheckpointError(f"{where}: expected float8_e4m3fn weight ({N}, {K}), found "
                              f"{t.dtype} {tuple(t.shape)}")
    codes = t.contiguous().view(torch.uint8)
    if bool(((codes & 0x7F) == 0x7F).any()):
        raise CheckpointError(f"{where}: FP8 weight holds NaN codes")
    return codes


def import_float_linear(T, mod: str, gen: str, scheme: dict, N: int, K: int, path: Path
                        ) -> ImportedLinear:
    """FP8 (float-quantized / naive-quantized) or NVFP4 (nvfp4-pack-quantized) weights: the
    file's codes and stored scales kept as they are."""
    where = f"{path}: {mod}"
    args = scheme.get("weights")
    if args.get("dynamic"):
        raise refuse(path, mod, "its weights are quantized dynamically")
    if not args.get("symmetric", True):
        raise refuse(path, mod, "asymmetric float weights (zero points); qpass's float grids "
                      "are symmetric")
    act = float_act_spec(scheme.get("input_activations"), mod, path)
    if scheme.get("output_activations"):
        raise refuse(path, mod, "it quantizes output activations, which qpass does not")
    bits, strategy, g = args.get("num_bits"), args.get("strategy"), args.get("group_size")
    global_scale = None
    if _is_mx(args) and (f"{mod}.weight_packed" in T or f"{mod}.weight" in T):
        spec = QuantSpec.parse(f"mx{_MX_HEADS[bits]}")
        if bits == 4:
            codes, fmt = _fp4_codes(T, mod, N, K, 32, where), "mxfp4-pack-quantized"
        else:
            codes, fmt = _fp8_codes(T.take(f"{mod}.weight"), N, K, where), "mxfp8-quantized"
        scales = _e8m0_scales(T, mod, N, K, where)
    elif bits == 8 and f"{mod}.weight" in T:
        spec = _fp8_spec(args, K, mod, path)
        codes = _fp8_codes(T.take(f"{mod}.weight"), N, K, where)
        scales = scales32(T.take(f"{mod}.weight_scale", "the weight scales"), where)
        want = float_scale_shape(N, K, spec)
        if scales.numel() != want[0] * want[1] or (scales.dim() == 2 and
                                                   tuple(scales.shape) != want):
            raise CheckpointError(f"{where}: weight_scale has shape {tuple(scales.shape)}; a "
                                  f"{spec} weight of shape ({N}, {K}) has {want}")
        scales = scales.reshape(want).contiguous()
        fmt = "float-quantized"
    elif bits == 4 and strategy == "tensor_group" and g == 16 and f"{mod}.weight_packed" in T:
        spec = QuantSpec.parse("nvfp4")
        codes = _fp4_codes(T, mod, N, K, 16, where)
        s = T.take(f"{mod}.weight_scale", "the E4M3 block scales")
        if s.dtype != torch.float8_e4m3fn or tuple(s.shape) != (N, K // 16):
            raise CheckpointError(f"{where}: expected float8_e4m3fn weight_scale "
                                  f"({N}, {K // 16}), found {s.dtype} {tuple(s.shape)}")
        scales = s.contiguous().view(torch.uint8)
        gs = T.take(f"{mod}.weight_global_scale", "the NVFP4 global scale")
        if gs.numel() != 1 or not gs.is_floating_point():
            raise CheckpointError(f"{where}: weight_global_scale is {gs.dtype} "
                                  f"{tuple(gs.shape)}; one float32 value expected")
        global_scale = scales32(gs, where + " weight_global_scale").reshape(1)
        fmt = "nvfp4-pack-quantized"
    else:
        raise refuse(path, mod, f"{bits}-bit float weights, strategy {strategy!r}, group size "
                      f"{g!r}: qpass imports FP8 (float8_e4m3fn weight), NVFP4 "
                      f"(tensor_group 16, weight_packed) and MXFP4 / MXFP8 (32-groups, uint8 "
                      f"scales)")
    if f"{mod}.weight_zero_point" in T and bool(T.take(f"{mod}.weight_zero_point").float()
                                                 .ne(0).any()):
        raise CheckpointError(f"{where}: symmetric float weights with nonzero zero points")
    act_scale = None
    if act is not None and not act.dynamic:
        # fp8:tensor keeps input_scale, nvfp4:tensor (NVFP4) its input_global_scale
        key = "input_global_scale" if act.format == "nvfp4" else "input_scale"
        act_scale = scales32(T.take(f"{mod}.{key}", "the static activation scale"),
                             f"{where} {key}")
        if act_scale.numel() != 1 or not bool(torch.isfinite(act_scale).all() and
                                              (act_scale > 0).all()):
            raise CheckpointError(f"{where}: {key} must be one positive finite value, found "
                                  f"{act_scale.flatten()[:4].tolist()}")
        if f"{mod}.input_zero_point" in T and bool(T.take(f"{mod}.input_zero_point").float()
                                                    .ne(0).any()):
            raise CheckpointError(f"{where}: symmetric activations with nonzero input_zero_point")
    bias = float_tensor(T, f"{mod}.bias") if f"{mod}.bias" in T else None
    return ImportedLinear(gen, codes, scales, spec, act, None, bias, act_scale,
                          source=f"{mod} ({fmt})", global_scale=global_scale)

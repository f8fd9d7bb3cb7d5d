"""compressed-tensors checkpoint format (what llm-compressor writes and vLLM, SGLang and
transformers read), version 0.20:

  pack-quantized (weight-only int1..8)  <linear>.weight_packed int32 (N, ceil(K·b/32)): the
      unsigned codes u = q + 2^(b−1) as one little-endian bit stream along K, 32 codes per b
      words — exactly qpass's own packing (docs/FORMATS.md), so the codes are copied, not
      recomputed; .weight_scale (N, G); .weight_shape int64 [N, K]; asymmetric adds
      .weight_zero_point, the zero points packed the same way along N: (ceil(N·b/32), G).
  int-quantized (weights + per-token dynamic int activations, W8A8)  <linear>.weight int8
      (N, K) signed codes q = u − 2^(b−1); .weight_scale (N, 1); no activation tensors.

  float-quantized (FP8 E4M3 weights + per-token dynamic FP8 activations, llm-compressor's
      FP8_DYNAMIC; weight-only FP8 is naive-quantized, as compressed-tensors infers it)
      <linear>.weight float8_e4m3fn (N, K) — qpass's E4M3 codes, the same bit patterns;
      .weight_scale float32: (N, 1) channel, (1,) tensor, (N, K/g) group, (⌈N/b⌉, ⌈K/b⌉)
      block (strategy "block", block_structure [b, b]).
  nvfp4-pack-quantized (NVFP4A16)  .weight_packed uint8 (N, K/2): two E2M1 codes a byte, the
      even element in the low nibble (compressed-tensors' pack_fp4_to_uint8; sign bit 3 and
      magnitude index 0..7 are E2M1's own bit pattern); .weight_scale float8_e4m3fn (N, K/16)
      the E4M3 block scales b as qpass stores them; .weight_global_scale float32 (1,) G;
      strategy "tensor_group", group_size 16, scale_dtype float8_e4m3fn. NVFP4 W4A4 (qpass's
      nvfp4:tensor activations, calibrated by ObserveActivations) adds .input_global_scale
      float32 (1,), the calibrated global scale; input_activations dynamic "local" (16-block
      E4M3 scales from each input), strategy tensor_group, observer static_minmax.
  mxfp4-pack-quantized / mxfp8-quantized (MXFP4 / MXFP8)  .weight_packed uint8 (N, K/2) as
      NVFP4's / .weight float8_e4m3fn (N, K); .weight_scale uint8 (N, K/32) the E8M0 codes
      qpass stores; strategy "group", group_size 32, scale_dtype uint8; mxfp<b>:token:dyn
      activations as dynamic 32-groups (llm-compressor's MXFP4 / MXFP8).

Integer formats dequantize as (q − zp)·s, which equals qpass's (u − z)·s term for term
(zp = z − 2^(b−1)), so with float32 scales the weights agree bit for bit; FP8 as code·s,
NVFP4 as code·(b / G) and MX as code·2^(e−127), qpass's float32 operations, also bit for bit.
Not written: nvfp4:token:dyn activations (a global scale per token at run time, which no
compressed-tensors scheme has: an engine would quantize differently; w4a4-nvfp4-static is
the exportable NVFP4). Static per-tensor FP8 activations (fp8:tensor calibrated by
ObserveActivations, llm-compressor's FP8 preset) add .input_scale float32 (1,).
quantization_config is the dict compressed-tensors' ModelCompressor.update_config writes
(tests compare the two)."""
from __future__ import annotations

from pathlib import Path

import torch

from qpass.errors import CheckpointError
from qpass.formats import pack
from qpass.interop.source import ExportSource, QLinear
from qpass.interop.writer import write_dir
from qpass.specs import QuantSpec

FORMAT_VERSION = "0.20.0"       # the compressed-tensors release whose reader the tests run
SCALE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_STRATEGY = {"group": "group", "channel": "channel", "tensor": "tensor"}
_PACKED_FORMATS = {"nvfp4": "nvfp4-pack-quantized", "mxfp4": "mxfp4-pack-quantized",
                   "mxfp8": "mxfp8-quantized"}


def _refuse(q: QLinear, why: str) -> CheckpointError:
    return CheckpointError(f"cannot export {q.hf_name} (weights {q.spec}, activations "
                           f"{q.act_spec}) as compressed-tensors: {why}")


def weight_args(spec: QuantSpec, group_size: int) -> dict:
    """QuantizationArgs of a qpass weight spec, as compressed-tensors serializes them."""
    return {"dynamic": False, "num_bits": spec.bits, "strategy": _STRATEGY[spec.granularity],
            "group_size": group_size if spec.granularity == "group" else None,
            "symmetric": spec.symmetric, "type": "int"}


def act_args(q: QLinear) -> dict | None:
    a = q.act_spec
    if a is None:
        return None
    if not (a.granularity == "token" and a.dynamic):
        raise _refuse(q, f"its activations use static {a.granularity} scales; only per-token "
                         f"dynamic activations (the W8A8 int-quantized format) are exported")
    if not a.symmetric or a.clip_ratio != 1.0:
        raise _refuse(q, "activation quantization with zero points or clipping is computed at "
                         "run time by the engine, which would quantize differently; use "
                         "symmetric unclipped per-token activations (int8:token:dyn)")
    return {"dynamic": True, "num_bits": a.bits, "strategy": "token", "group_size": None,
            "symmetric": True, "type": "int"}


def float_weight_args(q: QLinear) -> dict:
    spec = q.spec
    if spec.format == "fp8":
        if spec.granularity not in ("channel", "tensor", "group", "block"):
            raise _refuse(q, f"fp8 weights with {spec.granularity} scales")
        args = {"dynamic": False, "num_bits": 8, "strategy": spec.granularity,
                "group_size": spec.group_size if spec.granularity == "group" else None,
                "symmetric": True, "type": "float"}
        if spec.granularity == "block":
            args["block_structure"] = [spec.group_size, spec.group_size]
        return args
    if spec.format == "nvfp4":
        return {"dynamic": False, "group_size": 16, "num_bits": 4,
                "scale_dtype": "torch.float8_e4m3fn", "strategy": "tensor_group",
                "symmetric": True, "type": "float"}
    return mx_args(spec.bits, dynamic=False)


def mx_args(bits: int, dynamic: bool) -> dict:
    """compressed-tensors' MXFP4 / MXFP8 arguments: 32-groups with uint8 (E8M0) scales."""
    return {"dynamic": dynamic, "group_size": 32, "num_bits": bits, "scale_dtype": "torch.uint8",
            "strategy": "group", "symmetric": True, "type": "float"}


def _nvfp4_act_args(q: QLinear) -> dict:
    a = q.act_spec
    if a.granularity == "token":
        raise _refuse(q, "nvfp4:token:dyn activations take a global scale per token at run "
                         "time, compressed-tensors' NVFP4 (W4A4) one calibrated static "
                         "input_global_scale per tensor, so an engine would quantize them "
                         "differently; quantize with the scheme w4a4-nvfp4-static (activations "
                         "nvfp4:tensor, calibrated by ObserveActivations), or export "
                         "w4a16-nvfp4 (NVFP4A16)")
    if q.act_scale is None or q.act_scale.numel() != 1:
        raise _refuse(q, "its nvfp4:tensor activations have no calibrated global scale; add "
                         "ObserveActivations() after the weight pass")
    # the observer and clip ratio chose the global scale; the block scales are the input's
    return {"dynamic": "local", "group_size": 16, "num_bits": 4, "observer": "static_minmax",
            "scale_dtype": "torch.float8_e4m3fn", "strategy": "tensor_group",
            "symmetric": True, "type": "float"}


def float_act_args(q: QLinear) -> dict | None:
    a = q.act_spec
    if a is None:
        return None
    if a.format == "fp8" and a.granularity == "token" and a.dynamic and a.clip_ratio == 1.0:
        return {"dynamic": True, "group_size": None, "num_bits": 8, "strategy": "token",
                "symmetric": True, "type": "float"}
    if a.format == "fp8" and a.granularity == "group" and a.dynamic and a.clip_ratio == 1.0:
        # llm-compressor's FP8_BLOCK: dynamic per-token groups of g along K
        return {"dynamic": True, "group_size": a.group_size, "num_bits": 8, "strategy": "group",
                "symmetric": True, "type": "float"}
    if a.format == "fp8" and a.granularity == "tensor" and not a.dynamic and \
            q.act_scale is not None and q.act_scale.numel() == 1:
        # llm-compressor's FP8 preset: one calibrated input_scale per linear
        return {"dynamic": False, "group_size": None, "num_bits": 8, "observer": "static_minmax",
                "strategy": "tensor", "symmetric": True, "type": "float"}
    if a.format == "nvfp4":
        return _nvfp4_act_args(q)
    if a.format in ("mxfp4", "mxfp8") and a.clip_ratio == 1.0 and a.observer == "minmax":
        return mx_args(a.bits, dynamic=True)        # llm-compressor's MXFP4 / MXFP8
    raise _refuse(q, "only per-token dynamic unclipped fp8 activations (fp8:token:dyn, "
                     "llm-compressor's FP8_DYNAMIC), calibrated static per-tensor ones "
                     "(fp8:tensor, its FP8 preset), nvfp4:tensor (NVFP4) and unclipped "
                     "minmax mxfp4 / mxfp8 activations (MXFP4 / MXFP8) are exported beside "
                     "float weights")


def _float_scheme(q: QLinear) -> dict:
    if q.act_spec is not None and not q.act_spec.is_float:
        raise _refuse(q, "floating-point weights with integer activations")
    w = float_weight_args(q)
    a = float_act_args(q)
    if q.spec.format in _PACKED_FORMATS:
        fmt = _PACKED_FORMATS[q.spec.format]
    else:
        fmt = "float-quantized" if a is not None else "naive-quantized"
    return {"format": fmt, "input_activations": a, "output_activations": None, "weights": w}


def _scheme(q: QLinear) -> dict:
    if q.spec.is_kquant:
        raise _refuse(q, "it is a llama.cpp K-quant (sub-block scale codes under float16 "
                         "super-block scales), which compressed-tensors has no layout for; "
                         "export it with --format gguf")
    if q.spec.is_float and q.stored_scale is None:
        raise _refuse(q, "its floating-point scales were not read (source.attach_float_parts)")
    if q.spec.is_float:
        return _float_scheme(q)
    if q.act_spec is not None and q.act_spec.is_float:
        raise _refuse(q, "integer weights with floating-point activations (W4AFP8) are not "
                         "written")
    # weight clip ratios, observers and grids only changed how qpass chose the scales: the
    # stored codes and scales carry over as they are
    return {"format": "int-quantized" if q.act_spec is not None else "pack-quantized",
            "input_activations": act_args(q), "output_activations": None,
            "weights": weight_args(q.spec, q.group_size)}


def _packed_cols(K: int, bits: int) -> int:
    return -(-K * bits // 32)


def float_tensors(q: QLinear) -> dict[str, torch.Tensor]:
    """A float spec's tensors: its codes and stored scales as they are (bit patterns viewed as
    float8_e4m3fn; nvfp4's and mxfp4's E2M1 codes two a byte, even element low; MX scales
    their E8M0 codes as uint8), and a static activation's calibrated scale."""
    N, K = q.codes.shape
    fmt = q.spec.format
    if fmt in ("nvfp4", "mxfp4"):
        c = q.codes.to(torch.uint8).reshape(N, K // 2, 2)
        out = {"weight_packed": (c[..., 0] | (c[..., 1] << 4)).contiguous()}
    else:
        out = {"weight": q.codes.to(torch.uint8).contiguous().view(torch.float8_e4m3fn)}
    if fmt == "nvfp4":
        out["weight_scale"] = q.stored_scale.to(torch.uint8).contiguous().view(torch.float8_e4m3fn)
        out["weight_global_scale"] = q.global_scale.to(torch.float32).reshape(1).contiguous()
    elif fmt in ("mxfp4", "mxfp8"):
        out["weight_scale"] = q.stored_scale.to(torch.uint8).contiguous()
    else:
        scale = q.stored_scale.to(torch.float32)
        out["weight_scale"] = (scale.reshape(1) if q.spec.granularity == "tensor" else scale
                               ).contiguous()
    a = q.act_spec
    if a is not None and not a.dynamic:
        # fp8:tensor: the effective scale (input_scale); nvfp4:tensor: the global scale
        key = "input_global_scale" if a.format == "nvfp4" else "input_scale"
        out[key] = q.act_scale.to(torch.float32).reshape(1).contiguous()
    return out


def linear_tensors(q: QLinear, scheme: dict, scale_dtype: torch.dtype, dense_dtype: torch.dtype
                   ) -> dict[str, torch.Tensor]:
    N, K = q.codes.shape
    if q.spec.is_float:
        out = float_tensors(q)
        if q.bias is not None:
            out["bias"] = q.bias.to(dense_dtype)
        return {f"{q.hf_name}.{k}": v for k, v in out.items()}
    b = q.spec.bits
    half = 1 << (b - 1)
    scales = q.scales[:, :1] if q.spec.granularity != "group" else q.scales
    if q.spec.granularity == "tensor":
        scales = q.scales[:1, 0]
    out = {"weight_scale": scales.to(scale_dtype).contiguous()}
    if scheme["format"] == "pack-quantized":
        # qpass pads the stream to whole 32-code runs; the format keeps only the used words
        out["weight_packed"] = pack(q.codes, b)[:, :_packed_cols(K, b)].contiguous()
        out["weight_shape"] = torch.tensor([N, K], dtype=torch.int64)
        if q.zeros is not None and q.spec.granularity == "tensor":
            # the format packs zero points of group/channel strategies only
            out["weight_zero_point"] = (q.zeros[:1, 0] - half).to(torch.int8)
        elif q.zeros is not None:
            z = q.zeros if q.spec.granularity == "group" else q.zeros[:, :1]
            out["weight_zero_point"] = (pack(z.t().to(torch.uint8).contiguous(), b)
                                        [:, :_packed_cols(N, b)].t().contiguous())
    else:
        out["weight"] = (q.codes.to(torch.int16) - half).to(torch.int8)
        if q.zeros is not None:
            z = q.zeros if q.spec.granularity == "group" else q.zeros[:, :1]
            if q.spec.granularity == "tensor":
                z = z[:1, 0]
            out["weight_zero_point"] = (z - half).to(torch.int8).contiguous()
    if q.bias is not None:
        out["bias"] = q.bias.to(dense_dtype)
    return {f"{q.hf_name}.{k}": v for k, v in out.items()}


def quantization_config(src: ExportSource, schemes: list[tuple[QLinear, dict]]) -> dict:
    """config_groups (one per distinct scheme; all linears `Linear` when there is one), the
    ignore list (every linear kept in high precision), format and version."""
    groups: list[tuple[dict, list[str]]] = []
    for q, s in schemes:
        for g, names in groups:
            if g == s:
                names.append(q.hf_name)
                break
        else:
            groups.append((s, [q.hf_name]))
    config_groups = {}
    for i, (s, names) in enumerate(groups):
        targets = ["Linear"] if len(groups) == 1 else sorted(names)
        config_groups[f"group_{i}"] = dict(s, targets=targets)
    formats = {s["format"] for s, _ in groups}
    return {"config_groups": config_groups,
            "format": formats.pop() if len(formats) == 1 else "mixed-precision",
            "global_compression_ratio": None, "ignore": sorted(src.kept_linears),
            "kv_cache_scheme": None, "moe_sparsity_config": None,
            "quant_method": "compressed-tensors", "quantization_status": "compressed",
            "sparsity_config": {}, "transform_config": {}, "version": FORMAT_VERSION}


def export_compressed_tensors(src: ExportSource, out, scale_dtype: str = "float32") -> Path:
    """Write `src` as a compressed-tensors checkpoint directory OUT. float32 scales (default)
    keep qpass's exactly; float16/bfloat16 round them (the codes stay the same)."""
    if not src.linears:
        raise CheckpointError("the checkpoint has no quantized linears; nothing to export as "
                              "compressed-tensors")
    if scale_dtype not in SCALE_DTYPES:
        raise CheckpointError(f"--scale-dtype {scale_dtype!r}: compressed-tensors scales are one "
                              f"of {', '.join(SCALE_DTYPES)}")
    sdt = SCALE_DTYPES[scale_dtype]
    schemes = [(q, _scheme(q)) for q in src.linears]
    tensors: dict[str, torch.Tensor] = {}
    for q, s in schemes:
        tensors.update(linear_tensors(q, s, sdt, src.dtype))
    tensors.update(src.dense)
    dtype_name = str(src.dtype).removeprefix("torch.")
    hf = dict(src.hf_config, quantization_config=quantization_config(src, schemes),
              torch_dtype=dtype_name)
    return write_dir(out, tensors, hf, src.tokenizer, {})

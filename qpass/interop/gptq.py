"""GPTQ checkpoint format (AutoGPTQ / GPTQModel `checkpoint_format: gptq`, read by vLLM, SGLang
and transformers): per linear `qweight` int32 (K·b/32, N) packed along K, `qzeros` int32
(G, N·b/32) packed along N holding zero − 1 (the format's historical offset), `scales`
(G, N), `g_idx` int32 (K,) = k // group; symmetric only.

qpass's packing (docs/FORMATS.md) is the same little-endian bit stream along K for 2/4/8
bits, so `qweight` is qpass's packed codes transposed: the codes are written, not recomputed."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from qpass.errors import CheckpointError
from qpass.formats import pack
from qpass.interop.source import ExportSource, QLinear
from qpass.interop.writer import write_dir

BITS = (2, 4, 8)
SCALE_DTYPES = {"float16": torch.float16, "float32": torch.float32}


def check_gptq(q: QLinear) -> None:
    why = None
    if q.act_spec is not None:
        why = (f"its activations are quantized ({q.act_spec}); GPTQ format is weight-only "
               f"(export w8a8 as compressed-tensors instead)")
    elif q.spec.is_float:
        why = "it is a floating-point format; GPTQ checkpoints hold integer codes"
    elif q.spec.is_kquant:
        why = ("it is a llama.cpp K-quant (sub-block scales under float16 super-block scales); "
               "export it with --format gguf")
    elif not q.spec.symmetric:
        why = "it is asymmetric; qpass exports GPTQ format for symmetric schemes only"
    elif q.spec.bits not in BITS:
        why = f"{q.spec.bits}-bit codes have no GPTQ packing that engines read (2, 4, 8 do)"
    elif q.codes.shape[0] % (32 // q.spec.bits):
        why = f"out features {q.codes.shape[0]} are not a multiple of {32 // q.spec.bits}"
    if why:
        raise CheckpointError(f"cannot export {q.hf_name} (weights {q.spec}) as GPTQ: {why}")


def gptq_tensors(q: QLinear, scale_dtype: torch.dtype) -> dict[str, torch.Tensor]:
    check_gptq(q)
    N, K = q.codes.shape
    b, g = q.spec.bits, q.group_size
    zero = torch.full((K // g, N), 2 ** (b - 1) - 1, dtype=torch.uint8)   # stored as z - 1
    out = {"qweight": pack(q.codes, b).t().contiguous(),
           "qzeros": pack(zero, b),
           "scales": q.scales.t().contiguous().to(scale_dtype),
           "g_idx": (torch.arange(K, dtype=torch.int32) // g)}
    if q.bias is not None:
        out["bias"] = q.bias.to(scale_dtype)
    return {f"{q.hf_name}.{k}": v for k, v in out.items()}


def quantize_config(src: ExportSource) -> dict:
    bits = {q.spec.bits for q in src.linears}
    groups = {-1 if q.spec.granularity == "channel" else q.group_size for q in src.linears}
    if len(bits) != 1 or len(groups) != 1:
        raise CheckpointError(f"GPTQ format has one bit width and group size per model; this "
                              f"checkpoint mixes bits {sorted(bits)} and groups {sorted(groups)}")
    return {"bits": bits.pop(), "group_size": groups.pop(),
            "desc_act": False, "sym": True, "static_groups": False, "true_sequential": True,
            "damp_percent": 0.01, "quant_method": "gptq", "checkpoint_format": "gptq",
            "modules_in_block_to_quantize": None}


def export_gptq(src: ExportSource, out, scale_dtype: str = "float16") -> Path:
    if not src.linears:
        raise CheckpointError("the checkpoint has no quantized linears; nothing to export as GPTQ")
    if scale_dtype not in SCALE_DTYPES:
        raise CheckpointError(f"--scale-dtype {scale_dtype!r}: GPTQ kernels read float16 scales "
                              f"(float32 keeps qpass's exactly); choose one of "
                              f"{', '.join(SCALE_DTYPES)}")
    dt = SCALE_DTYPES[scale_dtype]
    tensors = {}
    for q in src.linears:
        tensors.update(gptq_tensors(q, dt))
    qc = quantize_config(src)
    for name, t in src.dense.items():
        tensors[name] = t.to(dt)
    hf = dict(src.hf_config, quantization_config=qc, torch_dtype=scale_dtype)
    extra = {"quantize_config.json": json.dumps(qc, indent=1)}
    return write_dir(out, tensors, hf, src.tokenizer, extra)

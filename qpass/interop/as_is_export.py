"""compressed-tensors export of a model captured as it is (qpass.runtime.as_is_model): a
directory that transformers' own from_pretrained loads through its compressed-tensors
integration (CompressedTensorsHfQuantizer, compressed-tensors 0.20) and that computes the
AsIsModel's logits.

  quantized linears  pack-/int-quantized from qpass's codes (compressed_tensors.linear_tensors:
      copied, never re-rounded), at every module path that shares the weight.
  everything else    dense in the model's dtype, as the model's own save_pretrained names it:
      embeddings, norms, routers, lm_head, the vision tower, and the fused 3-D experts.
  ignore             every nn.Linear left in high precision, at every path.

Fused experts stay dense (their dequantized codes, which the AsIsModel computes with). Neither
transformers 5.25 nor compressed-tensors 0.20 has a quantized layout for a 3-D expert
parameter: compressed-tensors quantizes modules with a 2-D `weight` (apply_quantization_config
matches module classes and names), and transformers' CompressedTensorsDequantize only reaches
experts through a model's conversion mapping that merges per-expert checkpoint keys
(`experts.{e}.gate_proj.weight_packed`, the llm-compressor / vLLM layout) into the fused
parameter; DiffusionGemma (like Gemma 4) has no such mapping, so per-expert keys would be
unexpected keys and the experts would load as random initialization.

Tied weights: transformers ties by parameter names it lists when the model is built
(`_tied_weights_keys`, e.g. DiffusionGemma's encoder layer `...weight` to the decoder's).
A compressed module has no `.weight` (compress_model gives it weight_packed/weight_scale/
weight_shape), so from_pretrained fails in tie_weights on any tie that names a quantized
linear. Ties that touch only dense tensors (a dense lm_head tied to the embedding) are kept and
the duplicates dropped as save_pretrained drops them; if any tie names a quantized linear,
the export sets tie_word_embeddings to false (the only switch transformers has; it gates every
declared tie) and stores every alias itself, which costs a second copy of the tied dense
tensors on disk and in memory.

Loading (transformers 5.25, compressed-tensors 0.20): the quantized linears are decompressed
by a hook on the top module's first forward; DiffusionGemma's generate calls the encoder and
decoder directly, so run one forward before generate. Asymmetric weights are written as the
format defines them (zero points packed, (ceil(N·b/32), G)) but transformers refuses them: on
the meta model compressed-tensors' PackedQuantizationCompressor.compress keeps the zero point
unpacked, (N, G), so from_pretrained reports a size mismatch (any asymmetric pack-quantized
checkpoint, not only qpass's)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from qpass.errors import CheckpointError
from qpass.interop.compressed_tensors import (SCALE_DTYPES, _scheme, linear_tensors,
                                              quantization_config)
from qpass.interop.source import ExportSource, QLinear, _weight_parts, attach_float_parts
from qpass.interop.writer import write_dir
from qpass.ir.qlinear import QuantLinear


def export_as_is_compressed_tensors(model, out, scale_dtype: str = "float32",
                                    trust_remote_code: bool = False) -> Path:
    """Write an AsIsModel (or the directory it was saved to) as a compressed-tensors
    checkpoint directory OUT (a new path). float32 scales (default) keep qpass's exactly."""
    from qpass.runtime.output import check_new_output
    if scale_dtype not in SCALE_DTYPES:
        raise CheckpointError(f"--scale-dtype {scale_dtype!r}: compressed-tensors scales are one "
                              f"of {', '.join(SCALE_DTYPES)}")
    check_new_output(out, "--out")
    q = exportable(model, trust_remote_code)
    m = q.model
    linears, kept = _linears(m)
    if not linears:
        raise CheckpointError("the model has no quantized linears; nothing to export as "
                              "compressed-tensors")
    quantized = {ql.hf_name for ql in linears}
    untie = _ties_a_quantized_linear(m, quantized)
    dense = {k: v for k, v in m.state_dict().items()
             if k.rpartition(".")[0] not in quantized}
    if not untie:
        from transformers.modeling_utils import remove_tied_weights_from_state_dict
        dense = remove_tied_weights_from_state_dict(dense, m)
    dtype = m.dtype
    schemes = [(ql, _scheme(ql)) for ql in linears]
    tensors: dict[str, torch.Tensor] = {}
    for ql, s in schemes:
        tensors.update(linear_tensors(ql, s, SCALE_DTYPES[scale_dtype], dtype))
    tensors.update(dense)
    hf = json.loads(m.config.to_json_string())
    if untie:
        _set_untied(hf)
    src = ExportSource(None, hf, linears, dense, q.tokenizer, kept)
    hf["quantization_config"] = quantization_config(src, schemes)
    return write_dir(out, _own_storage(tensors), hf, q.tokenizer, _extra_files(m))


def exportable(model, trust_remote_code: bool = False):
    """The AsIsModel to export: `model` itself or the one saved in that directory; a model
    loaded from someone else's quantized checkpoint is refused (qpass exports what it
    quantized)."""
    from qpass.runtime import as_is_model
    q = model if isinstance(model, as_is_model.AsIsModel) else \
        as_is_model.load(model, trust_remote_code=trust_remote_code)
    if getattr(q.model.config, "quantization_config", None) is not None:
        raise CheckpointError("the model was loaded from an already quantized checkpoint "
                              "(config.quantization_config); qpass exports only what it quantized")
    return q


def _linears(m: nn.Module) -> tuple[list[QLinear], list[str]]:
    """QLinear of every quantized linear at every path it is reachable by, and the paths of the
    linears that stayed in high precision (the quantization_config's ignore list)."""
    linears, kept = [], []
    for name, mod in m.named_modules(remove_duplicate=False):
        if isinstance(mod, QuantLinear) and (mod.weight_spec is not None
                                             or mod.act_spec is not None):
            codes, scales, spec, g, zeros = _weight_parts(name, mod)
            bias = None if mod.bias is None else mod.bias.detach().float().cpu()
            linears.append(attach_float_parts(QLinear(
                name, codes.cpu(), scales.cpu(), spec, mod.act_spec, g, bias,
                None if zeros is None else zeros.cpu()), mod))
        elif isinstance(mod, (nn.Linear, QuantLinear)):
            kept.append(name)
    return linears, sorted(set(kept))


def _ties_a_quantized_linear(m: nn.Module, quantized: set[str]) -> bool:
    ties = getattr(m, "all_tied_weights_keys", None) or {}
    return any(k.rpartition(".")[0] in quantized for pair in ties.items() for k in pair)


def _set_untied(cfg: dict) -> None:
    """tie_word_embeddings = false in the config and in every sub-config that states it."""
    cfg["tie_word_embeddings"] = False
    for v in cfg.values():
        if isinstance(v, dict) and "tie_word_embeddings" in v:
            _set_untied(v)


def _own_storage(tensors: dict) -> dict[str, torch.Tensor]:
    """Each tensor on the CPU in storage of its own (safetensors refuses shared storage: tied
    aliases written under each name)."""
    seen, out = set(), {}
    for k, v in tensors.items():
        v = v.detach().cpu()
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return out


def _extra_files(m: nn.Module) -> dict[str, str]:
    """generation_config.json (the model's own sampler reads it) and, for a trusted
    remote-code model, its .py files."""
    extra = {}
    gen = getattr(m, "generation_config", None)
    if gen is not None and m.can_generate():
        extra["generation_config.json"] = gen.to_json_string()
    info = getattr(m, "qpass_as_is", {})
    if info.get("remote"):
        from qpass import folders
        src = Path(m.checkpoint_dir)
        for p in sorted(src.iterdir()):
            if p.name.endswith(".py"):
                extra[p.name] = folders.regular_file(p, src, "code").read_text()
    return extra

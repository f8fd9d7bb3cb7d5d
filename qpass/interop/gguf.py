"""GGUF export (llama.cpp, llama-diffusion-cli): Q8_0, Q4_0, Q5_0, Q4_K and Q6_K weights written
from qpass's codes, the llama.cpp architecture and tensor names its converter (convert_hf_to_gguf.py)
uses for LLaDA ("llada"), Dream ("dream") and LLaMA ("llama"), hyperparameters and tokenizer.

How qpass's grid maps (docs/INTEROP.md): both block formats store, per 32 weights of a row,
one float16 scale d and integer codes, and dequantize as d·q:
  Q8_0  q int8 → qpass int8 symmetric, q = u − 128: all 256 codes fit, including the −128 of
        qpass's full grid that llama.cpp's own quantizer (d = absmax/127) never produces;
  Q4_0  q = nibble − 8 → qpass int4 symmetric, nibble = u: the same 16 levels [−8, 7] as
        llama.cpp's d = max/−8 convention, whatever the scale.
  Q5_0  q = u − 16 → qpass int5 symmetric (the `q5_0` scheme: Q4_0's rule at 5 bits).
So any symmetric int8/int5/int4 spec whose groups are whole 32-blocks (g32, g64, g128, or per
channel) carries over code for code, each group's scale repeated over its blocks — provided
the scale is a float16 number. The K-quants (q4_k, q6_k; qpass/specs/kquant_spec.py) are
qpass grids of their own: codes, sub-block scale (and min) codes and float16 super-block scales
written as they are (qpass/interop/gguf_blocks.py has every block's bytes). qpass scales are float32 unless the spec says `:f16scale`
(codes chosen with the fp16-rounded scale); rounding them here would move every weight of the
block, so such checkpoints are refused with the spec to use instead.

Unquantized files (`gguf_type` f32 / f16 / bf16: every matrix in that type, 1-D tensors F32, as
llama.cpp's converter writes `--outtype f16`) come from a float model: a zoo name or HF
checkpoint directory (`model_source`), or a compiled checkpoint whose linears are float; they are
what llama.cpp's own llama-quantize and llama-imatrix start from. Tokenizer metadata:
qpass.interop.gguf_vocab."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from qpass.errors import CheckpointError
from qpass.interop import gguf_blocks
from qpass.interop.gguf_blocks import GGML_Q4_K, GGML_Q5_0, GGML_Q6_K
from qpass.interop.gguf_file import (BOOL, F32, GGML_BF16, GGML_F16, GGML_F32, GGML_Q4_0,
                                     GGML_Q8_0, STRING, U32, Tensor, Value, write_file)
from qpass.interop.gguf_vocab import tokenizer_metadata
from qpass.interop.source import ExportSource, QLinear
from qpass.models.naming import key_map
from qpass.runtime.output import check_new_output

ARCH = {"llada": "llada", "dream": "dream", "llama": "llama"}
BLOCK = 32
# llama.cpp file types (LlamaFileType): what most tensors are
FILE_TYPE = {GGML_F32: 0, GGML_F16: 1, GGML_Q4_0: 2, GGML_Q8_0: 7, GGML_Q5_0: 8,
             GGML_Q4_K: 14, GGML_Q6_K: 18, GGML_BF16: 32}
FTYPE_Q4_K_M = 15                 # llama.cpp's LLAMA_FTYPE_MOSTLY_Q4_K_M: Q4_K with Q6_K
QUANT_TYPES = (GGML_Q4_0, GGML_Q5_0, GGML_Q8_0, GGML_Q4_K, GGML_Q6_K)
_TOP = {"embed": "token_embd", "norm": "output_norm", "head": "output"}
_BLOCK_NAMES = {"attn_norm": "attn_norm", "q_proj": "attn_q", "k_proj": "attn_k",
                "v_proj": "attn_v", "o_proj": "attn_output", "mlp_norm": "ffn_norm",
                "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
_DENSE_TYPE = {torch.float32: GGML_F32, torch.float16: GGML_F16, torch.bfloat16: GGML_BF16}
# --gguf-type: an unquantized file, every matrix in this dtype
GGUF_TYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def gguf_name(generic: str) -> str:
    """Denoiser parameter name -> llama.cpp tensor name (blocks.3.q_proj.weight ->
    blk.3.attn_q.weight)."""
    parts = generic.split(".")
    if parts[0] == "blocks":
        return f"blk.{parts[1]}.{_BLOCK_NAMES[parts[2]]}.{parts[3]}"
    return f"{_TOP[parts[0]]}.{parts[1]}"


def rope_permutation(n_rows: int, n_head: int) -> torch.Tensor:
    """Row order llama.cpp's converter gives q/k of LLaDA and LLaMA ("undo_permute": HF's
    rotate-half layout -> interleaved pairs): new row r is old row perm[r]."""
    return torch.arange(n_rows).reshape(n_head, 2, n_rows // n_head // 2).transpose(1, 2).reshape(-1)


def _why_not(q: QLinear) -> str | None:
    s, K = q.spec, q.codes.shape[1]
    use = ("the preset q4_0-gptq, q4_0-rtn, q8_0-rtn, q4_k_m-gptq, q4_k-rtn or q6_k-rtn (qpass "
           "quantize MODEL --pipeline q4_0-gptq), or --scheme q4_0 / q5_0 / q8_0 / q4_k / "
           "q6_k / q4_k_m with another pipeline: weight specs int4:g32:sym:f16scale (Q4_0), "
           "int5:g32:sym:f16scale (Q5_0), int8:g32:sym:f16scale or int8:channel:f16scale (Q8_0),"
           " q4_k, q6_k")
    if getattr(s, "is_kquant", False):
        return None
    if getattr(s, "is_float", False):
        return (f"{s} is a floating-point format; GGUF's Q4_0/Q8_0 hold integer codes, and "
                f"writing these codes as integers would change every weight. Export it as "
                f"compressed-tensors, or quantize with {use}")
    if not s.symmetric:
        return (f"it is asymmetric; Q4_1/Q8_1 would store the zero point as a float16 offset "
                f"−d·z, rounding it. Quantize with {use}")
    if s.bits not in (4, 5, 8):
        return (f"{s.bits}-bit codes; qpass writes 4-bit as Q4_0, 5-bit as Q5_0, 8-bit as Q8_0 "
                f"(and its K-quant grids as Q4_K / Q6_K). Use {use}")
    if K % BLOCK or (s.granularity == "group" and q.group_size % BLOCK):
        return (f"its groups ({q.group_size} of K={K}) are not whole {BLOCK}-weight blocks, "
                f"the unit of Q4_0/Q5_0/Q8_0. Use {use}")
    if not torch.equal(q.scales.to(torch.float16).to(torch.float32), q.scales):
        return (f"its float32 scales are not float16 numbers and Q4_0/Q5_0/Q8_0 store float16 "
                f"block scales; rounding them would change the weights. Quantize with "
                f"':f16scale' in the weight spec (codes chosen with the fp16 scale): {use}")
    return None


_SIMPLE = {4: GGML_Q4_0, 5: GGML_Q5_0, 8: GGML_Q8_0}
_KQUANT = {"q4_k": GGML_Q4_K, "q6_k": GGML_Q6_K}


def block_bytes(q: QLinear, rows: torch.Tensor | None) -> tuple[int, bytes]:
    """(ggml type, row-major blocks) of one quantized linear (Q8_0 / Q5_0 / Q4_0 from 32-block
    specs, Q4_K / Q6_K from K-quant specs), rows optionally reordered (LLaDA/LLaMA q/k)."""
    why = _why_not(q)
    if why:
        raise CheckpointError(f"cannot export {q.hf_name} (weights {q.spec}) as GGUF: {why}")
    pick = (lambda t: t) if rows is None else (lambda t: t[rows])  # noqa: E731
    codes = pick(q.codes)
    N, K = codes.shape
    if q.spec.is_kquant:
        if q.stored_scale is None or q.super_scale is None:
            raise CheckpointError(f"{q.hf_name}: a {q.spec} linear without its stored scale "
                                  f"codes and super-block scales (source.attach_float_parts)")
        sup = pick(q.super_scale).numpy()
        b = gguf_blocks.Blocks(codes.numpy(), sup[..., 0].astype(np.float16),
                               sup[..., 1].astype(np.float16) if sup.shape[-1] > 1 else None,
                               pick(q.stored_scale).numpy(),
                               None if q.stored_min is None else pick(q.stored_min).numpy())
        kind = _KQUANT[q.spec.format]
        return kind, gguf_blocks.pack(kind, b)
    scales = pick(q.scales)
    nb = K // BLOCK
    d = scales.repeat_interleave(q.group_size // BLOCK, dim=1) if scales.shape[1] > 1 \
        else scales.expand(N, nb)
    kind = _SIMPLE[q.spec.bits]
    b = gguf_blocks.Blocks(codes.numpy(), d.to(torch.float16).contiguous().numpy())
    return kind, gguf_blocks.pack(kind, b)


def _dense(name: str, t: torch.Tensor, dtype: torch.dtype) -> Tensor:
    # 1-D tensors (norms, biases) stay float32, as llama.cpp's converter keeps them
    dt = torch.float32 if t.dim() == 1 else dtype
    data = t.detach().to(dt).contiguous()
    raw = data.view(torch.int16).numpy().tobytes() if dt == torch.bfloat16 else data.numpy().tobytes()
    return Tensor(name, _DENSE_TYPE[dt], tuple(reversed(data.shape)), raw)


def gguf_tensors(src: ExportSource, dtype: torch.dtype | None = None) -> list[Tensor]:
    """Every tensor of the file: quantized linears as ggml blocks, every other matrix in
    `dtype` (default: the model's), 1-D tensors F32."""
    cfg = src.config
    to_gen = key_map(cfg)
    permute = cfg.family in ("llada", "llama")
    heads = {"q_proj": cfg.n_heads, "k_proj": cfg.n_kv_heads}
    if dtype is None:
        dtype = src.dtype if src.dtype in _DENSE_TYPE else torch.float32
    out = []
    for q in src.linears:
        gen = to_gen[q.hf_name + ".weight"]
        role = gen.split(".")[2] if gen.startswith("blocks.") else ""
        rows = rope_permutation(q.codes.shape[0], heads[role]) if permute and role in heads \
            else None
        kind, data = block_bytes(q, rows)
        out.append(Tensor(gguf_name(gen), kind, (q.codes.shape[1], q.codes.shape[0]), data))
        if q.bias is not None:
            b = q.bias if rows is None else q.bias[rows]
            out.append(_dense(gguf_name(gen[: -len("weight")] + "bias"), b, dtype))
    for hf, t in src.dense.items():
        gen = to_gen[hf]
        role = gen.split(".")[2] if gen.startswith("blocks.") else ""
        if permute and role in heads:      # a q/k kept in float: same row order
            t = t[rope_permutation(t.shape[0], heads[role])]
        out.append(_dense(gguf_name(gen), t, dtype))
    return out


def file_type(tensors: list[Tensor], dtype: torch.dtype | None = None) -> int:
    """general.file_type: a K-quant file's K-quant type (Q4_K_M when Q4_K and Q6_K are both
    there, as llama-quantize names its mix; their 32-block fallbacks do not count), else the
    type of most quantized matrices, else that of the float ones."""
    kinds = [t.ggml_type for t in tensors if t.ggml_type in QUANT_TYPES]
    k = {t for t in kinds if t in (GGML_Q4_K, GGML_Q6_K)}
    if k:
        return FTYPE_Q4_K_M if len(k) == 2 else FILE_TYPE[k.pop()]
    if kinds:
        return FILE_TYPE[max(set(kinds), key=kinds.count)]
    return FILE_TYPE[_DENSE_TYPE[dtype or torch.float32]]


def gguf_metadata(src: ExportSource, tensors: list[Tensor],
                  dtype: torch.dtype | None = None) -> dict[str, Value]:
    cfg = src.config
    if cfg.family not in ARCH:
        raise CheckpointError(f"family {cfg.family!r} has no llama.cpp architecture qpass "
                              f"writes; GGUF export covers {', '.join(ARCH)}")
    a = ARCH[cfg.family]
    md = {"general.architecture": Value(STRING, a), "general.name": Value(STRING, cfg.name),
          "general.file_type": Value(U32, file_type(tensors, dtype)),
          "general.quantization_version": Value(U32, 2),
          f"{a}.context_length": Value(U32, cfg.max_seq_len),
          f"{a}.embedding_length": Value(U32, cfg.d_model),
          f"{a}.block_count": Value(U32, cfg.n_layers),
          f"{a}.feed_forward_length": Value(U32, cfg.mlp_hidden),
          f"{a}.attention.head_count": Value(U32, cfg.n_heads),
          f"{a}.attention.head_count_kv": Value(U32, cfg.n_kv_heads),
          f"{a}.rope.freq_base": Value(F32, float(cfg.rope_theta)),
          f"{a}.rope.dimension_count": Value(U32, cfg.head_dim),
          f"{a}.attention.layer_norm_rms_epsilon": Value(F32, float(cfg.norm_eps)),
          f"{a}.vocab_size": Value(U32, cfg.vocab_size),
          f"{a}.attention.causal": Value(BOOL, bool(cfg.causal))}
    if cfg.family in ("llada", "dream"):
        md["diffusion.shift_logits"] = Value(BOOL, bool(cfg.logit_shift))
    md.update(tokenizer_metadata(src.tokenizer, cfg.vocab_size, cfg.family))
    if cfg.mask_token_id is not None:
        md["tokenizer.ggml.mask_token_id"] = Value(U32, cfg.mask_token_id)
    return md


def export_gguf(src: ExportSource, out, scale_dtype: str = "float16",
                gguf_type: str | None = None) -> Path:
    """Write `src` as one GGUF file OUT (a new file; nothing existing is replaced): its
    quantized linears as Q4_0/Q5_0/Q8_0/Q4_K/Q6_K, or with `gguf_type` (f32, f16, bf16) a
    float model unquantized."""
    if scale_dtype != "float16":
        raise CheckpointError(f"--scale-dtype {scale_dtype}: GGUF block scales are float16 by "
                              f"definition; drop the option")
    dtype = None
    if gguf_type is not None:
        if gguf_type not in GGUF_TYPES:
            raise CheckpointError(f"--gguf-type {gguf_type!r}: one of {', '.join(GGUF_TYPES)}")
        if src.linears:
            raise CheckpointError(f"--gguf-type {gguf_type} writes an unquantized model, but "
                                  f"this checkpoint's linears are quantized ({src.linears[0].spec}"
                                  f"); export it without --gguf-type (its codes as they are), or "
                                  f"give the float model (a zoo name or HF checkpoint directory)")
        dtype = GGUF_TYPES[gguf_type]
    elif not src.linears:
        raise CheckpointError("the checkpoint has no quantized linears; nothing to export as "
                              "quantized blocks (--gguf-type f16|bf16|f32 writes a float model)")
    out = check_new_output(out, "--out")          # nothing there, not even a dangling link
    tensors = gguf_tensors(src, dtype)
    return write_file(out, gguf_metadata(src, tensors, dtype), tensors)


def model_source(name_or_dir) -> ExportSource:
    """The ExportSource of a float model: a zoo name or an HF checkpoint directory of a family
    qpass loads (LLaDA, Dream, LLaMA), captured as a graph without any pass."""
    from qpass.interop.source import read_source
    from qpass.ir import capture
    from qpass.models import load
    from qpass.models.denoiser import Denoiser
    model = load(name_or_dir)
    if not isinstance(model, Denoiser):
        raise CheckpointError(f"{name_or_dir} is a {type(model).__name__} (a model qpass runs as "
                              f"it is); unquantized GGUF export covers the LLaDA, Dream and LLaMA "
                              f"layouts")
    return read_source(capture(model, shapes=False))

"""Import a GGUF file (llama.cpp) of the architectures qpass writes — `llada`, `dream`, `llama`
— as a CompiledDenoiser holding its Q4_0/Q5_0/Q8_0/Q4_K/Q6_K codes and scales as they are.

How the blocks map (the inverse of gguf.py's export, docs/INTEROP.md; the bytes:
gguf_blocks.py): per 32 weights of a row one float16 scale d and codes, weight d·q;
  Q8_0  q int8 → qpass int8 symmetric code u = q + 128;
  Q5_0  q = u − 16 → qpass int5 symmetric code u;
  Q4_0  q = nibble − 8 → qpass int4 symmetric code u = nibble (weight j of a block in the low
        nibble of byte j, weight j + 16 in its high nibble).
Q4_K and Q6_K are qpass's own `q4_k` / `q6_k` grids: codes, sub-block scale (and min) codes
and float16 super-block scales kept as they are (formats/kquant.py dequantizes them as ggml).
The scales become float32 exactly (`:f16scale` specs). Blocks whose scales repeat along a row
are one qpass group (per channel, g128 or g64 when every row's blocks agree, else g32), which
is exact either way and gives a qpass export back its own spec. A block with d = 0 is zero
whatever its codes: it gets the midpoint code and takes its group's scale. Negative scales
(llama.cpp's own Q4_0 puts the block's signed extreme on −8, so d < 0 when that extreme is
positive) need qpass's `signed` grid. q/k rows of LLaDA and LLaMA files are put back from
llama.cpp's interleaved-RoPE order (gguf.rope_permutation, a row permutation: exact).

Float tensors (F32, F16, BF16) become float32 parameters; a quantized token_embd is
dequantized (in float32 as ggml does). Other tensor types (Q4_1, Q5_1, Q2_K, Q3_K, Q5_K, IQ*, …),
other architectures, rope scaling and metadata that contradict the family are one
CheckpointError each. The config comes from the `<arch>.*` metadata, read through the same
HF config reader as a config.json; the tokenizer from `tokenizer.ggml.*` (qpass's byte
tokenizer exactly; a BPE vocabulary with merges when its pre-tokenizer is one qpass rebuilds,
gpt-2, llama-bpe or qwen2; otherwise none, said in the manifest's `imported.tokenizer`)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from qpass.errors import CheckpointError
from qpass.formats.kquant import kquant_dequantize
from qpass.interop import gguf_blocks
from qpass.interop.gguf import ARCH, gguf_name, rope_permutation
from qpass.interop.gguf_read import GGUFFile
from qpass.interop.import_model import (ImportedLinear, build_imported, linear_shapes,
                                        weight_grid)
from qpass.models.naming import config_from_hf, key_map
from qpass.specs import QuantSpec

FORMAT = "gguf"
BLOCK = 32
F32, F16, Q4_0, Q8_0, BF16 = 0, 1, 2, 8, 30
Q5_0, Q4_K, Q6_K = gguf_blocks.GGML_Q5_0, gguf_blocks.GGML_Q4_K, gguf_blocks.GGML_Q6_K
FLOAT_TYPES = (F32, F16, BF16)
QUANT_TYPES = (Q4_0, Q5_0, Q8_0, Q4_K, Q6_K)
KQUANTS = {Q4_K: "q4_k", Q6_K: "q6_k"}
F16_FLOOR = 2.0 ** -24          # the scale of a group whose blocks all have d = 0
CONTROL = 3


def _md(f: GGUFFile, key: str, kind=(int,), default=None, required=True):
    v = f.metadata.get(key, default)
    if v is None:
        if required:
            raise CheckpointError(f"{f.path}: GGUF metadata lacks {key!r}")
        return None
    if not isinstance(v, kind) or isinstance(v, bool) and bool not in kind:
        raise CheckpointError(f"{f.path}: GGUF metadata {key!r} is {v!r:.60}, not "
                              f"{'/'.join(k.__name__ for k in kind)}")
    return v


def read_config(f: GGUFFile):
    """The ModelConfig the file's `<arch>.*` metadata describe (through the HF reader)."""
    arch = _md(f, "general.architecture", (str,))
    if arch not in ARCH.values():
        raise CheckpointError(f"{f.path}: GGUF architecture {arch!r}; qpass imports "
                              f"{', '.join(ARCH.values())} (the layouts its Denoiser computes)")
    a = arch
    rope_type = f.metadata.get(f"{a}.rope.scaling.type", "none")
    if rope_type not in ("none", None) or f"{a}.rope.scaling.factor" in f.metadata and \
            f.metadata[f"{a}.rope.scaling.factor"] not in (0.0, 1.0):
        raise CheckpointError(f"{f.path}: rope scaling ({rope_type}) is not imported from GGUF "
                              f"metadata; qpass would compute plain RoPE")
    d, heads = _md(f, f"{a}.embedding_length"), _md(f, f"{a}.attention.head_count")
    kv = _md(f, f"{a}.attention.head_count_kv", default=heads)
    head_dim = _md(f, f"{a}.rope.dimension_count", default=d // max(heads, 1))
    for k in ("key_length", "value_length"):
        if _md(f, f"{a}.attention.{k}", default=head_dim) != head_dim:
            raise CheckpointError(f"{f.path}: {a}.attention.{k} differs from the rotary "
                                  f"dimension {head_dim}; qpass rotates whole heads")
    embd = f.tensors.get("token_embd.weight")
    tokens = f.metadata.get("tokenizer.ggml.tokens")
    vocab = _md(f, f"{a}.vocab_size", default=embd.shape[0] if embd is not None
                else (len(tokens) if tokens is not None else None))
    causal = _md(f, f"{a}.attention.causal", (bool,), default=arch == "llama")
    if causal != (arch == "llama"):
        raise CheckpointError(f"{f.path}: {a}.attention.causal is {causal}; qpass's {arch} "
                              f"layout is {'causal' if arch == 'llama' else 'bidirectional'}")
    shift = _md(f, "diffusion.shift_logits", (bool,), default=arch == "dream")
    if shift != (arch == "dream"):
        raise CheckpointError(f"{f.path}: diffusion.shift_logits is {shift}; qpass's {arch} "
                              f"layout {'shifts' if arch == 'dream' else 'does not shift'} logits")
    tie = "output.weight" not in f.tensors
    has = lambda role: f"blk.0.{role}.bias" in f.tensors       # noqa: E731
    qkv, o, mlp = has("attn_q"), has("attn_output"), has("ffn_up")
    common = dict(vocab_size=vocab, rope_theta=float(_md(f, f"{a}.rope.freq_base", (int, float),
                                                         default=10000.0)),
                  rms_norm_eps=float(_md(f, f"{a}.attention.layer_norm_rms_epsilon",
                                         (int, float), default=1e-6)),
                  eos_token_id=_md(f, "tokenizer.ggml.eos_token_id", required=False),
                  pad_token_id=_md(f, "tokenizer.ggml.padding_token_id", required=False))
    mask = _md(f, "tokenizer.ggml.mask_token_id", required=False)
    name = _md(f, "general.name", (str,), default=arch)
    layers, ff = _md(f, f"{a}.block_count"), _md(f, f"{a}.feed_forward_length")
    ctx = _md(f, f"{a}.context_length", default=4096)
    if arch == "llada":
        if o or mlp or head_dim * heads != d:
            raise CheckpointError(f"{f.path}: LLaDA has q/k/v biases only and head_dim = "
                                  f"d_model / n_heads; this file does not")
        hf = dict(common, model_type="llada", architectures=["LLaDAModelLM"], d_model=d,
                  n_heads=heads, n_kv_heads=kv, n_layers=layers, mlp_hidden_size=ff,
                  embedding_size=vocab, mask_token_id=mask, include_bias=False,
                  include_qkv_bias=qkv, weight_tying=tie, max_sequence_length=ctx,
                  block_type="llama", activation_type="silu", layer_norm_type="rms",
                  name_or_path=name)
    else:
        hf = dict(common, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
                  num_key_value_heads=kv, head_dim=head_dim, intermediate_size=ff,
                  hidden_act="silu", tie_word_embeddings=tie, max_position_embeddings=ctx,
                  _name_or_path=name)
        if arch == "dream":
            if not qkv or o or mlp:
                raise CheckpointError(f"{f.path}: Dream has q/k/v biases only; this file's "
                                      f"biases are q/k/v {qkv}, o {o}, MLP {mlp}")
            hf.update(model_type="Dream", architectures=["DreamModel"], mask_token_id=mask)
        elif qkv == o:
            hf.update(model_type="llama", attention_bias=qkv, mlp_bias=mlp)
        elif qkv and not mlp:
            hf.update(model_type="qwen2")
        else:
            raise CheckpointError(f"{f.path}: no HF layout has biases on q/k/v {qkv}, o {o}, "
                                  f"MLP {mlp}")
    return config_from_hf(hf, f"{f.path} (GGUF metadata)")


def _parts(f: GGUFFile, name: str) -> gguf_blocks.Blocks:
    """The blocks of a quantized 2-D tensor, d (and dmin) as float32 (checked finite)."""
    t = f.tensors[name]
    if len(t.dims) != 2:
        raise CheckpointError(f"{f.path}: {name} is {len(t.dims)}-D; a linear weight is 2-D")
    K, N = t.dims
    b = gguf_blocks.unpack(t.ggml_type, np.asarray(f.data(name)), N, K)
    b.d = b.d.astype(np.float32)
    b.dmin = None if b.dmin is None else b.dmin.astype(np.float32)
    if not np.isfinite(b.d).all() or b.dmin is not None and not np.isfinite(b.dmin).all():
        raise CheckpointError(f"{f.path}: {name} has non-finite block scales")
    return b


def _blocks(f: GGUFFile, name: str) -> tuple[np.ndarray, torch.Tensor]:
    """(float32 block scales (N, K/32), unsigned codes (N, K) uint8) of a Q4_0/Q5_0/Q8_0
    tensor."""
    b = _parts(f, name)
    return b.d, torch.from_numpy(b.codes.copy())


def _kquant(f: GGUFFile, name: str):
    """(codes, sc, m, sup) torch tensors of a Q4_K / Q6_K tensor (sup: (N, K/256, 1|2))."""
    b = _parts(f, name)
    sup = b.d[..., None] if b.dmin is None else np.stack([b.d, b.dmin], axis=-1)
    return (torch.from_numpy(b.codes.copy()), torch.from_numpy(b.sc.copy()),
            None if b.m is None else torch.from_numpy(b.m.copy()), torch.from_numpy(sup))


def _groups(d: np.ndarray, K: int) -> tuple[int, np.ndarray]:
    """The largest group (K, 128, 64 or 32 weights) over which every row's block scales agree
    (blocks with d = 0 agree with anything), and the (N, G) scales."""
    N, nb = d.shape
    zero = d == 0
    for g in [K] + [s for s in (128, 64) if s < K and K % s == 0] + [BLOCK]:
        per = g // BLOCK
        blocks = d.reshape(N, nb // per, per)
        z = zero.reshape(N, nb // per, per)
        # each group's value: its first nonzero block's scale (F16_FLOOR if none)
        first = np.where(z.all(-1), F16_FLOOR, np.take_along_axis(
            blocks, np.argmax(~z, axis=-1)[..., None], -1)[..., 0])
        if g == BLOCK or np.all(z | (blocks == first[..., None])):
            return g, first.astype(np.float32)
    raise AssertionError("unreachable")


def quant_linear(f: GGUFFile, name: str, gen: str, rows: torch.Tensor | None,
                 bias: torch.Tensor | None) -> ImportedLinear:
    t = f.tensors[name]
    if t.ggml_type in KQUANTS:
        codes, sc, m, sup = _kquant(f, name)
        if rows is not None:                      # back to HF's rotate-half row order
            inv = torch.argsort(rows)
            codes, sc, sup = codes[inv], sc[inv], sup[inv]
            m = None if m is None else m[inv]
            bias = None if bias is None else bias[inv]
        spec = QuantSpec.parse(KQUANTS[t.ggml_type])
        return ImportedLinear(gen, codes.contiguous(), sc.contiguous(), spec,
                              zeros=None if m is None else m.contiguous(), bias=bias,
                              source=f"{name} ({t.type_name})", super_scale=sup.contiguous())
    d, codes = _blocks(f, name)
    bits = {Q8_0: 8, Q5_0: 5, Q4_0: 4}[t.ggml_type]
    N, K = codes.shape
    zero = torch.from_numpy((d == 0).repeat(BLOCK, axis=1))
    codes[zero] = 1 << (bits - 1)                # a zero block's weights are 0: midpoint codes
    g, scales = _groups(d, K)
    scales = torch.from_numpy(scales)
    if rows is not None:                          # back to HF's rotate-half row order
        inv = torch.argsort(rows)
        codes, scales = codes[inv], scales[inv]
        bias = None if bias is None else bias[inv]
    grid = weight_grid(scales, True, f"{f.path}: {name}")
    spec = QuantSpec(bits, granularity="channel" if g == K else "group",
                     group_size=None if g == K else g, grid=grid, scale_dtype="float16")
    return ImportedLinear(gen, codes.contiguous(), scales.contiguous(), spec, bias=bias,
                          source=f"{name} ({t.type_name})")


def dense_tensor(f: GGUFFile, name: str) -> torch.Tensor:
    """A float tensor (torch order) of an F32/F16/BF16 tensor, or a dequantized Q4_0/Q5_0/Q8_0
    (d·q, exact in float32) or Q4_K/Q6_K one (in float32 as ggml computes it): an embedding."""
    t = f.tensors[name]
    raw = np.asarray(f.data(name))
    if t.ggml_type == F32:
        out = torch.from_numpy(raw.view(np.float32).copy())
    elif t.ggml_type == F16:
        out = torch.from_numpy(raw.view(np.float16).astype(np.float32))
    elif t.ggml_type == BF16:
        out = torch.from_numpy(raw.view(np.int16).copy()).view(torch.bfloat16).float()
    elif t.ggml_type in KQUANTS:
        codes, sc, m, sup = _kquant(f, name)
        out = kquant_dequantize(codes, KQUANTS[t.ggml_type], sc, m, sup).reshape(-1)
    elif t.ggml_type in QUANT_TYPES:
        d, codes = _blocks(f, name)
        half = {Q8_0: 128, Q5_0: 16, Q4_0: 8}[t.ggml_type]
        q = codes.to(torch.float32).reshape(d.shape[0], d.shape[1], BLOCK) - half
        out = (q * torch.from_numpy(d)[..., None]).reshape(-1)
    else:
        raise CheckpointError(f"{f.path}: {name} is {t.type_name}; qpass imports F32, F16, BF16, "
                              f"Q4_0, Q5_0, Q8_0, Q4_K and Q6_K tensors")
    return out.reshape(t.shape)


def load_gguf(path):
    """A CompiledDenoiser of the GGUF file `path`, codes and scales kept as they are."""
    path = Path(path)
    f = GGUFFile(path)
    cfg = read_config(f)
    to_gen = {gguf_name(gen): gen for gen in key_map(cfg).values()}
    unknown = sorted(set(f.tensors) - set(to_gen))
    if unknown:
        raise CheckpointError(f"{path}: GGUF tensors {unknown[:5]} are no part of qpass's "
                              f"{cfg.family} layout; importing without them would compute a "
                              f"different model")
    missing = sorted(set(to_gen) - set(f.tensors))
    if missing:
        raise CheckpointError(f"{path}: the GGUF file lacks {missing[:5]}; it is incomplete")
    heads = {"q_proj": cfg.n_heads, "k_proj": cfg.n_kv_heads}
    permute = cfg.family in ("llada", "llama")
    shapes = linear_shapes(cfg)
    linears, dense = [], {}
    for name, gen in to_gen.items():
        t = f.tensors[name]
        parts = gen.split(".")
        role = parts[2] if parts[0] == "blocks" else ""
        module = gen.rpartition(".")[0]
        if t.shape != tuple(_shape_of(cfg, gen, shapes)):
            raise CheckpointError(f"{path}: {name} has shape {t.shape}; the metadata make "
                                  f"{gen} {tuple(_shape_of(cfg, gen, shapes))}")
        rows = rope_permutation(t.shape[0], heads[role]) if permute and role in heads else None
        if t.ggml_type in QUANT_TYPES and module in shapes:
            if gen.endswith(".bias"):
                raise CheckpointError(f"{path}: bias {name} is {t.type_name}; biases are float")
            bname = name[: -len("weight")] + "bias"
            bias = dense_tensor(f, bname) if bname in f.tensors else None
            linears.append(quant_linear(f, name, module, rows, bias))
        elif t.ggml_type in FLOAT_TYPES or (t.ggml_type in QUANT_TYPES and gen == "embed.weight"):
            x = dense_tensor(f, name)
            dense[gen] = x if rows is None else x[torch.argsort(rows)]
        else:
            raise CheckpointError(f"{path}: {name} is {t.type_name}; qpass imports F32, F16, "
                                  f"BF16, Q4_0, Q5_0, Q8_0, Q4_K and Q6_K (linear weights)")
    for q in linears:                                 # a quantized linear's bias is its own
        dense.pop(q.name + ".bias", None)
    tok, note = tokenizer_of(f, cfg.vocab_size)
    kinds = sorted({f.tensors[n].type_name for n in f.tensors})
    return build_imported(cfg, linears, dense, tok, FORMAT, path,
                          {"architecture": cfg.family, "tensor_types": kinds,
                           "tokenizer": note})


def _shape_of(cfg, gen: str, shapes) -> tuple[int, ...]:
    module, _, kind = gen.rpartition(".")
    if module in shapes:
        return shapes[module] if kind == "weight" else (shapes[module][0],)
    if gen == "embed.weight":
        return (cfg.vocab_size, cfg.d_model)
    return (cfg.d_model,)                              # norms


# ---- tokenizer ---------------------------------------------------------------------------------
# llama.cpp's pre-tokenizer regexes qpass rebuilds (llama-vocab.cpp), by tokenizer.ggml.pre
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
           r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
PRE_REGEX = {"llama-bpe": _LLAMA3, "qwen2": _LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}"),
             "gpt-2": None}          # None: GPT-2's own (ByteLevel's regex)


def tokenizer_of(f: GGUFFile, vocab_size: int):
    """(tokenizer or None, what was done) from the file's tokenizer.ggml.* metadata."""
    md = f.metadata
    tokens = md.get("tokenizer.ggml.tokens")
    if tokens is None:
        return None, "none in the file"
    if md.get("tokenizer.ggml.model") != "gpt2" or not isinstance(tokens, list):
        return None, f"model {md.get('tokenizer.ggml.model')!r} is not rebuilt (gpt2 BPE only)"
    types = list(np.asarray(md.get("tokenizer.ggml.token_type", [1] * len(tokens))))
    control = {t: i for i, (t, k) in enumerate(zip(tokens, types)) if k == CONTROL}
    # a merge of two control tokens never applies (qpass writes one for vocabularies without
    # merges, since llama.cpp needs the key and gguf-py refuses an empty array)
    merges = [m for m in md.get("tokenizer.ggml.merges") or []
              if not (isinstance(m, str) and all(p in control for p in m.split(" ")))]
    from transformers.convert_slow_tokenizer import bytes_to_unicode
    b2u = bytes_to_unicode()
    if not len(merges) and tokens[:256] == [b2u[i] for i in range(256)] and \
            {"<pad>", "<eos>", "<mask>"} <= set(control) and len(tokens) == vocab_size:
        from qpass.models.tokenizer import ByteTokenizer
        return ByteTokenizer(control, vocab_size), "qpass byte tokenizer"
    pre = md.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_REGEX:
        return None, (f"BPE vocabulary with pre-tokenizer {pre!r}, which qpass does not rebuild "
                      f"({', '.join(PRE_REGEX)})")
    return _bpe(tokens, list(merges), control, md, PRE_REGEX[pre]), f"BPE, pre-tokenizer {pre}"


def _bpe(tokens, merges, control, md, regex):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    vocab = {t: i for i, t in enumerate(tokens)}     # specials keep their ids
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    tk = Tokenizer(models.BPE(vocab, pairs, fuse_unk=False, byte_fallback=False))
    if regex is None:
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tk.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(regex), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens([AddedToken(t, special=True) for t, _ in
                           sorted(control.items(), key=lambda kv: kv[1])])
    ids = {k: md.get(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "padding")}
    named = {k: tokens[i] for k, i in ids.items() if isinstance(i, int) and 0 <= i < len(tokens)}
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=named.get("bos"),
                                  eos_token=named.get("eos"), pad_token=named.get("padding"))
    template = md.get("tokenizer.chat_template")
    if isinstance(template, str):
        tok.chat_template = template
    return tok

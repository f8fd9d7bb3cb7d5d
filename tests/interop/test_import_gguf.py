"""GGUF import (qpass/interop/import_gguf.py, gguf_read.py): files quantized by llama.cpp's own
reference quantizer (gguf-py's gguf.quants, which mirrors ggml's quantize_row_q4_0/q8_0) import
with every weight equal to gguf-py's own dequantization; qpass's exports come back with their
own group sizes; the byte tokenizer and a BPE vocabulary are rebuilt; malformed or unsupported
files are one CheckpointError."""
import gguf          # the interop extra: the reference reader the import is compared with
import numpy as np
import pytest
import torch

import qpass
from qpass import Pipeline, models, passes
from qpass.errors import CheckpointError
from qpass.interop import export_gguf, read_source
from qpass.interop.gguf import gguf_metadata, gguf_name, gguf_tensors, rope_permutation
from qpass.interop.gguf_file import STRING, Tensor, Value, write_gguf
from qpass.ir.qlinear import QuantLinear
from qpass.models.naming import key_map
from qpass.specs.quant_spec import GRIDS

Q = gguf.GGMLQuantizationType


@pytest.fixture(scope="module")
def llada():
    model = models.load("tiny-llada")
    c = Pipeline([passes.RTN()], scheme="int4:g32:sym:f16scale").run(model, progress=False,
                                                                      verify=False)
    return model, c


def _write(path, md, tensors):
    with open(path, "wb") as f:
        write_gguf(f, md, tensors)
    return path


def _llama_cpp_file(model, c, path, kinds):
    """qpass's GGUF layout and metadata with every linear weight quantized by llama.cpp's own
    reference quantizer from the float model (q/k rows in llama.cpp's RoPE order)."""
    src = read_source(c)
    ts, sd = gguf_tensors(src), model.state_dict()
    md = gguf_metadata(src, ts)
    gen = {gguf_name(g): g for g in key_map(model.config).values()}
    heads = {"q_proj": model.config.n_heads, "k_proj": model.config.n_kv_heads}
    out = []
    for t in ts:
        g = gen[t.name]
        role = g.split(".")[2] if g.startswith("blocks.") else ""
        if g.endswith("_proj.weight"):
            w = sd[g].float()
            if role in heads:
                w = w[rope_permutation(w.shape[0], heads[role])]
            kind = kinds(role)
            out.append(Tensor(t.name, int(kind), t.dims,
                              gguf.quants.quantize(w.numpy(), kind).tobytes()))
        else:
            out.append(t)
    return _write(path, md, out)


def _check_against_gguf_py(imp, path, cfg):
    r = gguf.GGUFReader(str(path))
    tensors = {t.name: t for t in r.tensors}
    heads = {"q_proj": cfg.n_heads, "k_proj": cfg.n_kv_heads}
    n = 0
    for name, m in imp.gm.named_modules():
        if not isinstance(m, QuantLinear):
            continue
        t = tensors[gguf_name(name + ".weight")]
        want = gguf.quants.dequantize(t.data, t.tensor_type)
        got = m.dequantized_weight(torch.float32)
        role = name.split(".")[2]
        if role in heads:
            got = got[rope_permutation(got.shape[0], heads[role])]
        np.testing.assert_array_equal(got.numpy(), want, err_msg=name)
        n += 1
    return n


def test_llama_cpp_quantized_file(llada, tmp_path):
    # llama.cpp's Q4_0 puts each block's signed extreme on -8: negative scales for the blocks
    # whose extreme is positive, held on qpass's signed grid; Q8_0 (absmax/127) on the full grid
    model, c = llada
    path = _llama_cpp_file(model, c, tmp_path / "lc.gguf",
                           lambda role: Q.Q4_0 if role.endswith(("q_proj", "k_proj", "v_proj",
                                                                 "o_proj")) else Q.Q8_0)
    if "signed" not in GRIDS:
        with pytest.raises(CheckpointError, match="negative"):
            qpass.load_compiled(path)
        return
    imp = qpass.load_compiled(path)
    assert _check_against_gguf_py(imp, path, model.config) == 6 * 7
    specs = {n.split(".")[-1]: str(m.weight_spec) for n, m in imp.gm.named_modules()
             if isinstance(m, QuantLinear) and n.startswith("blocks.0.")}
    assert specs["q_proj"] == "int4:g32:sym:signed:f16scale"
    assert specs["gate_proj"] == "int8:g32:sym:f16scale"
    # the imported model computes the float model with exactly those weights
    ref = models.load("tiny-llada")
    sd = ref.state_dict()
    for name, m in imp.gm.named_modules():
        if isinstance(m, QuantLinear):
            sd[name + ".weight"] = m.dequantized_weight(torch.float32)
    ref.load_state_dict(sd)
    ids = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(imp(ids), ref(ids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scheme,spec", [("int4:g128:sym:f16scale", "int4:g128:sym:f16scale"),
                                         ("int8:channel:f16scale", "int8:channel:f16scale")])
def test_group_sizes_come_back(scheme, spec, tmp_path):
    model = models.load("tiny-llada")
    c = Pipeline([passes.RTN()], scheme=scheme).run(model, progress=False, verify=False)
    imp = qpass.load_compiled(export_gguf(read_source(c), tmp_path / "m.gguf"))
    assert {str(m.weight_spec) for m in imp.gm.modules() if isinstance(m, QuantLinear)} == {spec}
    assert imp.specs() == c.specs()


def test_zero_blocks_and_quantized_embedding(llada, tmp_path):
    # a block with d = 0 is zero whatever its codes; a Q8_0 token_embd is dequantized exactly
    model, c = llada
    src = read_source(c)
    ts = gguf_tensors(src)
    md = gguf_metadata(src, ts)
    out = []
    for t in ts:
        if t.name == "blk.0.attn_q.weight":
            raw = np.frombuffer(t.data, np.uint8).reshape(-1, 18).copy()
            raw[0, :2] = 0                             # first block: d = 0, codes kept
            raw[1, :2] = 0
            t = Tensor(t.name, t.ggml_type, t.dims, raw.tobytes())
        if t.name == "token_embd.weight":
            e = model.state_dict()["embed.weight"].numpy()
            t = Tensor(t.name, int(Q.Q8_0), t.dims, gguf.quants.quantize(e, Q.Q8_0).tobytes())
        out.append(t)
    path = _write(tmp_path / "z.gguf", md, out)
    imp = qpass.load_compiled(path)
    r = {t.name: t for t in gguf.GGUFReader(str(path)).tensors}
    emb = gguf.quants.dequantize(r["token_embd.weight"].data, Q.Q8_0)
    np.testing.assert_array_equal(imp.gm.state_dict()["embed.weight"].numpy(), emb)
    q = imp.gm.get_submodule("blocks.0.q_proj").dequantized_weight()
    perm = rope_permutation(q.shape[0], model.config.n_heads)
    want = gguf.quants.dequantize(r["blk.0.attn_q.weight"].data, Q.Q4_0)
    np.testing.assert_array_equal(q[perm].numpy(), want)
    assert not want[0, :64].any()


def test_bpe_vocabulary_rebuilt(llada, tmp_path):
    # a BPE vocabulary with merges and a pre-tokenizer llama.cpp names (qwen2): the rebuilt
    # tokenizer splits text into the ids of the tokenizer it was written from
    from tokenizers import Regex, Tokenizer, decoders, models as tmodels, pre_tokenizers, trainers
    from qpass.interop.import_gguf import PRE_REGEX
    model, c = llada
    tk = Tokenizer(tmodels.BPE())
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRE_REGEX["qwen2"]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tk.decoder = decoders.ByteLevel()
    text = ["the cat sat on the mat, 12+5=17 and 37+48=85; the end."] * 50
    tk.train_from_iterator(text, trainers.BpeTrainer(
        vocab_size=261, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    vocab = tk.get_vocab()
    tokens = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    import json
    merges = [m if isinstance(m, str) else " ".join(m)
              for m in json.loads(tk.to_str())["model"]["merges"]]
    assert len(tokens) == 261 and merges
    tokens += [f"[PAD{i}]" for i in range(261, 264)]
    types = [3 if t == "<|endoftext|>" else (5 if t.startswith("[PAD") else 1) for t in tokens]
    src = read_source(c)
    ts = gguf_tensors(src)
    md = {k: v for k, v in gguf_metadata(src, ts).items() if not k.startswith("tokenizer.")}
    md.update({"tokenizer.ggml.model": Value(STRING, "gpt2"),
               "tokenizer.ggml.pre": Value(STRING, "qwen2"),
               "tokenizer.ggml.tokens": Value(9, tokens, STRING),
               "tokenizer.ggml.token_type": Value(9, types, 5),
               "tokenizer.ggml.merges": Value(9, merges, STRING),
               "tokenizer.ggml.eos_token_id": Value(4, vocab["<|endoftext|>"])})
    imp = qpass.load_compiled(_write(tmp_path / "bpe.gguf", md, ts))
    tok = imp.tokenizer
    for s in ["the cat sat on the mat", "12+5=17\n37+48=85 ", "Unseen WORDS 123 ünïcode"]:
        assert tok.encode(s, add_special_tokens=False) == tk.encode(s).ids, s
        assert tok.decode(tok.encode(s, add_special_tokens=False)) == s
    assert tok.eos_token == "<|endoftext|>"
    assert imp.manifest["imported"]["tokenizer"] == "BPE, pre-tokenizer qwen2"


# ---- malformed and unsupported files -----------------------------------------------------------
@pytest.fixture(scope="module")
def good(llada, tmp_path_factory):
    _, c = llada
    return export_gguf(read_source(c), tmp_path_factory.mktemp("g") / "m.gguf")


def _refused(path, *words):
    with pytest.raises(CheckpointError) as e:
        qpass.load_compiled(path)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_truncated_and_corrupt_headers(good, tmp_path):
    data = good.read_bytes()
    (tmp_path / "t.gguf").write_bytes(data[: len(data) // 2])
    _refused(tmp_path / "t.gguf", "outside the file")
    (tmp_path / "h.gguf").write_bytes(data[:200])
    _refused(tmp_path / "h.gguf", "not a GGUF file qpass can read")
    (tmp_path / "v.gguf").write_bytes(data[:4] + (1).to_bytes(4, "little") + data[8:])
    _refused(tmp_path / "v.gguf", "version 1")
    bad = bytearray(data)
    bad[16:24] = (1 << 60).to_bytes(8, "little")       # metadata count
    (tmp_path / "c.gguf").write_bytes(bytes(bad))
    _refused(tmp_path / "c.gguf", "metadata count")


def _rewrite(llada, tmp_path, md_fn=None, t_fn=None):
    _, c = llada
    src = read_source(c)
    ts = gguf_tensors(src)
    md = gguf_metadata(src, ts)
    if md_fn:
        md_fn(md)
    if t_fn:
        ts = t_fn(ts)
    return _write(tmp_path / "x.gguf", md, ts)


def test_other_k_quant_tensor_refused(llada, tmp_path):
    # Q4_K / Q6_K import (test_gguf_kquants.py); Q5_K is no qpass grid
    def k(ts):      # ffn_up rows of 256 weights: one Q5_K super-block (176 bytes) per row
        return [Tensor(t.name, int(Q.Q5_K), t.dims, bytes(t.dims[1] * 176))
                if t.name == "blk.0.ffn_up.weight" else t for t in ts]
    _refused(_rewrite(llada, tmp_path, t_fn=k), "blk.0.ffn_up.weight", "Q5_K",
             "F32, F16, BF16, Q4_0, Q5_0, Q8_0, Q4_K and Q6_K")


def test_other_architecture_and_metadata_refused(llada, tmp_path):
    def arch(md):
        md["general.architecture"] = Value(STRING, "qwen3")
    _refused(_rewrite(llada, tmp_path, arch), "architecture 'qwen3'")
    (tmp_path / "x.gguf").unlink()

    def scaling(md):
        md["llada.rope.scaling.type"] = Value(STRING, "yarn")
    _refused(_rewrite(llada, tmp_path, scaling), "rope scaling")
    (tmp_path / "x.gguf").unlink()

    def causal(md):
        md["llada.attention.causal"] = Value(7, True)
    _refused(_rewrite(llada, tmp_path, causal), "causal")


def test_extra_or_missing_tensor_refused(llada, tmp_path):
    extra = lambda ts: ts + [Tensor("rope_freqs.weight", 0, (32,), bytes(128))]    # noqa: E731
    _refused(_rewrite(llada, tmp_path, t_fn=extra), "rope_freqs.weight", "no part of")
    (tmp_path / "x.gguf").unlink()
    drop = lambda ts: [t for t in ts if t.name != "blk.2.ffn_norm.weight"]          # noqa: E731
    _refused(_rewrite(llada, tmp_path, t_fn=drop), "lacks", "blk.2.ffn_norm.weight")

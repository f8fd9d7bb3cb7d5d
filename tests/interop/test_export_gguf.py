"""GGUF export, read back with the gguf package's own GGUFReader and gguf.quants.dequantize and
compared with qpass's dequantized weights exactly; q/k of LLaDA in the row order llama.cpp's
converter gives them (its permute written here from its definition)."""
import gguf          # the interop extra (make's bootstrap installs it)
import numpy as np
import pytest
import torch

from qpass import Pipeline, models, passes, presets
from qpass.cli.main import main
from qpass.errors import CheckpointError
from qpass.interop import export_gguf, read_source
from qpass.interop.gguf_vocab import PASS_THROUGH_TEMPLATE
from qpass.ir.qlinear import is_quantized_module
from qpass.models.config import ModelConfig
from qpass.specs import Scheme

NAMES = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
         "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
W8A8_F16 = Scheme("w8a8-f16", "int8:channel:f16scale", "int8:token:dyn")


def llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # convert_hf_to_gguf's LLaDA/LLaMA q/k reordering: (heads, 2, hd/2, K) -> (heads, hd/2, 2, K)
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2) \
        .reshape(w.shape)


def read(path):
    r = gguf.GGUFReader(str(path))
    tensors = {t.name: t for t in r.tensors}
    fields = {name: f.contents() for name, f in r.fields.items()}
    return tensors, fields


def deq(t) -> np.ndarray:
    return gguf.quants.dequantize(t.data, t.tensor_type)


def check_weights(compiled, tensors, permute: bool):
    cfg = compiled.config
    n = 0
    for name, m in compiled.gm.named_modules():
        if not is_quantized_module(m):
            continue
        _, i, role = name.split(".")
        want = m.dequantized_weight(torch.float32).numpy()
        if permute and role in ("q_proj", "k_proj"):
            want = llama_cpp_permute(want, cfg.n_heads if role == "q_proj" else cfg.n_kv_heads)
        got = deq(tensors[f"blk.{i}.{NAMES[role]}.weight"])
        assert got.dtype == np.float32 and got.shape == want.shape
        np.testing.assert_array_equal(got, want, err_msg=name)
        n += 1
    return n


@pytest.fixture(scope="module")
def tiny():
    return models.load("tiny-llada")


def _rtn(model, scheme):
    return Pipeline([passes.RTN()], scheme=scheme).run(model, progress=False, verify=False)


@pytest.mark.parametrize("scheme,kind", [("q4_0", "Q4_0"), ("int4:g128:sym:f16scale", "Q4_0"),
                                         (W8A8_F16, "Q8_0"), ("q8_0", "Q8_0")])
def test_llada_round_trip_exact(tiny, tmp_path, scheme, kind):
    c = _rtn(tiny, scheme)
    out = export_gguf(read_source(c), tmp_path / "m.gguf")
    tensors, f = read(out)
    assert {t.tensor_type.name for n, t in tensors.items() if n.startswith("blk.")
            and n.endswith("_q.weight")} == {kind}
    assert check_weights(c, tensors, permute=True) == 6 * 7
    sd = c.gm.state_dict()
    np.testing.assert_array_equal(deq(tensors["token_embd.weight"]), sd["embed.weight"].numpy())
    np.testing.assert_array_equal(deq(tensors["output.weight"]), sd["head.weight"].numpy())
    assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"
    assert len(tensors) == 3 + 6 * 9
    # hyperparameters under the llama.cpp LLaDA architecture
    assert f["general.architecture"] == "llada"
    assert f["general.file_type"] == (2 if kind == "Q4_0" else 7)
    assert (f["llada.embedding_length"], f["llada.block_count"], f["llada.feed_forward_length"],
            f["llada.attention.head_count"], f["llada.attention.head_count_kv"],
            f["llada.rope.dimension_count"]) == (256, 6, 768, 4, 4, 64)
    assert f["llada.attention.causal"] is False and f["diffusion.shift_logits"] is False
    # the byte tokenizer: GPT-2 byte characters, specials as control tokens, no real merges
    # (one of two control tokens: llama.cpp needs the key, gguf-py refuses an empty array),
    # no BOS added, and a template that passes prompts through (no ChatML wrap)
    tokens = f["tokenizer.ggml.tokens"]
    assert len(tokens) == 264 and tokens[ord("a")] == "a" and tokens[ord(" ")] == "\u0120"
    assert tokens[257] == "<eos>" and f["tokenizer.ggml.eos_token_id"] == 257
    assert f["tokenizer.ggml.mask_token_id"] == 258
    assert f["tokenizer.ggml.merges"] == ["<pad> <eos>"]
    assert f["tokenizer.ggml.model"] == "gpt2" and f["tokenizer.ggml.bos_token_id"] == 257
    assert f["tokenizer.ggml.add_bos_token"] is False
    assert f["tokenizer.chat_template"] == PASS_THROUGH_TEMPLATE
    assert not [k for k, v in f.items() if isinstance(v, list) and not v]


def test_dream_naming_biases_and_gptq(tmp_path):
    # Dream (Qwen2 layout): no q/k reordering, qkv biases as F32 tensors, logit shift on;
    # GPTQ codes chosen with fp16 scales export exactly as well
    from qpass.calibration import CalibrationSet
    cfg = ModelConfig(d_model=128, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden=256,
                      vocab_size=101, mask_token_id=100, eos_token_id=99, qkv_bias=True,
                      logit_shift=True, family="dream", name="tiny-dream-128")
    model = models.build(cfg, seed=0)
    calib = CalibrationSet.from_ids(torch.arange(256) % 99, mask_id=100, n=2, seq_len=32, seed=0)
    c = presets.get("q4_0-gptq").run(model, calib, progress=False, verify=False)
    out = export_gguf(read_source(c), tmp_path / "d.gguf")
    tensors, f = read(out)
    assert check_weights(c, tensors, permute=False) == 2 * 7
    assert f["general.architecture"] == "dream" and f["diffusion.shift_logits"] is True
    np.testing.assert_array_equal(deq(tensors["blk.1.attn_k.bias"]),
                                  c.gm.get_submodule("blocks.1.k_proj").bias.detach().numpy())
    assert "tokenizer.ggml.tokens" not in f        # this model has no tokenizer


def test_cli_and_existing_file_kept(tiny, tmp_path):
    c = _rtn(tiny, "q4_0")
    c.save(tmp_path / "ck")
    assert main(["export", str(tmp_path / "ck"), "--format", "gguf",
                 "--out", str(tmp_path / "m.gguf")]) == 0
    tensors, _ = read(tmp_path / "m.gguf")
    check_weights(_rtn(tiny, "q4_0"), tensors, permute=True)
    before = (tmp_path / "m.gguf").read_bytes()
    assert main(["export", str(tmp_path / "ck"), "--format", "gguf",
                 "--out", str(tmp_path / "m.gguf")]) == 2
    assert (tmp_path / "m.gguf").read_bytes() == before


@pytest.mark.parametrize("scheme,why", [
    ("w4a16g128", r"not float16 numbers.*int4:g32:sym:f16scale"),
    ("int4:g32:asym", "asymmetric"),
    ("int3:g32:sym", "3-bit"),
    ("int4:g16:sym", "whole 32-weight blocks")])
def test_unrepresentable_schemes_refused(tiny, tmp_path, scheme, why):
    c = _rtn(tiny, scheme)
    with pytest.raises(CheckpointError, match=why):
        export_gguf(read_source(c), tmp_path / "x.gguf")
    assert not list(tmp_path.iterdir())


def test_hf_bpe_tokenizer_metadata(tiny, tmp_path):
    # an HF fast BPE tokenizer: its vocabulary in id order, merges as "a b", specials as
    # control tokens, ids the tokenizer does not use as unused [PAD<i>] entries
    from tokenizers import Tokenizer, models as tm, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tk = Tokenizer(tm.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.train_from_iterator(["hello world, hello qpass"] * 20, trainers.BpeTrainer(
        vocab_size=262, special_tokens=["<|endoftext|>", "<|mdm_mask|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>")
    src = read_source(_rtn(tiny, "q4_0"))
    src.tokenizer = fast
    _, f = read(export_gguf(src, tmp_path / "t.gguf"))
    tokens, types = f["tokenizer.ggml.tokens"], f["tokenizer.ggml.token_type"]
    vocab = fast.get_vocab()
    assert len(tokens) == 264 and all(tokens[i] == t for t, i in vocab.items())
    assert tokens[263] == "[PAD263]" and types[263] == 5
    assert types[vocab["<|endoftext|>"]] == 3 and types[vocab["el"]] == 1
    assert f["tokenizer.ggml.merges"][0] == "e l" and f["tokenizer.ggml.eos_token_id"] == 0
    assert "tokenizer.ggml.bos_token_id" not in f and f["tokenizer.ggml.add_bos_token"] is False
    assert f["tokenizer.ggml.pre"] == "gpt-2"      # ByteLevel with GPT-2's regex


def test_llama_gqa_tied(tmp_path):
    # LLaMA layout: k rows reordered per KV head (4 heads, 2 KV heads), tied head -> no
    # `output` tensor (llama.cpp then uses token_embd), causal attention
    c = _rtn(models.load("tiny-llama-random"), "q8_0")
    tensors, f = read(export_gguf(read_source(c), tmp_path / "l.gguf"))
    assert check_weights(c, tensors, permute=True) == 2 * 7
    assert "output.weight" not in tensors and f["general.architecture"] == "llama"
    assert f["llama.attention.causal"] is True and "diffusion.shift_logits" not in f

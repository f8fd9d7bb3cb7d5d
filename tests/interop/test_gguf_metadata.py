"""GGUF files llama.cpp's own tools take as they are: tokenizer metadata as its converter writes
it (pre-tokenizer type, add-BOS as the HF tokenizer adds it, the chat template, no empty array),
gguf-py's gguf_new_metadata rewriting an export, and unquantized F16/BF16/F32 files from a float
model (zoo name, HF checkpoint directory) for llama-quantize / llama-imatrix. With llama.cpp's
tools on PATH (or in $QPASS_LLAMA_CPP_BIN), also: llama-quantize's Q4_0 of qpass's F16 file is
qpass's q4_0-rtn code for code, and llama-diffusion-cli takes a prompt raw."""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import gguf
import numpy as np
import pytest
import torch
from test_export_gguf import llama_cpp_permute, read
from tokenizers import (Regex, Tokenizer, decoders, models as tm, pre_tokenizers, processors,
                        trainers)
from transformers import PreTrainedTokenizerFast

from qpass import Pipeline, models, passes
from qpass.cli.main import main
from qpass.errors import CheckpointError
from qpass.interop import gguf_vocab, read_source
from qpass.interop.gguf import export_gguf, model_source
from qpass.interop.gguf_vocab import PASS_THROUGH_TEMPLATE, pre_tokenizer

TEXT = ["hello world, hello qpass 123 4567", "it's the model's own template"] * 20
TEMPLATE = "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"


def _fast(pre, bos: bool, template: str | None = TEMPLATE) -> PreTrainedTokenizerFast:
    tk = Tokenizer(tm.BPE())
    tk.pre_tokenizer = pre
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(TEXT, trainers.BpeTrainer(
        vocab_size=262, special_tokens=["<|begin|>", "<|end|>"],     # + <tool>: tiny-llada's 264
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if bos:                        # tok(text) starts with <|begin|>, as LLaMA tokenizers do
        tk.post_processor = processors.TemplateProcessing(
            single="<|begin|> $A", special_tokens=[("<|begin|>", tk.token_to_id("<|begin|>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|begin|>",
                                   eos_token="<|end|>")
    fast.add_tokens(["<tool>"])    # an added token that is not special: USER_DEFINED
    fast.chat_template = template
    return fast


LLAMA3 = pre_tokenizers.Sequence([
    pre_tokenizers.Split(Regex(gguf_vocab._LLAMA3_RE), behavior="isolated"),
    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


@pytest.fixture(scope="module")
def tiny():
    return models.load("tiny-llada")


@pytest.fixture(scope="module")
def q4(tiny):
    return read_source(Pipeline([passes.RTN()], scheme="q4_0").run(tiny, progress=False,
                                                                     verify=False))


def test_hf_tokenizer_as_llama_cpp_converter_writes_it(q4, tmp_path):
    fast = _fast(LLAMA3, bos=True)
    q4.tokenizer, tok = fast, q4.tokenizer
    try:
        _, f = read(export_gguf(q4, tmp_path / "t.gguf"))
    finally:
        q4.tokenizer = tok
    assert f["tokenizer.ggml.pre"] == "llama-bpe"            # the Llama-3 split regex
    assert f["tokenizer.ggml.add_bos_token"] is True           # tok(text) adds <|begin|>
    assert f["tokenizer.ggml.add_eos_token"] is False
    assert f["tokenizer.ggml.bos_token_id"] == fast.bos_token_id
    assert f["tokenizer.chat_template"] == TEMPLATE
    types = f["tokenizer.ggml.token_type"]
    assert types[fast.convert_tokens_to_ids("<tool>")] == 4    # USER_DEFINED
    assert types[fast.bos_token_id] == 3                       # CONTROL
    assert not [k for k, v in f.items() if isinstance(v, list) and not v]
    # a tokenizer without a template (a base model) gets the pass-through one, no BOS added
    q4.tokenizer = _fast(LLAMA3, bos=False, template=None)
    try:
        _, f = read(export_gguf(q4, tmp_path / "u.gguf"))
    finally:
        q4.tokenizer = tok
    assert f["tokenizer.chat_template"] == PASS_THROUGH_TEMPLATE
    assert f["tokenizer.ggml.add_bos_token"] is False


def test_pre_tokenizer_types(monkeypatch):
    byte = pre_tokenizers.ByteLevel(add_prefix_space=False)
    digits = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte])
    qwen2 = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(gguf_vocab._QWEN2_RE), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    other = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex("\\w+"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    want = {"gpt-2": byte, "smollm": digits, "qwen2": qwen2, "llama-bpe": LLAMA3,
            "default": other}
    for name, pre in want.items():
        tok = _fast(pre, bos=False)
        data = json.loads(tok.backend_tokenizer.to_str())
        assert pre_tokenizer(tok, data) == name
    # a tokenizer llama.cpp's converter knows by the hash of its check text's ids wins
    tok = _fast(other, bos=False)
    h = hashlib.sha256(str(tok.encode(gguf_vocab.CHECK_TEXT)).encode()).hexdigest()
    monkeypatch.setitem(gguf_vocab.KNOWN_PRE, h, "smaug-bpe")
    assert pre_tokenizer(tok, {}) == "smaug-bpe"


def test_gguf_new_metadata_rewrites_an_export(q4, tmp_path):
    src = export_gguf(q4, tmp_path / "q.gguf")
    out = tmp_path / "r.gguf"
    r = subprocess.run([sys.executable, "-m", "gguf.scripts.gguf_new_metadata", str(src),
                        str(out), "--general-name", "rewritten"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and out.is_file(), r.stderr[-2000:]
    t1, f1 = read(src)
    t2, f2 = read(out)
    assert f2["general.name"] == "rewritten"
    assert {k: v for k, v in f1.items() if k != "general.name"} == \
        {k: v for k, v in f2.items() if k != "general.name"}
    for name, t in t1.items():
        np.testing.assert_array_equal(np.asarray(t.data), np.asarray(t2[name].data))


@pytest.mark.parametrize("kind,dtype,ftype", [("f16", torch.float16, 1),
                                               ("bf16", torch.bfloat16, 32),
                                               ("f32", torch.float32, 0)])
def test_unquantized_export_of_a_zoo_model(tiny, tmp_path, kind, dtype, ftype):
    out = export_gguf(model_source("tiny-llada"), tmp_path / f"m-{kind}.gguf", gguf_type=kind)
    tensors, f = read(out)
    assert f["general.file_type"] == ftype and f["general.architecture"] == "llada"
    cfg = tiny.config
    sd = tiny.state_dict()
    names = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
    for i in range(cfg.n_layers):
        for role, g in names.items():
            want = sd[f"blocks.{i}.{role}.weight"].to(dtype).float().numpy()
            if role in ("q_proj", "k_proj"):
                want = llama_cpp_permute(want, cfg.n_heads if role == "q_proj" else cfg.n_kv_heads)
            t = tensors[f"blk.{i}.{g}.weight"]
            assert t.tensor_type.name == kind.upper()
            np.testing.assert_array_equal(gguf.quants.dequantize(t.data, t.tensor_type), want)
        assert tensors[f"blk.{i}.attn_norm.weight"].tensor_type.name == "F32"
    assert tensors["token_embd.weight"].tensor_type.name == kind.upper()


def test_unquantized_export_of_an_hf_directory(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    fast = _fast(LLAMA3, bos=True)
    cfg = transformers.LlamaConfig(vocab_size=len(fast), hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=128,
                                   tie_word_embeddings=False, bos_token_id=fast.bos_token_id,
                                   eos_token_id=fast.eos_token_id)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(cfg)
    hf.save_pretrained(tmp_path / "hf")
    fast.save_pretrained(tmp_path / "hf")
    out = tmp_path / "m.gguf"
    assert main(["export", str(tmp_path / "hf"), "--format", "gguf", "--gguf-type", "bf16",
                 "--out", str(out)]) == 0
    tensors, f = read(out)
    w = hf.model.layers[1].self_attn.k_proj.weight.detach().to(torch.bfloat16).float().numpy()
    t = tensors["blk.1.attn_k.weight"]
    np.testing.assert_array_equal(gguf.quants.dequantize(t.data, t.tensor_type),
                                  llama_cpp_permute(w, 2))
    t = tensors["output.weight"]
    np.testing.assert_array_equal(gguf.quants.dequantize(t.data, t.tensor_type),
                                  hf.lm_head.weight.detach().to(torch.bfloat16).float().numpy())
    assert f["general.architecture"] == "llama" and f["tokenizer.chat_template"] == TEMPLATE
    assert f["tokenizer.ggml.add_bos_token"] is True and f["tokenizer.ggml.pre"] == "llama-bpe"


def test_unquantized_refusals(q4, tmp_path, capsys):
    with pytest.raises(CheckpointError, match="linears are quantized"):
        export_gguf(q4, tmp_path / "a.gguf", gguf_type="f16")
    assert main(["export", "tiny-llada", "--format", "gptq", "--gguf-type", "f16",
                 "--out", str(tmp_path / "b")]) == 2
    assert "--gguf-type f16 is an option of --format gguf" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


# ---- llama.cpp's own tools, where this machine has them (a bench builds them: docs/INTEROP.md)
def _tool(name: str) -> str | None:
    d = os.environ.get("QPASS_LLAMA_CPP_BIN")
    path = os.path.join(d, name) if d else shutil.which(name)
    return path if path and os.access(path, os.X_OK) else None


@pytest.mark.skipif(_tool("llama-quantize") is None or _tool("llama-diffusion-cli") is None,
                    reason="llama.cpp's llama-quantize / llama-diffusion-cli not found")
def test_llama_cpp_quantizes_qpass_f16_to_qpass_codes_and_takes_raw_prompts(q4, tmp_path):
    f16 = export_gguf(model_source("tiny-llada"), tmp_path / "f16.gguf", gguf_type="f16")
    theirs = tmp_path / "llama-q4_0.gguf"
    subprocess.run([_tool("llama-quantize"), str(f16), str(theirs), "Q4_0"], check=True,
                   capture_output=True, timeout=300)
    ours, _ = read(export_gguf(q4, tmp_path / "q4_0.gguf"))
    other, _ = read(theirs)
    n = 0
    for name, t in ours.items():             # tiny-llada's weights are float16 numbers
        if name.startswith("blk.") and t.tensor_type.name == "Q4_0":
            np.testing.assert_array_equal(np.asarray(t.data), np.asarray(other[name].data),
                                          err_msg=name)
            n += 1
    assert n == 6 * 7
    # a 300-byte prompt is 300 tokens: no ChatML wrap, no BOS
    assert diffusion_prompt_tokens(_tool("llama-diffusion-cli"), tmp_path / "q4_0.gguf",
                                   tmp_path) == 300


def diffusion_prompt_tokens(cli, model, tmp_path, tries: int = 10) -> int | None:
    """How many tokens llama-diffusion-cli makes of a 300-byte prompt: the error it prints for
    a 256-token context names the count. Its log thread does not always write that last line
    before the process exits (to a pipe or to --log-file), so it is run until it does."""
    for i in range(tries):
        log = tmp_path / f"diffusion-{i}.log"
        subprocess.run([cli, "-m", str(model), "-p", "ROMEO:" + "a" * 294, "-c", "256",
                        "--diffusion-steps", "4", "-n", "16", "--diffusion-block-length", "8",
                        "-t", "1", "--log-file", str(log)], capture_output=True, timeout=300)
        m = re.search(r"input too long \((\d+) tokens\)", log.read_text()) if log.exists() else None
        if m:
            return int(m.group(1))
    return None

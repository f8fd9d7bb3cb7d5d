"""GGUF export of an as-is LLaDA-MoE (qpass.interop.gguf_as_is) in llama.cpp's `llada-moe`
architecture, read back with the gguf package's own GGUFReader: every tensor's name, shape and
type; Q4_0/Q8_0 blocks dequantized by gguf.quants.dequantize equal qpass's dequantized codes
exactly (experts stacked in expert order); dense tensors equal the model's; metadata complete.
Refusals: blocks GGUF cannot hold, a model llama.cpp's graph does not compute, other as-is
architectures. If llama-diffusion-cli is on PATH it loads the file and generates a few tokens.

The remote-code fixture is built with expert_intermediate_size 32 (the default 16 makes the
experts' down_proj rows 16 weights long: no whole 32-weight Q4_0/Q8_0 block; that fixture is
the refusal case)."""
import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import gguf          # the interop extra (make's bootstrap installs it)
import numpy as np
import pytest
import torch

import qpass
from qpass.cli.main import main
from qpass.errors import CheckpointError
from qpass.interop.gguf_as_is import export_as_is_gguf
from qpass.ir.qlinear import QuantLinear
from qpass.presets import PRESETS

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "remote_code"
TEXT = open(os.path.join(os.path.dirname(qpass.__file__), "ops.py")).read()[:20000]
ATTN = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output"}
EXPERTS = {"gate_proj": "ffn_gate_exps", "up_proj": "ffn_up_exps", "down_proj": "ffn_down_exps"}
KIND = {"q4_0-rtn": gguf.GGMLQuantizationType.Q4_0, "q8_0-rtn": gguf.GGMLQuantizationType.Q8_0}
F32 = gguf.GGMLQuantizationType.F32


def _module(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# private instances: the config change below stays in this module's copy of build.py
remote = _module("_qpass_gguf_as_is_build", FIX / "build.py")
isolation = _module("_qpass_gguf_as_is_isolation", FIX / "isolation.py")


def _build(directory, expert_ff: int):
    cfg = remote.FAMILIES["llada_moe"]["config"]
    old = cfg["expert_intermediate_size"]
    cfg["expert_intermediate_size"] = expert_ff
    try:
        return remote.build("llada_moe", directory)
    finally:
        cfg["expert_intermediate_size"] = old


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """Per preset: the quantized AsIsModel, its directory and its GGUF file (q4_0 written by
    `qpass export`, q8_0 by the API from the model in memory)."""
    root = tmp_path_factory.mktemp("gguf_as_is")
    out = {}
    with isolation.private_modules_cache(root / "hf_modules"):   # left before the tests run
        d = _build(root / "lladamoe", 32)
        for preset in KIND:
            saved = root / preset
            q = PRESETS[preset]().run(d, calib=TEXT, out=saved, progress=False,
                                      trust_remote_code=True)
            f = root / f"{preset}.gguf"
            if preset == "q4_0-rtn":
                assert main(["export", str(saved), "--format", "gguf", "--trust-remote-code",
                             "--out", str(f)]) == 0
            else:
                export_as_is_gguf(q, f)
            out[preset] = dict(model=q, dir=saved, file=f, reader=gguf.GGUFReader(str(f)))
    return out


def _tensors(r):
    return {t.name: t for t in r.tensors}


def _fields(r):
    return {name: f.contents() for name, f in r.fields.items()}


def _shape(t):
    return tuple(int(x) for x in t.shape)          # ggml order: innermost first


def _deq(t) -> np.ndarray:
    return gguf.quants.dequantize(t.data, t.tensor_type)


def _want_weight(mod) -> np.ndarray:
    if isinstance(mod, QuantLinear) and mod.weight_spec is not None:
        return mod.quantized_weight().dequantize(torch.float32).numpy()
    return mod.weight.detach().float().numpy()


@pytest.mark.parametrize("preset", list(KIND))
def test_every_tensor_name_shape_and_type(exports, preset):
    m = exports[preset]["model"].model
    c = m.config
    H, V, E, F, hd = c.hidden_size, c.vocab_size, c.num_experts, c.expert_intermediate_size, \
        c.hidden_size // c.num_attention_heads
    Q = KIND[preset]
    want = {"token_embd.weight": ((H, V), F32), "output_norm.weight": ((H,), F32),
            "output.weight": ((H, V), F32)}
    for i in range(c.num_hidden_layers):
        b = f"blk.{i}."
        want.update({b + "attn_norm.weight": ((H,), F32), b + "ffn_norm.weight": ((H,), F32),
                     b + "attn_q_norm.weight": ((hd,), F32), b + "attn_k_norm.weight": ((hd,), F32),
                     b + "attn_q.weight": ((H, H), Q), b + "attn_k.weight": ((H, H), Q),
                     b + "attn_v.weight": ((H, H), Q), b + "attn_output.weight": ((H, H), Q),
                     b + "ffn_gate_inp.weight": ((H, E), F32),
                     b + "ffn_gate_exps.weight": ((H, F, E), Q),
                     b + "ffn_up_exps.weight": ((H, F, E), Q),
                     b + "ffn_down_exps.weight": ((F, H, E), Q)})
    got = {t.name: (_shape(t), t.tensor_type) for t in exports[preset]["reader"].tensors}
    assert got == want
    # exactly gguf-py's tensor list for the architecture, nothing else
    arch = gguf.MODEL_ARCH.LLADA_MOE
    allowed = {gguf.TENSOR_NAMES[t] for t in gguf.MODEL_TENSORS[arch]}
    assert {_template(n) for n in got} == allowed


def _template(name: str) -> str:
    """blk.3.attn_q.weight -> blk.{bid}.attn_q (gguf-py's TENSOR_NAMES form)."""
    parts = name.rsplit(".", 1)[0].split(".")
    return ".".join(["blk", "{bid}"] + parts[2:]) if parts[0] == "blk" else ".".join(parts)


@pytest.mark.parametrize("preset", list(KIND))
def test_blocks_dequantize_to_qpass_weights_exactly(exports, preset):
    m = exports[preset]["model"].model
    t = _tensors(exports[preset]["reader"])
    n_quantized = 0
    for i, layer in enumerate(m.model.layers):
        mods = {f"blk.{i}.{g}.weight": getattr(layer.self_attn, p) for p, g in ATTN.items()}
        mods[f"blk.{i}.ffn_gate_inp.weight"] = layer.mlp.gate
        for name, mod in mods.items():
            got = _deq(t[name])
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, _want_weight(mod), err_msg=name)
            n_quantized += isinstance(mod, QuantLinear) and mod.weight_spec is not None
        for p, g in EXPERTS.items():
            got = _deq(t[f"blk.{i}.{g}.weight"])          # (E, N, K)
            assert got.shape[0] == len(layer.mlp.experts)
            for e, expert in enumerate(layer.mlp.experts):
                mod = getattr(expert, p)
                assert isinstance(mod, QuantLinear) and mod.weight_spec is not None
                np.testing.assert_array_equal(got[e], _want_weight(mod), err_msg=f"{g}[{e}]")
                n_quantized += 1
        for name, p in ((f"blk.{i}.attn_norm.weight", layer.input_layernorm.weight),
                        (f"blk.{i}.ffn_norm.weight", layer.post_attention_layernorm.weight),
                        (f"blk.{i}.attn_q_norm.weight", layer.self_attn.q_norm.weight),
                        (f"blk.{i}.attn_k_norm.weight", layer.self_attn.k_norm.weight)):
            np.testing.assert_array_equal(_deq(t[name]), p.detach().numpy(), err_msg=name)
    for name, p in (("token_embd.weight", m.model.embed_tokens.weight),
                    ("output_norm.weight", m.model.norm.weight),
                    ("output.weight", m.lm_head.weight)):
        np.testing.assert_array_equal(_deq(t[name]), p.detach().numpy(), err_msg=name)
    c = m.config
    assert n_quantized == c.num_hidden_layers * (4 + 3 * c.num_experts)


@pytest.mark.parametrize("preset", list(KIND))
def test_metadata_is_complete(exports, preset):
    q = exports[preset]["model"]
    c = q.model.config
    f = _fields(exports[preset]["reader"])
    a = "llada-moe"
    want = {"general.architecture": a, "general.file_type": {"q4_0-rtn": 2, "q8_0-rtn": 7}[preset],
            "general.quantization_version": 2,
            f"{a}.context_length": c.max_position_embeddings,
            f"{a}.embedding_length": c.hidden_size, f"{a}.block_count": c.num_hidden_layers,
            f"{a}.feed_forward_length": c.expert_intermediate_size * c.num_experts_per_tok,
            f"{a}.expert_feed_forward_length": c.expert_intermediate_size,
            f"{a}.expert_count": c.num_experts, f"{a}.expert_used_count": c.num_experts_per_tok,
            f"{a}.attention.head_count": c.num_attention_heads,
            f"{a}.attention.head_count_kv": c.num_key_value_heads,
            f"{a}.rope.dimension_count": c.hidden_size // c.num_attention_heads,
            f"{a}.vocab_size": c.vocab_size, f"{a}.attention.causal": False,
            "diffusion.shift_logits": False, "tokenizer.ggml.model": "gpt2",
            # the fixture's tokenizer.json: GPT-2's byte-level regex, llama.cpp's "gpt-2" type
            "tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.mask_token_id": remote.MASK,
            "tokenizer.ggml.bos_token_id": remote.BOS, "tokenizer.ggml.eos_token_id": remote.EOS,
            "tokenizer.ggml.padding_token_id": remote.PAD}
    assert {k: f.get(k) for k in want} == want
    assert f[f"{a}.rope.freq_base"] == pytest.approx(c.rope_theta)
    assert f[f"{a}.attention.layer_norm_rms_epsilon"] == pytest.approx(c.rms_norm_eps)
    tokens = f["tokenizer.ggml.tokens"]
    assert len(tokens) == len(f["tokenizer.ggml.token_type"]) == c.vocab_size
    assert tokens[remote.MASK] == "<mask>"
    assert f["tokenizer.ggml.token_type"][remote.MASK] == 3           # CONTROL
    # no empty array (gguf-py refuses to rewrite one), though this tokenizer has no merges and
    # llama.cpp requires the key for a "gpt2" vocabulary: one merge of two control tokens,
    # which never applies to text (qpass.interop.gguf_vocab)
    merges = json.loads((exports[preset]["dir"] / "tokenizer.json").read_text())["model"]["merges"]
    assert merges == []
    assert len(f["tokenizer.ggml.merges"]) == 1
    for piece in f["tokenizer.ggml.merges"][0].split(" "):
        assert f["tokenizer.ggml.token_type"][f["tokenizer.ggml.tokens"].index(piece)] == 3
    assert not [k for k, v in f.items() if isinstance(v, list) and not v]
    assert all(v != "" for v in f.values())


def test_blocks_gguf_cannot_hold_are_refused(tmp_path, capsys):
    """Default fixture: expert down_proj rows of 16 weights, quantized per channel: no whole
    Q4_0 block, one error naming the linear and the presets to use, nothing written."""
    with isolation.private_modules_cache(tmp_path / "hf_modules"):
        d = _build(tmp_path / "lladamoe16", 16)
        saved = tmp_path / "q4"
        q = PRESETS["q4_0-rtn"]().run(d, calib=TEXT, out=saved, progress=False,
                                      trust_remote_code=True)
        with pytest.raises(CheckpointError, match=r"experts\.0\.down_proj.*32-weight blocks"):
            export_as_is_gguf(q, tmp_path / "a.gguf")
        # a configuration llama.cpp's llada-moe does not compute: every difference named
        c = q.model.config
        c.norm_topk_prob, c.routed_scaling_factor = True, 2.5
        with pytest.raises(CheckpointError, match=r"norm_topk_prob.*routed_scaling_factor 2\.5"):
            export_as_is_gguf(q, tmp_path / "b.gguf")
        c.norm_topk_prob, c.routed_scaling_factor = False, 1
        capsys.readouterr()
        assert main(["export", str(saved), "--format", "gguf", "--trust-remote-code",
                     "--out", str(tmp_path / "c.gguf")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "down_proj" in err[0] and "q4_0" in err[0], err
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".gguf" or ".gguf." in p.name]


def test_other_as_is_architectures_are_refused_before_loading(exports, tmp_path, capsys):
    """A manifest naming another architecture: one error naming what GGUF export supports and
    the format that architecture exports as; the checkpoint is not loaded (no remote code)."""
    other = tmp_path / "sdar"
    shutil.copytree(exports["q4_0-rtn"]["dir"], other)
    man = other / "qpass_as_is.json"
    meta = json.loads(man.read_text())
    meta["architecture"] = "SDARForCausalLM"
    man.write_text(json.dumps(meta))
    out = tmp_path / "sdar.gguf"
    assert main(["export", str(other), "--format", "gguf", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "SDARForCausalLM" in err[0] and "LLaDAMoEModelLM (llama.cpp llada-moe)" in err[0]
    assert "compressed-tensors only" in err[0]
    assert not out.exists()
    assert main(["export", str(exports["q4_0-rtn"]["dir"]), "--format", "gptq",
                 "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "also as --format gguf" in err[0], err


@pytest.mark.skipif(shutil.which("llama-diffusion-cli") is None,
                    reason="llama.cpp's llama-diffusion-cli is not on PATH")
@pytest.mark.parametrize("preset", list(KIND))
def test_llama_cpp_loads_and_generates(exports, preset):
    """Exit 0 means the file loaded as a diffusion model (llama-diffusion-cli exits 1 when
    loading fails or the architecture is not a diffusion one) and was sampled: 128 positions
    (the chat-templated prompt, then masks), 4 blocks of 32, 8 steps. Its log is written by a
    background thread and may lose its last lines at exit, so only failures found in it count."""
    f = exports[preset]["file"]
    r = subprocess.run(["llama-diffusion-cli", "-m", str(f), "-p", "ab",
                        "--diffusion-steps", "8", "--diffusion-block-length", "32",
                        "-ub", "128", "-c", "128", "-t", "1", "--temp", "0", "--seed", "1"],
                       capture_output=True, text=True, errors="replace", timeout=120)
    log = r.stdout + r.stderr
    assert r.returncode == 0, log[-3000:]
    assert "failed" not in log and "error" not in log.lower(), log[-3000:]

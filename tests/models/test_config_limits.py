"""Config sanity before allocation (DESIGN §6, qpass/models/config_limits.py): a config.json or
a manifest's config that lies about its sizes is one QpassError naming the field, raised
before anything is allocated; every released dLLM's config still passes and builds as before;
any value in any field gives either a model or one QpassError, never another exception."""
import json
import math
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import qpass
from qpass.errors import ConfigError, QpassError
from qpass.models import NAMED_CONFIGS, ModelConfig, build, zoo_names
from qpass.models.config import llada_8b, tiny_dream, tiny_llada, tiny_llama, tiny_moe, tiny_sdar
from qpass.models.config_limits import estimate
from qpass.models.loading import read_config
from qpass.models.naming import config_to_hf
from qpass.models.rope import SUPPORTED_TYPES


def _family_config(family: str) -> ModelConfig:
    if family == "qwen2":
        return tiny_llama().replace(qkv_bias=True, tie_embeddings=False)
    if family == "llama-hd256":
        return tiny_llama().replace(explicit_head_dim=256)
    return {"llama": tiny_llama, "llada": tiny_llada, "dream": tiny_dream}[family]()


def _hf_dict(family: str) -> dict:
    """A tiny config.json of each layout qpass reads."""
    return config_to_hf(_family_config(family))


def _write(d: Path, cfg: dict) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg))      # NaN/inf written as JSON allows them
    return d


# ---------------------------------------------------------------- every real model passes

def test_named_and_zoo_configs_pass_and_the_estimate_is_exact():
    """The estimate the limits use counts exactly the parameters the built model has."""
    cfgs = [f() for f in NAMED_CONFIGS.values()] + [read_config(qpass.models.loading.ZOO_DIR / z)
                                                    for z in zoo_names()]
    for cfg in cfgs:
        m = build(cfg, device="meta")
        assert estimate(cfg.to_dict())["parameters"] == sum(p.numel() for p in m.parameters())
        assert ModelConfig.from_dict(cfg.to_dict()) == cfg           # passes unchanged


def _moe(d, layers, heads, kv, mlp, vocab, experts, k, moe, shared=1, dense=1, ctx=32768,
         hd=None, groups=1, topk_groups=1):
    return ModelConfig(d_model=d, n_layers=layers, n_heads=heads, n_kv_heads=kv, mlp_hidden=mlp,
                       vocab_size=vocab, n_experts=experts, n_experts_per_tok=k, moe_hidden=moe,
                       n_shared_experts=shared, first_dense_layers=dense, max_seq_len=ctx,
                       explicit_head_dim=hd, n_expert_groups=groups, topk_groups=topk_groups)


def _hf_llama(d, layers, heads, kv, hd, mlp, vocab, ctx, **kw):
    return dict(model_type="llama", hidden_size=d, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv, head_dim=hd,
                intermediate_size=mlp, vocab_size=vocab, max_position_embeddings=ctx,
                rope_theta=1e6, rms_norm_eps=1e-6, hidden_act="silu", **kw)


# Published layouts (sizes as their config.json give them), the largest released models
# included: the limits must be generous, not tight.
REAL_HF = {
    "LLaDA-8B": config_to_hf(llada_8b()),
    "Dream-7B (131k positions)": dict(config_to_hf(NAMED_CONFIGS["dream-7b"]()),
                                      max_position_embeddings=131072, use_sliding_window=False,
                                      sliding_window=131072, max_window_layers=28),
    "DiffusionGemma-like 27B, 128k": _hf_llama(5376, 62, 32, 16, 128, 21504, 262208, 131072),
    "DiffusionGemma-like 4B, head_dim 256, 128k": _hf_llama(2560, 34, 8, 4, 256, 10240,
                                                            262208, 131072),
    "Llama-3.1-405B": _hf_llama(16384, 126, 128, 8, 128, 53248, 128256, 131072),
    "Llama-4-Scout context (10M)": _hf_llama(5120, 48, 40, 8, 128, 16384, 202048, 10485760),
}
REAL_MOE = {
    "LLaDA-MoE-7B": lambda: NAMED_CONFIGS["llada-moe-7b"](),
    "LLaDA2.0-flash (100B)": lambda: _moe(4096, 32, 32, 4, 9216, 157184, 256, 8, 1024,
                                          groups=8, topk_groups=4),
    "Kimi-K2-like (1T)": lambda: _moe(7168, 61, 64, 64, 18432, 163840, 384, 8, 2048,
                                      ctx=131072, hd=128),
}


@pytest.mark.parametrize("name", sorted(REAL_HF))
def test_real_hf_configs_pass(tmp_path, name):
    cfg = read_config(_write(tmp_path, REAL_HF[name]))
    assert cfg.max_seq_len == REAL_HF[name].get("max_position_embeddings",
                                                REAL_HF[name].get("max_sequence_length"))


@pytest.mark.parametrize("name", sorted(REAL_MOE))
def test_real_moe_configs_pass(name):
    cfg = REAL_MOE[name]()
    p = estimate(cfg.to_dict())["parameters"]
    assert 5e9 < p < 1.1e12, p


def test_an_8b_config_builds_on_meta_as_before():
    m = build(llada_8b(), device="meta")
    assert sum(p.numel() for p in m.parameters()) == 8015581184
    assert m.rope_cos.shape == (4096, 128) and m.rope_cos.is_meta


def test_integral_floats_are_sizes():
    d = tiny_llada().to_dict()
    d.update(d_model=64.0, n_layers=2.0)
    cfg = ModelConfig.from_dict(d)
    assert (cfg.d_model, cfg.n_layers) == (64, 2) and type(cfg.d_model) is int
    assert cfg == tiny_llada()


# -------------------------------------------------- lying config.json: refused before allocating

HUGE = 10 ** 400          # a JSON integer no float holds
# (layout, changes to its config.json, the field the one error line must name)
HF_ATTACKS = [
    ("llama", {"num_hidden_layers": 10 ** 7}, "num_hidden_layers"),
    ("qwen2", {"num_hidden_layers": 10 ** 7}, "num_hidden_layers"),   # its layer-type list
    ("llama", {"max_position_embeddings": 2 ** 40}, "max_position_embeddings"),
    ("llama", {"hidden_size": 2 ** 30, "head_dim": None}, "hidden_size"),
    ("llama", {"head_dim": 2 ** 30}, "head_dim"),
    ("llama", {"intermediate_size": 2 ** 40}, "intermediate_size"),
    ("llama", {"vocab_size": 2 ** 40}, "vocab_size"),
    ("llama", {"max_position_embeddings": math.inf}, "max_position_embeddings"),
    ("llama", {"rope_theta": HUGE}, "rope_theta"),
    ("llama", {"rms_norm_eps": HUGE}, "rms_norm_eps"),
    ("llama", {"rope_scaling": {"rope_type": "linear", "factor": HUGE}}, "factor"),
    ("llada", {"n_layers": 10 ** 7}, "n_layers"),
    ("llada", {"max_sequence_length": 2 ** 40}, "max_sequence_length"),
    ("llada", {"d_model": 2 ** 30}, "d_model"),
    ("llada", {"mlp_hidden_size": None, "mlp_ratio": "4", "d_model": 2 ** 33}, "mlp_ratio"),
    ("dream", {"num_attention_heads": 2 ** 40}, "num_attention_heads"),
]
# the same lies beside weights that fit them (RoPE tables are derived: no weight is large)
HF_ATTACKS_WITH_WEIGHTS = [
    ("llama", {"max_position_embeddings": 2 ** 40}, "max_position_embeddings"),
    ("llada", {"max_sequence_length": 2 ** 40}, "max_sequence_length"),
    ("llama-hd256", {"max_position_embeddings": 2 ** 24}, "RoPE"),   # each size fine, the
]                                                                    # table 2**32 elements

PROBE = textwrap.dedent("""
    import json, resource, sys
    import qpass
    def vm_bytes():
        for line in open("/proc/self/status"):
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    # from here on the process may map 1 GiB more than it has: any real allocation of a lying
    # size fails (MemoryError / RuntimeError), which is not the ConfigError the test wants
    resource.setrlimit(resource.RLIMIT_AS, (vm_bytes() + 2 ** 30, resource.RLIM_INFINITY))
    out = []
    for d in sys.argv[1:]:
        try:
            qpass.models.load(d)
            out.append(["loaded", "", False])
        except BaseException as e:
            out.append([type(e).__name__, str(e)[:400], isinstance(e, qpass.QpassError)])
    print(json.dumps(out))
""")


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_lying_config_json_is_refused_before_any_allocation(tmp_path):
    """Each lie in a config.json with no weights beside it (the check must not need them):
    loading in a process that can map only 1 GiB more ends in one ConfigError naming the
    field. One subprocess for all cases keeps it fast; its timeout is only a safety net."""
    dirs = []
    cases = [(c, False) for c in HF_ATTACKS] + [(c, True) for c in HF_ATTACKS_WITH_WEIGHTS]
    for i, ((fam, changes, _), weights) in enumerate(cases):
        d = tmp_path / f"c{i}"
        if weights:
            qpass.models.save_checkpoint(build(_family_config(fam)), d)
        cfg = json.loads((d / "config.json").read_text()) if weights else _hf_dict(fam)
        for k, v in changes.items():
            if v is None:
                cfg.pop(k, None)
            else:
                cfg[k] = v
        dirs.append(str(_write(d, cfg)))
    run = subprocess.run([sys.executable, "-c", PROBE, *dirs], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads(run.stdout.strip().splitlines()[-1])
    for ((fam, changes, field), _), (kind, msg, is_qpass) in zip(cases, results):
        assert is_qpass and kind == "ConfigError", (fam, changes, kind, msg)
        assert field in msg and "\n" not in msg, (fam, changes, kind, msg)
        assert "config.json" in msg


# ---------------------------------------------------- lying ModelConfig dict (a manifest's)

# (changes to tiny_llada's dict, the field named)
DICT_ATTACKS = [
    ({"n_layers": 10 ** 7}, "n_layers"),
    ({"max_seq_len": 2 ** 40}, "max_seq_len"),
    ({"d_model": 2 ** 30}, "d_model"),
    ({"vocab_size": 2 ** 40}, "vocab_size"),
    ({"explicit_head_dim": 2 ** 30}, "explicit_head_dim"),
    ({"n_experts": 10 ** 6, "n_experts_per_tok": 2, "moe_hidden": 8}, "n_experts"),
    ({"n_experts": 4, "n_experts_per_tok": 2, "moe_hidden": 8, "n_shared_experts": 10 ** 6},
     "n_shared_experts"),
    ({"n_layers": True}, "n_layers"),
    ({"d_model": 64.5}, "d_model"),
    ({"max_seq_len": "4096"}, "max_seq_len"),
    ({"mask_token_id": "3"}, "mask_token_id"),
    ({"rope_theta": math.inf}, "rope_theta"),
    ({"rope_theta": 1.0}, "rope_theta"),
    ({"norm_eps": 2.0}, "norm_eps"),
    ({"n_heads": 3}, "n_heads"),                                   # 64 % 3
    ({"n_heads": 64, "n_kv_heads": 64}, "head_dim"),               # head_dim 1: no RoPE pairs
    ({"n_kv_heads": 8}, "n_kv_heads"),                             # more KV heads than heads
    ({"family": "gpt2"}, "family"),
    ({"name": ["x"]}, "name"),
    ({"extra": []}, "extra"),
    ({"rope_scaling": {"rope_type": "linear", "factor": "x"}}, "factor"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0,
                       "high_freq_factor": 4.0, "original_max_position_embeddings": 64}},
     "low_freq_factor"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0, "evil": 1}}, "evil"),
    ({"n_experts": 8, "n_experts_per_tok": 8, "moe_hidden": 8, "n_expert_groups": 4,
      "topk_groups": 1}, "n_experts_per_tok"),                     # 8 picks from 2 eligible
    ({"first_dense_layers": 5}, "first_dense_layers"),
    ({"attn_block_size": 8192}, "attn_block_size"),
    # each size within its own limit, the whole too large: the allocation estimate refuses
    ({"d_model": 2 ** 17, "n_layers": 4096, "mlp_hidden": 2 ** 20, "n_heads": 512,
      "n_kv_heads": 512, "mask_token_id": None, "eos_token_id": None}, "parameters"),
    ({"vocab_size": 2 ** 22, "d_model": 2 ** 13, "n_heads": 64, "n_kv_heads": 64}, "embedding"),
    ({"max_seq_len": 2 ** 24, "d_model": 4096, "n_heads": 16, "n_kv_heads": 16}, "RoPE"),
]


@pytest.mark.parametrize("changes,field", DICT_ATTACKS, ids=[f for _, f in DICT_ATTACKS])
def test_lying_model_config_dict_is_one_error(changes, field):
    d = dict(tiny_llada().to_dict(), **changes)
    for make in (lambda: ModelConfig.from_dict(d, where="manifest.json config"),
                 lambda: ModelConfig(**d)):
        with pytest.raises(ConfigError) as e:
            make()
        assert field in str(e.value) and "\n" not in str(e.value)
    assert "manifest.json config" in str(pytest.raises(ConfigError, ModelConfig.from_dict, d,
                                                       where="manifest.json config").value)


@pytest.mark.parametrize("bad,says", [([1, 2], "JSON object"), ({"d_model": 64}, "lacks")])
def test_model_config_that_is_no_config_is_one_error(bad, says):
    with pytest.raises(ConfigError, match=says):
        ModelConfig.from_dict(bad)


def _tamper_helper():
    """tests/runtime/tamper.py (edits a manifest and rehashes it), imported by path."""
    import importlib.util
    path = Path(__file__).resolve().parents[1] / "runtime" / "tamper.py"
    spec = importlib.util.spec_from_file_location("qpass_tests_tamper", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("field,value", [("n_layers", 10 ** 7), ("max_seq_len", 2 ** 40),
                                         ("d_model", "64")])
def test_manifest_config_that_lies_is_refused(tmp_path, field, value):
    """A compiled checkpoint's manifest config goes through the same check."""
    tamper = _tamper_helper()
    d = tamper.tampered(tamper.FIX / "llada_w4a16_rtn", tmp_path / "ck",
                        lambda m: m["config"].update({field: value}))
    with pytest.raises(ConfigError, match=field):
        qpass.load_compiled(d)


def test_capture_refuses_inputs_longer_than_the_model():
    m = build(tiny_llada(), device="meta")
    ids = torch.zeros(1, tiny_llada().max_seq_len + 1, dtype=torch.long, device="meta")
    with pytest.raises(qpass.CaptureError, match="max_seq_len 4096"):
        qpass.capture(m, (ids,))


# ------------------------------------------ any value in any field: a model or one QpassError

JUNK = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 70),
    st.sampled_from([0, 2 ** 24 + 1, 2 ** 31, 2 ** 40, 10 ** 7, HUGE, -HUGE]),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([64.0, 1e-6, 0.5, 1e300]),
    st.text(max_size=4), st.lists(st.integers(-1, 3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(-1, 3), max_size=2))
ROPE_KEYS = ["rope_type", "factor", "low_freq_factor", "high_freq_factor",
             "original_max_position_embeddings", "attention_factor", "mscale", "mscale_all_dim",
             "beta_fast", "beta_slow", "truncate", "type", "rope_theta", "junk"]
ROPE = st.dictionaries(st.sampled_from(ROPE_KEYS),
                       st.one_of(st.sampled_from(SUPPORTED_TYPES), JUNK,
                                 st.floats(0.5, 64.0)), max_size=6)
BASES = [tiny_llada, tiny_dream, tiny_llama, tiny_moe, tiny_sdar]
FIELDS = [f for f in tiny_llada().to_dict()]


def _must_build_or_refuse(make) -> None:
    try:
        cfg = make()
    except QpassError as e:
        assert "\n" not in str(e)
        return
    m = build(cfg, device="meta")
    n = min(4, cfg.max_seq_len)
    out = m(torch.zeros(1, n, dtype=torch.long, device="meta"))
    assert out.shape == (1, n, cfg.vocab_size)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=st.sampled_from(BASES), field=st.sampled_from(FIELDS), value=JUNK,
       second=st.one_of(st.none(), st.tuples(st.sampled_from(FIELDS), JUNK)), rope=ROPE,
       use_rope=st.booleans())
@example(base=tiny_llada, field="rope_theta", value=HUGE, second=None, rope={},
         use_rope=False)                          # main: OverflowError from math.isfinite
@example(base=tiny_llada, field="max_seq_len", value=HUGE, second=None, rope={},
         use_rope=False)                          # main: RuntimeError from the RoPE tables
@example(base=tiny_llada, field="d_model", value=64, second=None, use_rope=True,
         rope={"rope_type": "linear", "factor": "x"})           # main: TypeError in RoPE
def test_any_value_in_any_model_config_field(base, field, value, second, rope, use_rope):
    d = base().to_dict()
    if use_rope:
        d["rope_scaling"] = rope
    else:
        d[field] = value
        if second is not None:                    # and a second field, for combinations
            d[second[0]] = second[1]
    _must_build_or_refuse(lambda: ModelConfig.from_dict(d))


HF_KEYS = sorted(set().union(*(_hf_dict(f) for f in ("llama", "qwen2", "llada", "dream"))) | {
    "head_dim", "rope_scaling", "rope_parameters", "sliding_window", "use_sliding_window",
    "max_window_layers", "layer_types", "mlp_ratio", "embedding_size", "multi_query_attention",
    "partial_rotary_factor", "original_max_position_embeddings", "architectures", "hidden_act"})
JSON_JUNK = st.one_of(JUNK, ROPE, st.lists(st.sampled_from(["full_attention",
                                                            "sliding_attention"]), max_size=3))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(family=st.sampled_from(["llama", "qwen2", "llada", "dream"]),
       changes=st.dictionaries(st.sampled_from(HF_KEYS), JSON_JUNK, min_size=1, max_size=3))
@example(family="llama", changes={"rope_theta": HUGE})            # main: OverflowError
@example(family="llada", changes={"max_sequence_length": math.inf})   # main: OverflowError
@example(family="llama", changes={"max_position_embeddings": 2 ** 40, "head_dim": 16})
def test_any_value_in_any_config_json_field(family, changes):
    cfg = dict(_hf_dict(family), **changes)
    with tempfile.TemporaryDirectory() as tmp:
        d = _write(Path(tmp), cfg)
        _must_build_or_refuse(lambda: read_config(d))

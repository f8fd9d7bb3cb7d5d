"""Issue 25, part 3: a compiled checkpoint whose tensors contradict their modules (edited by a
stranger who also rewrote every hash) is refused at load with one CheckpointError naming the
module and the tensor, before any kernel sees it (qpass/runtime/tensor_checks.py)."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qpass
from qpass import passes as P
from qpass.errors import BackendError, CheckpointError
from tamper import FIX, tampered, tampered_tensors

MAIN = FIX.parent / "ckpt_main_32d14b6"
Q = "blocks.0.q_proj"          # tiny-dream: 112 -> 112, with a bias
DAMAGED = "modified or is damaged"


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """Real checkpoints: tiny-dream (q/k/v biases) RTN int4:g16:asym lowered to W4A16 and the
    same simulated (QuantLinear), plus saved ones of other kinds from tests/fixtures."""
    root = tmp_path_factory.mktemp("sources")
    model = qpass.models.load("tiny-dream-random")
    qpass.Pipeline([P.RTN("int4:g16:asym"), P.Lower()]).run(model, progress=False) \
        .save(root / "w4a16")
    qpass.Pipeline([P.RTN("int4:g16:asym")]).run(model, progress=False).save(root / "sim")
    return {"w4a16": root / "w4a16", "sim": root / "sim",
            "w8a8": MAIN / "llada_w8a8kv8_rtn_lowered", "w4a8": MAIN / "llada_w4a8_gptq_lowered",
            "static": MAIN / "llada_w4a8_duquant_static"}


# ----- lies: (source, change to the tensors, change to the manifest, what the error names) ----
def _set(name, fn):
    def mutate(t):
        t[name] = fn(t[name])
    return mutate


def _drop_zeros(m):
    del m["tensors"][f"{Q}.zeros"]
    m["graph"]["modules"][Q]["none_buffers"].append("zeros")


def _spec(path, spec):
    def mutate(m):
        m["graph"]["modules"][path]["kwargs"]["weight_spec"] = spec
    return mutate


def _kwarg(path, key, value):
    def mutate(m):
        m["graph"]["modules"][path]["kwargs"][key] = value
    return mutate


def _add(name, t, kind="buffer"):
    def tensors(ts):
        ts[name] = t

    def manifest(m):
        m["tensors"][name] = {"kind": kind, "persistent": True}
    return tensors, manifest


def _g3(ts):             # a consistent g3 lie: scales/zeros shaped as the constructor makes them
    ts[f"{Q}.scales"] = torch.ones(112, 112 // 3)
    ts[f"{Q}.zeros"] = torch.full((112, 112 // 3), 8, dtype=torch.int32)


def _nan_at(t, value=float("nan")):
    t = t.clone()
    t.view(-1)[0] = value
    return t


_extra = _add(f"{Q}.extra", torch.zeros(3))
_shadow = _add(f"{Q}.group_size", torch.zeros(1), kind="param")
_o_bias = _add("blocks.0.o_proj.bias", torch.zeros(112), kind="param")

LIES = {
    # the W4A16 Triton kernel read 255 floats past a 1-element bias of a 256-output linear
    "short-bias": ("w4a16", _set(f"{Q}.bias", lambda t: t[:1].clone()), None, [Q, "'bias'"]),
    "scales-1x1": ("w4a16", _set(f"{Q}.scales", lambda t: t[:1, :1].clone()), None,
                   [Q, "'scales'", "(1, 1)"]),
    "qweight-int64": ("w4a16", _set(f"{Q}.qweight", lambda t: t.to(torch.int64)), None,
                      [Q, "'qweight'", "int64"]),
    "scales-fp16": ("w4a16", _set(f"{Q}.scales", lambda t: t.half()), None,
                    [Q, "'scales'", "float16"]),
    "scales-fp64": ("w4a16", _set(f"{Q}.scales", lambda t: t.double()), None,
                    [Q, "'scales'", "float64"]),
    "spec-g3": ("w4a16", _g3, _spec(Q, "int4:g3:asym"), [Q, "group size 3", "in_features=112"]),
    "zeros-above-range": ("w4a16", _set(f"{Q}.zeros", lambda t: _nan_at(t, 16)), None,
                          [Q, "'zeros'", "[0, 15]"]),
    "zeros-negative": ("w4a16", _set(f"{Q}.zeros", lambda t: _nan_at(t, -3)), None,
                       [Q, "'zeros'", "[0, 15]"]),
    "zeros-transposed": ("w4a16", _set(f"{Q}.zeros", lambda t: t.t().contiguous()), None,
                         [Q, "'zeros'", "(112, 7)"]),
    "qweight-transposed": ("w4a16", _set("blocks.0.gate_proj.qweight",
                                         lambda t: t.t().contiguous()), None,
                           ["blocks.0.gate_proj", "'qweight'"]),
    "qweight-short-rows": ("w4a16", _set(f"{Q}.qweight", lambda t: t[:, :-1].clone()), None,
                           [Q, "'qweight'", "(112, 16)"]),
    "scales-inf": ("w4a16", _set(f"{Q}.scales", lambda t: _nan_at(t, float("inf"))), None,
                   [Q, "'scales'", "non-finite"]),
    "scales-nan": ("w4a16", _set(f"{Q}.scales", _nan_at), None, [Q, "'scales'", "non-finite"]),
    "scales-negative": ("w4a16", _set(f"{Q}.scales", lambda t: -t), None,
                        [Q, "'scales'", "not positive"]),
    "zeros-dropped": ("w4a16", lambda t: t.pop(f"{Q}.zeros"), _drop_zeros,
                      [Q, "'zeros'", "missing"]),
    "extra-tensor": ("w4a16", _extra[0], _extra[1], [Q, "'extra'"]),
    "tensor-shadows-attribute": ("w4a16", _shadow[0], _shadow[1], [Q, "'group_size'"]),
    "bias-wrong-dtype": ("w4a16", _set(f"{Q}.bias", lambda t: t.half()), None,
                         [Q, "'bias'", "float16"]),
    "bias-not-in-arguments": ("w4a16", _o_bias[0], _o_bias[1], ["blocks.0.o_proj", "'bias'"]),
    "spec-unparsable": ("w4a16", None, _spec(Q, "int4:banana"), [Q, "banana"]),
    "weight-spec-per-token": ("w4a16", None, _spec(Q, "int4:token:dyn:asym"),
                              [Q, "per-token"]),
    "head-transposed": ("w4a16", _set("head.weight", lambda t: t.t().contiguous()), None,
                        ["'head'", "'weight'", "(101, 112)"]),
    "embedding-int": ("w4a16", _set("embed.weight", lambda t: t.to(torch.int32)), None,
                      ["embedding", "int32"]),
    "norm-short": ("w4a16", _set("blocks.0.attn_norm.weight", lambda t: t[:3].clone()), None,
                   ["blocks.0.attn_norm", "'weight'", "(112,)"]),
    "rope-nan": ("w4a16", _set("rope_cos", _nan_at), None, ["rope_cos", "non-finite"]),
    "rope-sin-narrower": ("w4a16", _set("rope_sin", lambda t: t[:, :3].clone()), None,
                          ["rope_sin", "shape"]),
    "rope-head-dim": ("w4a16", lambda t: [t.__setitem__(k, t[k][:, :3].clone())
                                         for k in ("rope_cos", "rope_sin")], None,
                      ["rope_cos", "(4096, 4)"]),
    # simulated (QuantLinear) modules
    "sim-zeros-above-range": ("sim", _set(f"{Q}.zeros", lambda t: _nan_at(t, 99)), None,
                              [Q, "'zeros'"]),
    "sim-scales-fp64": ("sim", _set(f"{Q}.scales", lambda t: t.double()), None,
                        [Q, "'scales'", "float64"]),
    "sim-short-bias": ("sim", _set(f"{Q}.bias", lambda t: t[:1].clone()), None, [Q, "'bias'"]),
    "sim-spec-g3": ("sim", _g3, _spec(Q, "int4:g3:asym"), [Q, "group size 3"]),
    # W8A8 with fused norm/silu quantizers (tiny-llada)
    "w8a8-qweight-uint8": ("w8a8", _set("blocks.0.q_proj.qweight", lambda t: t.view(torch.uint8)),
                           None, ["blocks.0.q_proj", "'qweight'", "uint8"]),
    "w8a8-qweight-transposed": ("w8a8", _set("blocks.0.gate_proj.qweight",
                                             lambda t: t.t().contiguous()), None,
                                ["blocks.0.gate_proj", "'qweight'", "(192, 64)"]),
    "normquant-short-weight": ("w8a8", _set("blocks.0.attn_norm.weight", lambda t: t[:1].clone()),
                               None, ["blocks.0.attn_norm", "NormQuant", "'weight'"]),
    "normquant-bits": ("w8a8", None, _kwarg("blocks.0.attn_norm", "bits", 3),
                       ["blocks.0.attn_norm", "bits 3"]),
    "silumulquant-grid": ("w8a8", None, _kwarg("blocks.0.silu_mul_quant", "grid", "banana"),
                          ["blocks.0.silu_mul_quant", "banana"]),
    # W4A8 per channel
    "w4a8-scales-two-groups": ("w4a8", _set("blocks.0.q_proj.scales",
                                            lambda t: t.repeat(1, 2).contiguous()), None,
                               ["blocks.0.q_proj", "'scales'", "(64, 1)"]),
    # static activation scales and DuQuant transforms
    "act-scale-shape": ("static", _set("blocks.0.q_proj.act_scale", lambda t: t.repeat(1, 2)),
                        None, ["blocks.0.q_proj", "'act_scale'", "(1, 1)"]),
    "act-scale-nan": ("static", _set("blocks.0.q_proj.act_scale", _nan_at), None,
                      ["blocks.0.q_proj", "'act_scale'", "non-finite"]),
    "act-zero-out-of-range": ("static", _set("blocks.0.q_proj.act_zero",
                                             lambda t: _nan_at(t, 300)), None,
                              ["blocks.0.q_proj", "'act_zero'", "[0, 255]"]),
    "duquant-not-square": ("static", _set("duquant_transform_0", lambda t: t[:, :63].clone()),
                           None, ["duquant_transform_0"]),
    "duquant-wrong-size": ("static", _set("duquant_transform_0", lambda t: t[:32, :32].clone()),
                           None, ["duquant_transform_0", "in_features=64"]),
}


@pytest.mark.parametrize("lie", sorted(LIES))
def test_lie_is_refused_at_load(sources, tmp_path, lie):
    src, tensors, manifest, named = LIES[lie]
    d = tmp_path / "ck"
    if tensors is None:
        tampered(sources[src], d, manifest)
    else:
        tampered_tensors(sources[src], d, tensors, manifest)
    with pytest.raises(CheckpointError) as info:
        qpass.load_compiled(d)
    msg = str(info.value)
    assert "\n" not in msg and DAMAGED in msg, msg
    for fragment in named:
        assert fragment in msg, (fragment, msg)


def test_untouched_sources_load_and_run(sources):
    ids = torch.tensor([[1, 5, 7, 2, 3]])
    for name, d in sources.items():
        with torch.no_grad():
            assert torch.isfinite(qpass.load_compiled(d)(ids)).all(), name


def test_every_builtin_module_class_has_a_tensor_contract():
    from qpass.runtime import graph_io, tensor_checks
    graph_io._register_builtins()
    builtin = {cls for cls, _ in graph_io._MODULE_CLASSES.values()
               if cls.__module__.startswith(("qpass.", "torch."))}
    assert builtin and builtin <= set(tensor_checks._CONTRACTS)


# ----- property: any shape or dtype lie on a LoweredLinear's tensors is a CheckpointError ------
_ORIGINAL = {"qweight": ((112, 16), torch.int32), "scales": ((112, 7), torch.float32),
             "zeros": ((112, 7), torch.int32), "bias": ((112,), torch.float32)}
_DTYPES = [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64, torch.float16,
           torch.bfloat16, torch.float32, torch.float64, torch.bool]


@st.composite
def _tensor_lie(draw):
    name = draw(st.sampled_from(sorted(_ORIGINAL)))
    shape0, dtype0 = _ORIGINAL[name]
    shape = tuple(draw(st.lists(st.integers(0, 130), min_size=0, max_size=3)))
    dtype = draw(st.sampled_from(_DTYPES))
    if shape == shape0 and dtype == dtype0:
        shape = shape0[:-1] + (shape0[-1] + 1,)
    return name, shape, dtype


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lie=_tensor_lie())
def test_any_shape_or_dtype_lie_on_a_lowered_linear_is_a_checkpoint_error(sources, tmp_path_factory,
                                                                          lie):
    name, shape, dtype = lie
    d = tmp_path_factory.mktemp("lie") / "ck"

    def mutate(ts):
        ts[f"{Q}.{name}"] = torch.zeros(shape, dtype=dtype)
    tampered_tensors(sources["w4a16"], d, mutate)
    try:
        qpass.load_compiled(d)
    except CheckpointError as e:
        assert Q in str(e) and repr(name) in str(e), str(e)
    else:
        pytest.fail(f"{name} {shape} {dtype} loaded")


def test_a_lie_planted_after_load_is_refused_by_the_kernel(sources):
    # a caller that bypasses the load checks (tensors swapped in memory) still cannot make a
    # kernel read past an operand: the op refuses with a BackendError
    model = qpass.load_compiled(sources["w4a16"])
    lin = model.gm.get_submodule(Q)
    lin.bias = torch.nn.Parameter(lin.bias.detach()[:1].clone())
    with pytest.raises(BackendError, match="bias"):
        with torch.no_grad():
            model(torch.tensor([[1, 5, 7]]))

"""Facts that are checked (DESIGN §3): requires / requires_any before any compute, `ensures`
after each pass, one scheme per pipeline, versioned pass configs, and Pipeline.from_manifest
reproducing a checkpoint bit for bit."""
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import qpass
from qpass import passes as P
from qpass.calibration import CalibrationSet
from qpass.pipeline import Fact, Pass, PassResult


@dataclass(eq=False, repr=False)
class _ClaimsRotated(Pass):
    """A pass that says it rotated the stream but changes nothing."""
    provides = frozenset({Fact.ROTATED})
    exact = True

    def run(self, g, ctx):
        return PassResult()


@dataclass(eq=False, repr=False)
class _ClaimsFused(Pass):
    """A pass that says the norms are fused but leaves their weights."""
    provides = frozenset({Fact.NORMS_FUSED})

    def run(self, g, ctx):
        return PassResult()


def _model():
    return qpass.models.load("tiny-llada-random")


@pytest.mark.parametrize("fake, fact, words", [(_ClaimsRotated, "ROTATED", "records a rotation"),
                                               (_ClaimsFused, "NORMS_FUSED", "still has a weight")])
def test_a_pass_claiming_a_fact_that_does_not_hold_is_named(fake, fact, words):
    with pytest.raises(qpass.PipelineError, match=f"{fake.__name__} claims {fact}.*{words}"):
        qpass.Pipeline([fake()]).run(_model(), progress=False)


def test_lower_requires_a_quantizing_pass():
    with pytest.raises(qpass.PipelineError, match="Lower .*requires .*ACTS_QUANTIZED or "
                                                  "WEIGHTS_QUANTIZED"):
        qpass.Pipeline([P.FuseNorms(), P.Rotate(), P.Lower()])


def test_a_second_weight_rounding_pass_is_an_error():
    with pytest.raises(qpass.PipelineError, match="GPTQ .*rounds weights, but RTN"):
        qpass.Pipeline([P.RTN(), P.GPTQ()])


def test_the_scheme_is_set_once_and_read_by_every_pass():
    pipe = qpass.Pipeline([P.FuseNorms(), P.RTN(), P.ObserveActivations()], scheme="w4a8")
    rtn, obs = pipe.passes[1], pipe.passes[2]
    assert rtn.scheme.name == "w4a8" and str(obs.scheme.act) == "int8:token:dyn"
    assert Fact.ACTS_QUANTIZED in rtn.provides               # from the pipeline's scheme
    explicit = qpass.Pipeline([P.RTN("w8a8")], scheme="w4a4").passes[0]
    assert explicit.scheme.name == "w8a8"                    # a pass's own scheme wins
    assert P.RTN().scheme.name == "w4a16g128"                # outside a pipeline: the default
    calib = CalibrationSet.from_ids(torch.arange(2000) % 90, mask_id=96, n=2, seq_len=16, seed=1)
    out = pipe.run(_model(), calib, progress=False)
    q = out.gm.get_submodule("blocks.0.q_proj")
    assert str(q.weight_spec) == "int4:channel" and str(q.act_spec) == "int8:token:dyn"


@pytest.mark.parametrize("p", [P.GPTQ("w4a4", act_order=True, damp=0.02), P.Rotate(seed=7),
                               P.SmoothQuant("search", kinds=("norm", "v_rows")),
                               P.ObserveActivations("int8:tensor", observer="mse"),
                               P.DuQuant(block_size=16), P.AWQ("w3a16g128", n_grid=5), P.Lower()])
def test_pass_configs_round_trip_through_json(p):
    config = json.loads(json.dumps(p.config()))
    again = type(p).from_config(config)
    assert again.config() == p.config() and repr(again) == repr(p)


def test_a_config_of_another_version_is_refused():
    config = P.RTN("w4a4").config()
    config["version"] = 99
    with pytest.raises(qpass.PipelineError, match="version 99"):
        P.RTN.from_config(config)
    with pytest.raises(qpass.PipelineError, match="unknown parameters"):
        P.RTN.from_config({"version": 1, "bits": 4})


PIPELINES = {
    "w4a4-quarot": lambda: qpass.presets.get("w4a4-quarot"),
    "awq-g32": lambda: qpass.Pipeline([P.AWQ(n_grid=4), P.RTN()], scheme="int4:g32:asym"),
    "duquant-lowered": lambda: qpass.Pipeline([P.FuseNorms(), P.DuQuant(block_size=16), P.RTN(),
                                               P.Lower(backend="reference")], scheme="w4a8"),
}


@pytest.mark.parametrize("name", PIPELINES)
def test_from_manifest_reproduces_the_checkpoint_bit_for_bit(name, tmp_path):
    model = _model()
    calib = CalibrationSet.from_ids(torch.arange(3000) % 90, mask_id=96, n=4, seq_len=24, seed=2)
    first = PIPELINES[name]().run(model, calib, progress=False)
    first.save(tmp_path / "a")
    rebuilt = qpass.Pipeline.from_manifest(tmp_path / "a")
    assert [p.config() for p in rebuilt] == [p.config() for p in PIPELINES[name]()]
    rebuilt.run(model, calib, progress=False).save(tmp_path / "b")
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_from_manifest_of_an_unversioned_checkpoint_says_so():
    with pytest.raises(qpass.PipelineError, match="before pass configs were versioned"):
        qpass.Pipeline.from_manifest(Path(__file__).parents[1] / "fixtures/ckpt_v1/llada_w4a16_rtn")


def test_from_manifest_of_a_pre_grid_checkpoint_says_so(tmp_path):
    """A version-1 manifest with versioned pass configs: its specs meant the restricted grid,
    so rebuilding it with today's (full-grid) parsing would not reproduce it."""
    from qpass.runtime.checkpoint import MANIFEST, SUMS, sha256
    model = _model()
    calib = CalibrationSet.from_ids(torch.arange(3000) % 90, mask_id=96, n=4, seq_len=24, seed=2)
    out = tmp_path / "ck"
    qpass.Pipeline([P.RTN("int4:g32:sym")]).run(model, calib, progress=False).save(out)
    m = json.loads((out / MANIFEST).read_text())
    m["version"] = 1
    (out / MANIFEST).write_text(json.dumps(m))
    (out / SUMS).write_text(f"{sha256(out / MANIFEST)}  {MANIFEST}\n")
    with pytest.raises(qpass.PipelineError, match="restricted grid"):
        qpass.Pipeline.from_manifest(out)
    loaded = qpass.load_compiled(out)            # still loads, its specs read as restricted
    specs = [str(m.weight_spec) for _, m in loaded.gm.named_modules()
             if getattr(m, "weight_spec", None) is not None]
    assert specs and all(s == "int4:g32:sym:restricted" for s in specs)

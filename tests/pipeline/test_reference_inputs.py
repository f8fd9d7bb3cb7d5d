"""Pass.reference_inputs: a pass reads the earlier stages as they are after every pass
(ctx.inputs) and also as they were just before it ran (ctx.reference, the executor's own
boundary cache for it) — for a pass ahead of every quantizing pass, the float model's run.

Reference: the same pass in a pipeline that quantizes nothing, whose processed inputs are the
float model's (bitwise equal, the same float operations)."""
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import qpass
from qpass import passes as P
from qpass.calibration import CalibrationSet
from qpass.errors import PipelineError
from qpass.pipeline import Pass, PassResult, Pipeline

SEEN: dict = {}


def _tensors(cache) -> list[torch.Tensor]:
    return [v.clone() for values in cache for v in values.values()
            if isinstance(v, torch.Tensor) and v.is_floating_point()]


@dataclass(eq=False, repr=False)
class _Records(Pass):
    """Keeps, per stage, the float tensors of its inputs and of its reference."""
    reference_inputs = "before"
    needs_calibration = True

    def run(self, g, ctx):
        SEEN[ctx.stage.name] = (_tensors(ctx.inputs), _tensors(ctx.reference))
        return PassResult()


@dataclass(eq=False, repr=False)
class _Conflicting(_Records):
    stage_inputs = "after"


@pytest.fixture(scope="module")
def tiny():
    model = qpass.models.load("tiny-llada")
    text = (Path(qpass.__file__).parent / "zoo/tiny-llada/eval/shakespeare_test.txt").read_text()
    return model, CalibrationSet.from_texts([text], model.tokenizer, n=4, seq_len=64, seed=0)


def _seen(model, calib, *after) -> dict:
    SEEN.clear()
    Pipeline([P.FuseNorms(), _Records(), *after], scheme="w4a4").run(model, calib,
                                                                     progress=False)
    return dict(SEEN)


def test_reference_is_the_float_models_run_while_inputs_are_processed(tiny):
    model, calib = tiny
    quantized = _seen(model, calib, P.RTN(), P.ObserveActivations())
    floating = _seen(model, calib)
    blocks = [name for name in floating if name.startswith("block")]
    assert len(blocks) == model.config.n_layers
    for name in blocks:
        inputs, reference = quantized[name]
        float_inputs, float_reference = floating[name]
        assert all(torch.equal(a, b) for a, b in zip(reference, float_inputs))
        assert all(torch.equal(a, b) for a, b in zip(float_reference, float_inputs))
        differ = any(not torch.equal(a, b) for a, b in zip(inputs, reference))
        assert differ == (name != "block 0"), name     # block 0 reads only the embedding


def test_one_cache_holds_one_state(tiny):
    model, calib = tiny
    with pytest.raises(PipelineError, match="one boundary cache holds one state"):
        Pipeline([P.FuseNorms(), _Conflicting(), P.RTN()], scheme="w4a4").run(
            model, calib, progress=False)

"""Shared fixtures of the backend tests: the trained tiny-llada and a Lower-a-copy helper."""
import copy

import pytest

import qpass
from qpass import passes as P
from qpass.ir import QGraph
from qpass.pipeline import Fact
from qpass.runtime.compiled import CompiledDenoiser


@pytest.fixture(scope="module")
def model():
    return qpass.models.load("tiny-llada")


def _lower_copy(sim, **kw):
    """The simulated model's graph, copied and lowered (the same weights and specs)."""
    g = QGraph(copy.deepcopy(sim.gm), sim.config, sim.tokenizer)
    facts = {Fact.WEIGHTS_QUANTIZED, Fact.ACTS_QUANTIZED}
    res = qpass.Pipeline([P.Lower(**kw)], initial_facts=facts, verify=False).apply(g).passes[0]
    return CompiledDenoiser(g.gm, sim.config, sim.tokenizer, manifest=dict(sim.manifest)), res


@pytest.fixture
def lower():
    """lower(sim, **Lower kwargs) -> (lowered CompiledDenoiser, the pass result)."""
    return _lower_copy

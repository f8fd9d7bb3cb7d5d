"""Pipeline order checks: wrong orders fail before any compute, naming pass, fact and provider."""
import pytest
import torch

import qpass
from qpass import passes as P
from qpass.pipeline.pass_base import Fact, Pass, PassResult


class Counter:
    def __init__(self):
        self.forwards = 0
        self.runs = 0


COUNT = Counter()


class CountingModel(torch.nn.Module):
    def forward(self, input_ids, attention_mask=None):
        COUNT.forwards += 1
        return input_ids.float()


class _Counting(Pass):
    def run(self, g, ctx):
        COUNT.runs += 1
        return PassResult()


class FakeRotate(_Counting):
    provides = frozenset({Fact.ROTATED})
    changes_weights = True


class NeedsRotated(_Counting):
    requires = frozenset({Fact.ROTATED})


class DestroysRotated(_Counting):
    destroys = frozenset({Fact.ROTATED})


class FakeLower(_Counting):
    provides = frozenset({Fact.LOWERED})
    is_lowering = True


def _rejected(passes, *words):
    COUNT.forwards = COUNT.runs = 0
    with pytest.raises(qpass.PipelineError) as e:
        qpass.Pipeline(passes).run(CountingModel())
    assert COUNT.forwards == 0 and COUNT.runs == 0, "a forward/pass ran before the order check"
    for w in words:
        assert w in str(e.value), (w, str(e.value))
    return str(e.value)


def test_rtn_before_fuse_norms_is_rejected():
    msg = _rejected([P.RTN("int4:g32:sym"), P.FuseNorms()], "FuseNorms", "WEIGHTS_QUANTIZED", "RTN")
    assert "before" in msg


def test_missing_requirement_names_known_provider():
    _rejected([NeedsRotated(), FakeRotate()], "NeedsRotated", "ROTATED", "FakeRotate")
    _rejected([P.FuseNorms(), NeedsRotated()], "NeedsRotated", "ROTATED", "FakeRotate")


def test_destroyed_fact_is_rejected():
    _rejected([FakeRotate(), DestroysRotated(), NeedsRotated()],
              "NeedsRotated", "ROTATED", "DestroysRotated")


def test_lowering_must_be_last():
    _rejected([P.FuseNorms(), FakeLower(), P.RTN("int4:g32:sym")], "RTN", "FakeLower", "LOWERED")


def test_non_pass_item_is_rejected():
    _rejected([P.FuseNorms(), "RTN"], "not a qpass Pass")


def test_initial_facts_satisfy_requirements():
    qpass.Pipeline([NeedsRotated()], initial_facts=[Fact.ROTATED])


def test_valid_orders_are_accepted():
    qpass.Pipeline([P.FuseNorms(), P.RTN("w4a4")])
    qpass.Pipeline([FakeRotate(), NeedsRotated(), DestroysRotated(), P.RTN("w8a8"), FakeLower()])


def test_auto_order_sorts_by_facts_and_is_stable():
    rtn, fuse, rot, need, low = P.RTN("w8a8"), P.FuseNorms(), FakeRotate(), NeedsRotated(), FakeLower()
    pipe = qpass.Pipeline.auto_order([low, rtn, need, fuse, rot])
    order = [p.name for p in pipe.passes]
    assert order.index("FuseNorms") < order.index("RTN")
    assert order.index("FakeRotate") < order.index("RTN")
    assert order.index("FakeRotate") < order.index("NeedsRotated")
    assert order[-1] == "FakeLower"
    # passes without constraints between them keep the given order
    a, b = _Counting(), _Counting()
    assert qpass.Pipeline.auto_order([b, a]).passes == [b, a]
    d, n, r = DestroysRotated(), NeedsRotated(), FakeRotate()
    assert [p.name for p in qpass.Pipeline.auto_order([d, n, r]).passes] == \
        ["FakeRotate", "NeedsRotated", "DestroysRotated"]


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

POOL = [FakeRotate, NeedsRotated, DestroysRotated, FakeLower, lambda: P.FuseNorms(),
        lambda: P.RTN("w8a8")]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(range(len(POOL))), min_size=1, max_size=6))
def test_order_checks_property(picks):
    """Any pass list either passes check_order or raises PipelineError (nothing else), and
    whenever auto_order finds an order, that order passes check_order."""
    from qpass.pipeline import auto_order, check_order
    passes = [POOL[i]() for i in picks]
    try:
        check_order(passes)
    except qpass.PipelineError:
        pass
    try:
        ordered = auto_order(passes)
    except qpass.PipelineError:
        return
    assert sorted(map(id, ordered)) == sorted(map(id, passes))
    check_order(ordered)

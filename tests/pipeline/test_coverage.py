"""Coverage tables: every linear is quantized, kept by a named rule, or uncovered (an error)."""
import pytest
import torch

import qpass
from qpass import passes as P
from qpass.ir.qlinear import QuantLinear
from qpass.pipeline.pass_base import Fact, Pass, PassResult
from qpass.pipeline import coverage


@pytest.mark.parametrize("name,n_linears", [("llada-8b", 32 * 7 + 1), ("dream-7b", 28 * 7 + 1)])
def test_meta_coverage_lists_every_linear(name, n_linears):
    g = qpass.capture(qpass.models.load(name, device="meta"))
    rows = coverage(g, "w4a16g128")
    assert len(rows) == n_linears
    assert [r.name for r in rows if r.status == "kept"] == ["head"]
    assert "role head" in rows[-1].reason
    assert all(r.status == "quantized" and r.weight_spec == "int4:g128:sym" for r in rows[:-1])
    if name == "llada-8b":
        # g96 divides down_proj's K = 12288 but not K = 4096: the whole model takes g64 (down_proj
        # too), with the reason; fitted per layer only the K=4096 ones do; with strict_groups
        # they are uncovered instead
        from dataclasses import replace
        rows = coverage(g, "int4:g96")
        fitted = [r for r in rows if "fallback" in r.reason]
        assert len(fitted) == 32 * 7 and all(r.weight_spec == "int4:g64:sym" for r in fitted)
        rows = coverage(g, replace(qpass.Scheme.parse("int4:g96"), group_fit="layer"))
        fitted = [r for r in rows if "fallback" in r.reason]
        assert len(fitted) == 32 * 6 and all(r.weight_spec == "int4:g64:sym" for r in fitted)
        rows = coverage(g, replace(qpass.Scheme.parse("int4:g96"), strict_groups=True))
        bad = [r for r in rows if r.status == "uncovered"]
        assert len(bad) == 32 * 6 and all("K=4096 is not divisible" in r.reason for r in bad)
        assert all(r.name.endswith("down_proj") for r in rows if r.status == "quantized")


class QuantizeOnlyFirstLinear(Pass):
    """A quantizing pass that forgets every linear but the first one."""
    provides = frozenset({Fact.WEIGHTS_QUANTIZED})

    def __init__(self):
        self.scheme = qpass.Scheme.parse("int8:channel")

    def run(self, g, ctx):
        node = g.linears()[0]
        if node not in ctx.nodes:               # a pass changes only its stage's nodes
            return PassResult()
        from qpass.passes._quantize_common import replace_linear
        replace_linear(g, node, QuantLinear.from_linear(g.module(node), self.scheme.weight))
        return PassResult([node.name])


def test_uncovered_linears_are_an_error_unless_allowed():
    model = qpass.models.load("tiny-llada-random")
    with pytest.raises(qpass.PipelineError, match="uncovered"):
        qpass.Pipeline([QuantizeOnlyFirstLinear()]).run(model, progress=False)
    out = qpass.Pipeline([QuantizeOnlyFirstLinear()], allow_uncovered=True).run(model, progress=False)
    status = [r.status for r in out.report.coverage]
    assert status.count("quantized") == 1 and status.count("kept") == 1
    assert status.count("uncovered") == 7 * 2 - 1


def test_report_tables_and_json():
    model = qpass.models.load("tiny-llada-random")
    scheme = qpass.Scheme("w4g32", "int4:g32:sym", overrides=[("*.down_proj", None)])
    out = qpass.Pipeline([P.FuseNorms(), P.RTN(scheme)]).run(model, progress=False)
    rep = out.report
    kept = [r for r in rep.coverage if r.status == "kept"]
    assert {r.name for r in kept} == {"head", "blocks.0.down_proj", "blocks.1.down_proj"}
    assert any("override '*.down_proj'" in r.reason for r in kept)
    d = rep.to_dict()
    assert [p["name"] for p in d["passes"]] == ["FuseNorms", "RTN"]
    assert d["passes"][0]["verified_rel_change"] <= 1e-4
    assert len(d["linears"]) == 12 and all(r["weight_sqnr_db"] > 15 for r in d["linears"])
    assert qpass.pipeline.Report.from_dict(d).to_dict() == d
    assert len(rep.rich_tables()) == 3
    from rich.console import Console
    console = Console(record=True, width=160)
    rep.print(console)
    assert "uncovered" in console.export_text()

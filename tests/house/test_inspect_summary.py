"""`qpass inspect` shows what passes wrote on each node (the keys the passes really write)."""
import qpass
from qpass import passes as P
from qpass.inspect import summarize


def test_summary_rows_show_pass_records():
    model = qpass.models.load("tiny-llada-random")
    out = qpass.Pipeline([P.FuseNorms(), P.Rotate(), P.RTN("int4:g32:sym")]).run(model, progress=False)
    g = qpass.QGraph(out.gm, out.config)
    # annotations live on the run's nodes; a fresh QGraph keeps node.meta of the same graph
    rows = {r["target"]: r for r in summarize(g)["nodes"] if r["role"] == "linear"}
    q = rows["blocks.0.q_proj"]
    assert q["weight_spec"] == "int4:g32:sym"
    assert q["weight_sqnr_db"] > 10.0
    assert "rotate" in q
    assert any("fused_norm" in r or "fused_into" in r for r in rows.values())

"""`qpass study` on a 2×2 grid (pipelines × tasks): outputs written, the second run served
entirely from the cache, a grown grid computes only the new cells, foreign folders refused."""
import json
import time

import pytest

from qpass.cli.main import main
from qpass.errors import QpassError
from qpass.study import runner as study_mod

CONFIG = """
[study]
name = "grid2x2"
seeds = [0]

[grid]
pipelines = {pipelines}
tasks = ["math", "code"]

[[models]]
name = "tiny"
path = "tiny-llada"

[eval]
limit = 4
math_items = 4
text_bytes = 1024
seq_len = 128
n_mc = 2

[calibration]
n = 4
seq_len = 64
"""


@pytest.fixture(autouse=True)
def _steady_code_version(monkeypatch):
    """The cache key hashes qpass's sources; pin it so that an edit to the tree by another
    process between two runs of one test does not look like a code change (code_version's own
    behaviour is not what these tests are about)."""
    version = study_mod.code_version()
    monkeypatch.setattr(study_mod, "code_version", lambda: version)


def _write(tmp_path, pipelines):
    p = tmp_path / "grid.toml"
    p.write_text(CONFIG.format(pipelines=json.dumps(pipelines)))
    return p


def test_second_run_is_served_from_the_cache(tmp_path, monkeypatch, capsys):
    cfg, out = _write(tmp_path, ["fp", "w4a16-rtn"]), tmp_path / "out"
    assert main(["study", str(cfg), "--out", str(out)]) == 0
    first = json.loads((out / "results.json").read_text())
    assert len(first["rows"]) == 4 and not any(r["cached"] for r in first["rows"])
    for name in ("results.csv", "results.md", "accuracy_vs_bits.png", "drop_vs_fp.png"):
        assert (out / name).stat().st_size > 0
    fp_code = [s for s in first["summary"] if s["pipeline"] == "fp" and s["task"] == "code"][0]
    assert fp_code["drop_vs_fp_pct"] == 0.0 and 0.5 < fp_code["value"] < 8
    # per-item records: every problem and chunk, and they add up to the row's metric
    for r in first["rows"]:
        if r["task"] == "math":
            rec = r["items"]["exact_match"]
            assert len(rec["values"]) == r["n"] == len(rec["answer"]) == 4
            assert sum(rec["values"]) / 4 == r["exact_match"]
        else:
            rec = r["items"]["bits_per_byte"]
            assert sum(rec["values"]) / sum(rec["weights"]) == pytest.approx(r["bits_per_byte"])
    q = {s["task"]: s for s in first["summary"] if s["pipeline"] == "w4a16-rtn"}
    assert q["math"]["vs_fp"]["test"] == "mcnemar-exact"
    assert q["code"]["vs_fp"]["test"] == "paired-bootstrap"
    assert q["code"]["vs_fp"]["verdict"] in ("worse", "tie", "better")

    def no_compute(*a, **k):
        raise AssertionError("the cache should have served this")
    capsys.readouterr()   # the first run's output
    # no model is loaded, quantized or evaluated on the second run: the cache serves it all
    monkeypatch.setattr(study_mod, "evaluate", no_compute)
    monkeypatch.setattr(study_mod, "_quantized", no_compute)
    monkeypatch.setattr(study_mod, "load_any", no_compute)
    t0 = time.perf_counter()
    assert main(["study", str(cfg), "--out", str(out), "--no-plots"]) == 0
    assert time.perf_counter() - t0 < 10   # "finishes in seconds" (hashing + table only)
    second = json.loads((out / "results.json").read_text())
    assert all(r["cached"] for r in second["rows"])
    strip = lambda rows: [{k: v for k, v in r.items() if k != "cached"} for r in rows]  # noqa: E731
    assert strip(second["rows"]) == strip(first["rows"])
    printed = capsys.readouterr()
    assert "4 results (4 from the cache)" in printed.err.replace("\n", " ")
    # the table, on stdout (rich may shorten the columns, never the numbers)
    assert "qpass study: grid2x2" in printed.out and f"{fp_code['value']:.4f}" in printed.out


def test_grown_grid_computes_only_the_new_cells(tmp_path):
    out = tmp_path / "out"
    assert main(["study", str(_write(tmp_path, ["fp"])), "--out", str(out), "--no-plots"]) == 0
    assert main(["study", str(_write(tmp_path, ["fp", "w8a8-rtn"])), "--out", str(out),
                 "--no-plots"]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {(r["pipeline"], r["cached"]) for r in rows} == {("fp", True), ("w8a8-rtn", False)}


def test_foreign_output_folder_and_bad_configs_are_refused(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    cfg = _write(tmp_path, ["fp"])
    with pytest.raises(QpassError, match="not written by qpass study"):
        study_mod.run_study(study_mod.read_config(cfg, out=str(foreign)), None)
    assert (foreign / "notes.txt").read_text() == "keep me"
    bad = tmp_path / "bad.toml"
    bad.write_text(CONFIG.format(pipelines='["fp"]').replace('"math", "code"', '"maths"'))
    with pytest.raises(QpassError, match="unknown task"):
        study_mod.read_config(bad)
    assert main(["study", str(tmp_path / "missing.toml")]) == 2


def test_a_real_checkpoint_in_a_study_asks_for_calibration_data(tmp_path):
    """A model that is not an embedded zoo model is never calibrated silently on the embedded
    corpora: the quantizing cell stops with one error naming [calibration] path."""
    import qpass
    from qpass.models.loading import save_checkpoint
    save_checkpoint(qpass.models.load("tiny-llada"), tmp_path / "hf")
    cfg = tmp_path / "real.toml"
    cfg.write_text(CONFIG.format(pipelines='["w4a16-gptq"]').replace(
        'path = "tiny-llada"', f'path = "{tmp_path / "hf"}"'))
    with pytest.raises(QpassError, match=r"not an embedded zoo model.*\[calibration\]"):
        study_mod.run_study(study_mod.read_config(cfg, out=str(tmp_path / "out")), qpass.presets.get)

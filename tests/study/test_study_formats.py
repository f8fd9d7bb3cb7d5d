"""The study's format dimension: the default grid has FP8 / NVFP4 / MXFP4 rows labelled by
format, float rows run like the others, and optional pipelines (w4a4-learned) run where the
preset exists and are skipped with a note where it does not."""
from pathlib import Path

import qpass
from qpass.study import format_of, method_of, read_config, run_study

ROOT = Path(__file__).resolve().parents[2]


def test_default_grids_have_a_format_dimension():
    for name in ("paper.toml", "paper-full-samples.toml"):
        cfg = read_config(ROOT / "studies" / name)
        formats = {p: format_of(None if p == "fp" else qpass.presets.get(p)) for p in cfg.pipelines}
        assert {"fp", "int", "fp8", "nvfp4", "mxfp4"} <= set(formats.values())
        assert {formats[p] for p in ("w8a8-fp8", "w4a16-nvfp4", "w4a4-nvfp4", "w4a4-mxfp4")} == \
            {"fp8", "nvfp4", "mxfp4"}
        assert "w4a4-learned" in cfg.optional
    assert method_of("w4a4-nvfp4-gptq", "nvfp4") == "gptq" and method_of("w8a8-fp8", "fp8") == "rtn"
    assert method_of("w4a16-gptq", "int") == "gptq"


def test_float_rows_and_optional_pipelines(tmp_path):
    cfg_file = tmp_path / "f.toml"
    cfg_file.write_text("""
[study]
name = "formats"
[grid]
pipelines = ["w8a8-fp8"]
optional = ["no-such-preset", "w4a4-learned"]
tasks = ["math"]
[[models]]
name = "tiny"
path = "tiny-llada"
[eval]
limit = 2
math_items = 2
[calibration]
n = 2
seq_len = 32
""")
    cfg = read_config(cfg_file, out=str(tmp_path / "out"))
    notes = []
    learned = "w4a4-learned" in qpass.presets.PRESETS
    if learned:      # keep the test fast: the learned preset is tested where it is built
        cfg.optional = ["no-such-preset"]
    rows = run_study(cfg, qpass.presets.get, log=notes.append)
    assert [(r["pipeline"], r["format"], r["method"], r["w_bits"], r["a_bits"]) for r in rows] == \
        [("w8a8-fp8", "fp8", "rtn", 8, 8)]
    skipped = [n for n in notes if n.startswith("optional pipeline")]
    assert any("no-such-preset" in n for n in skipped)
    assert any("w4a4-learned" in n for n in skipped) != learned

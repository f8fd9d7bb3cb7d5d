"""Issue 26 part 7, "hard-to-read output", as a new user met it on main: `qpass quantize` printed
218 report lines for a 43-linear model at 80 columns; `qpass inspect` cut node names to
`blocks_0_…`; one size read "2.85 MiB" in one output and "2.99 MB" in another; the exported
model.safetensors was written 0600, so a serving container running as another user could not
read it. Real commands at 80 columns (COLUMNS=80, output into files as `> log 2>&1` does), one
interpreter for all of them (qpass's import is most of a small command's time)."""
import re
import stat
from pathlib import Path

import pytest
from test_progress_lines import run_commands      # one interpreter, each command's own files

FAST = ["--calib-n", "2", "--seq-len", "32"]
ROLES = ("q", "k", "v", "o", "gate", "up", "down")
LINEARS = [f"blocks.{b}.{p}_proj" for b in range(6) for p in ROLES]     # tiny-llada's 42 + head


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("readable")
    commands = [
        ("rtn", ["quantize", "tiny-llada", "--pipeline", "w4a16-rtn", "--out", "rtn", *FAST]),
        ("gptq", ["quantize", "tiny-llada", "--pipeline", "w4a16-gptq", "--out", "gptq", *FAST]),
        ("q4", ["quantize", "tiny-llada", "--pipeline", "q4_0-rtn", "--out", "q4", *FAST]),
        ("full", ["quantize", "tiny-llada", "--pipeline", "w4a16-rtn", "--out", "full", *FAST,
                  "--report", "full"]),
        ("inspect", ["inspect", "tiny-llada"]),
        ("x_gptq", ["export", "gptq", "--format", "gptq", "--out", "gptq-x"]),
        ("x_ct", ["export", "gptq", "--format", "compressed-tensors", "--out", "ct-x"]),
        ("x_gguf", ["export", "q4", "--format", "gguf", "--out", "q4.gguf"])]
    codes = run_commands(d, commands, {"COLUMNS": "80", "LINES": "25",
                                       "QPASS_PROGRESS_EVERY": "3600"},
                         prelude="import os\nos.umask(0o022)\n", timeout=600, check=False)
    return d, codes


def _text(runs, name: str) -> str:
    d, codes = runs
    assert codes[name] == 0, (d / f"{name}.err").read_text()[-2000:]
    return (d / f"{name}.out").read_text() + (d / f"{name}.err").read_text()


def _report(runs, name: str) -> list[str]:
    """What quantize printed besides its progress records, up to the `saved` line."""
    lines = [ln for ln in _text(runs, name).splitlines() if not ln.startswith("qpass: ")]
    return lines[:next(i for i, ln in enumerate(lines) if ln.startswith("saved "))]


@pytest.mark.parametrize("name", ["rtn", "gptq"])
def test_quantize_prints_a_summary_that_fits_80_columns(runs, name):
    report = _report(runs, name)
    assert 5 <= len(report) <= 15, "\n".join(report)              # was 175 lines of tables
    assert all(len(ln) <= 80 for ln in report), [ln for ln in report if len(ln) > 80]
    assert not any(c in "".join(report) for c in "┏│…"), report    # no table, nothing cut
    text = "\n".join(report)
    assert "coverage  42 quantized, 1 kept (head), 0 uncovered of 43 linears" in text
    grid = next(i for i, ln in enumerate(report) if ln.startswith("output SQNR dB"))
    assert report[grid].split()[3:] == list(ROLES)                 # one column per role
    for row, label in ((grid + 1, "median"), (grid + 2, "worst")):
        cells = report[row].split()
        assert cells[0] == label and len(cells) == 1 + len(ROLES)
        assert all(0 < float(c) < 60 for c in cells[1:]), cells
    median = [float(c) for c in report[grid + 1].split()[1:]]
    worst = [float(c) for c in report[grid + 2].split()[1:]]
    assert all(w <= m for w, m in zip(worst, median))
    worst_line = next(ln for ln in report if ln.startswith("worst     "))
    assert re.fullmatch(r"worst     blocks\.\d\.\w+_proj: [\d.]+ dB output SQNR", worst_line)
    assert float(worst_line.split(": ")[1].split()[0]) == min(worst)
    assert re.search(r"^passes    (RTN|GPTQ) [\d.]+ s, Lower [\d.]+ s \(total [\d.]+ s\)", text, re.M)
    assert re.search(r"^size      [\d.]+ MiB float32 → [\d.]+ MiB \([\d.]+× smaller\)$", text, re.M)


def test_report_full_still_prints_every_table_then_the_summary(runs):
    text = _text(runs, "full")
    for title in ("Passes", "Linears (SQNR in dB", "Coverage: 42 quantized, 1 kept, 0 uncovered"):
        assert title in text, title
    rows = [ln for ln in text.splitlines() if ln.startswith("│ blocks.")]
    for name in LINEARS:                       # every linear, twice (SQNR and coverage), whole
        assert sum(ln.split()[1] == name for ln in rows) == 2, name
    assert "…" not in text
    assert text.index("Coverage: ") < text.index("coverage  42 quantized")   # summary last


def test_inspect_prints_every_name_whole_at_80_columns(runs):
    text = _text(runs, "inspect")
    assert "…" not in text
    assert all(len(ln) <= 80 for ln in text.splitlines())
    names = {ln.split()[1] for ln in text.splitlines() if ln.startswith("│ ")}
    assert set(LINEARS) | {"blocks.0.attn_norm", "blocks.5.mlp_norm", "head", "embed"} <= names


SIZE = re.compile(r"(\d[\d,]*(?:\.\d+)?) ?(B|KiB|MiB|GiB|TiB|kB|KB|MB|GB|TB)\b")


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"                  # the convention, computed here by hand


def test_one_size_unit_and_the_same_bytes_read_the_same_everywhere(runs):
    import qpass
    texts = {n: _text(runs, n) for n in ("rtn", "gptq", "q4", "inspect", "x_gptq", "x_ct",
                                         "x_gguf")}
    d = runs[0]
    units = {u for t in texts.values() for _, u in SIZE.findall(t)}
    assert units and units <= {"B", "KiB", "MiB", "GiB"}, units
    # the float model (every parameter and buffer, float32): inspect's header and quantize's
    # "size before" are one string
    model = qpass.models.load("tiny-llada")
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}.values()
    fp = _mib(sum(t.numel() * t.element_size() for t in tensors))
    assert f"parameters ({fp} float32)" in texts["inspect"], texts["inspect"][:300]
    assert f"size      {fp} float32 → " in texts["rtn"]
    # the compiled model: the summary's "after" is the saved line's total
    after = re.search(r"float32 → ([\d.]+ MiB)", texts["rtn"]).group(1)
    assert f"total {after})" in texts["rtn"]
    assert after == _mib(qpass.load_compiled(d / "rtn").weight_nbytes()["total"])
    # an export names what it wrote, in the same unit
    for name, out in (("x_gptq", "gptq-x"), ("x_ct", "ct-x"), ("x_gguf", "q4.gguf")):
        p = d / out
        size = p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.iterdir())
        assert texts[name].strip().endswith(f"{p} ({_mib(size)})"), texts[name]


def _modes(root: Path) -> dict[str, int]:
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    return {str(p.relative_to(root.parent)): stat.S_IMODE(p.lstat().st_mode) for p in paths}


def test_exports_and_checkpoints_are_readable_by_another_user(runs):
    """Under umask 022: files 0644 and folders 0755, as `cp` or save_pretrained leave them
    (safetensors itself writes 0600); the run's work folder never outlives the run."""
    d = runs[0]
    for name, out in (("rtn", "rtn"), ("gptq", "gptq"), ("q4", "q4"), ("x_gptq", "gptq-x"),
                      ("x_ct", "ct-x"), ("x_gguf", "q4.gguf")):
        _text(runs, name)                                       # it ran
        for path, mode in _modes(d / out).items():
            want = 0o755 if (d / path).is_dir() else 0o644
            assert mode == want, f"{path}: {oct(mode)}, want {oct(want)}"
    assert not [p.name for p in d.iterdir() if p.name.startswith(".")]


# Real module paths of real checkpoints (LLaMA-style and an MoE expert), each renderer of
# `qpass inspect` at 80 columns: every name on one line, whole.
NAMES = ["blocks.0.attn.q_proj", "blocks.12.mlp.experts.63.gate_proj", "head"]


def _at_80(render) -> list[str]:
    import io

    from rich.console import Console
    buf = io.StringIO()
    render(Console(file=buf, width=80, color_system=None))
    return buf.getvalue().splitlines()


def _whole(lines: list[str], names=NAMES) -> None:
    assert "…" not in "".join(lines), "\n".join(lines)
    for name in names:
        assert any(re.search(rf"(^|\s){re.escape(name)}(\s|$)", ln) for ln in lines), \
            (name, "\n".join(lines))


def test_every_inspect_renderer_keeps_long_names_whole():
    import torch

    from qpass.inspect import render_text
    from qpass.inspect.diff import render_changes
    from qpass.inspect.outliers import render_outliers
    from qpass.inspect.smoothing import render_smoothing
    from qpass.runtime.report import CoverageRow, coverage_table
    nodes = [{"name": n.replace(".", "_"), "op": "call_module", "target": n, "role": "linear",
              "block": 0, "shape": [1, 16, 4096], "dtype": "bfloat16", "params": 16_777_216}
             for n in NAMES]
    summary = {"model": "llama", "n_blocks": 1, "n_linears": 3, "head": ["head"], "n_nodes": 9,
               "params": 3 * 16_777_216, "bytes": 6 * 16_777_216, "dtype": "bfloat16",
               "blocks": [], "nodes": nodes}
    _whole(_at_80(lambda con: render_text(summary, con)))
    rows = [CoverageRow(n, "linear", "quantized", "int4:g128:sym", "int8:tok", "scheme w4a8")
            for n in NAMES]
    _whole(_at_80(lambda con: con.print(coverage_table(rows))))
    states = {n.replace(".", "_"): {"op": "call_module", "target": n, "role": "linear",
                                    "module": "QuantLinear", "weight_spec": "int4:g128:sym",
                                    "act_spec": "int8:tok", "scales min/median/max": "1 / 2 / 3",
                                    "meta.rotate": "hadamard 4096"} for n in NAMES}
    info = {"pass": "RTN('w4a8g128')", "before": states, "after": states, "notes": [],
            "graph": torch.fx.symbolic_trace(torch.nn.Identity()), "changes": [{"node": k, "change": "changed",
                                        "detail": "weight_spec: - → int4:g128:sym"}
                                       for k in states]}
    for diff in (True, False):
        _whole(_at_80(lambda con: render_changes(info, con, diff=diff)))
    out = [{"linear": n, "block": 0, "in_features": 4096, "absmax_before": 123.4,
            "ratio_before": 56.7, "absmax_after": 3.21, "ratio_after": 1.5} for n in NAMES]
    _whole(_at_80(lambda con: render_outliers(out, console=con)))
    pairs = [{"block": 12, "producer": n, "kind": "norm", "consumers": ["a.q_proj", "a.k_proj"],
              "alpha": 0.5, "scale_min": 0.1, "scale_median": 1.0, "scale_max": 9.0,
              "ratio_before": 40.0, "ratio_after": 4.0, "skipped_reason": None} for n in NAMES]
    _whole(_at_80(lambda con: render_smoothing(pairs, con)))


def test_fmt_bytes_is_binary_with_two_decimals():
    from qpass.display.units import fmt_bytes
    assert [fmt_bytes(n) for n in (0, 1023, 1024, 2_988_442, 3 * 2**30 + 2**29, 2**50)] == \
        ["0 B", "1023 B", "1.00 KiB", "2.85 MiB", "3.50 GiB", "1.00 PiB"]


def test_size_errors_use_the_one_unit(tmp_path, monkeypatch):
    """The free-space and config-budget errors (the demo's table and the rest: the house
    test tests/house/test_size_units.py)."""
    import shutil

    from qpass.errors import ConfigError, OutputPathError
    from qpass.models.config import llada_8b
    from qpass.models.config_limits import _check_budget
    from qpass.runtime import output
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(0, 0, 2**20))
    with pytest.raises(OutputPathError, match=r"needs about 3\.00 GiB but .* has 1\.00 MiB free"):
        output.check_free_space(tmp_path, 3 * 2**30)
    huge = dict(llada_8b().to_dict(), n_layers=4096, mlp_hidden=2**20)
    with pytest.raises(ConfigError, match=r"parameters \([\d.]+ TiB in bf16, [\d.]+ TiB in fp32\)"):
        _check_budget(huge, "config.json")

"""The study's acceleration dimension and trajectory columns: AUP against a hand computation,
config mistakes refused, and a tiny end-to-end run (cache × threshold × block length rows with
tokens per forward, paired verdicts against the uncached run, AUP, trajectory KL and
wrong-commit rate) whose second run is served from the cache and writes the HTML report,
rendered in headless Chromium with every image loaded."""
import json
import math
import re
import shutil
import subprocess

import pytest

from qpass.cli.main import main
from qpass.errors import QpassError
from qpass.study import acceleration, read_config, trajectory_cells
from qpass.study import runner as study_mod
from qpass.study.aup import aup, weight

CONFIG = """
[study]
name = "accel"
[grid]
pipelines = ["fp", "w4a16-rtn"]
tasks = ["math"]
[[models]]
name = "tiny"
path = "tiny-llada"
[eval]
limit = 4
math_items = 4
[calibration]
n = 2
seq_len = 32
[acceleration]
pipelines = ["fp"]
caches = ["none", "dual"]
thresholds = ["none", 0.5]
block_lengths = [4]
gen_length = 8
steps = 8
items = 4
[trajectory]
prompts = 2
"""


def test_aup_by_hand():
    # one point: the rectangle ρ_1 · y_1
    assert aup([1.0], [70.0], 80.0) == 70.0
    # (1, 80), (2, 78), (4, 70 -> dropped: more than 5 points below y_1 = 80); y_max = 80
    w78 = math.exp(-3 * (1 - 78 / 80))
    expected = 1 * 80 + (2 - 1) * (78 * w78 + 80 * 1.0) / 2
    assert aup([4.0, 1.0, 2.0], [70.0, 80.0, 78.0], 80.0) == pytest.approx(expected, rel=1e-12)
    assert weight(90.0, 80.0) == 1.0                       # capped at 1


def test_config_mistakes_are_refused(tmp_path):
    for bad, msg in (('caches = ["none", "dual"]', 'caches = ["none", "fast"]'),
                     ("block_lengths = [4]", "block_lengths = [3]"),
                     ('pipelines = ["fp"]', 'pipelines = ["w4a4-rtn"]')):
        p = tmp_path / "c.toml"
        p.write_text(CONFIG.replace(bad, msg))
        with pytest.raises(QpassError, match=r"\[acceleration\]"):
            acceleration.read_settings(read_config(p))
    p.write_text(CONFIG.replace("prompts = 2", "prompt = 2"))
    with pytest.raises(QpassError, match=r"\[trajectory\]"):
        trajectory_cells.read_settings(read_config(p))


def test_acceleration_grid_end_to_end_and_cached(tmp_path, monkeypatch):
    version = study_mod.code_version()     # pinned: other processes may edit the tree
    monkeypatch.setattr(study_mod, "code_version", lambda: version)
    cfg, out = tmp_path / "a.toml", tmp_path / "out"
    cfg.write_text(CONFIG)
    assert main(["study", str(cfg), "--out", str(out), "--no-plots"]) == 0
    data = json.loads((out / "results.json").read_text())
    rows = data["acceleration"]["rows"]
    assert {(r["cache"], r["threshold"]) for r in rows} == \
        {("none", None), ("none", 0.5), ("dual", None), ("dual", 0.5)}
    for r in rows:
        assert len(r["items"]["exact_match"]["values"]) == r["n"] == 4
        # the step schedule commits one token per step; a threshold at least one
        assert r["tokens_per_forward"] == 1.0 if r["threshold"] is None else \
            r["tokens_per_forward"] >= 1.0
    summ = {(s["cache"], s["threshold"]): s for s in data["acceleration"]["summary"]}
    assert summ[("none", "none")]["vs_uncached"] == "–"
    assert summ[("dual", "0.5")]["vs_uncached"] in ("better", "worse", "tie")
    assert {a["cache"] for a in data["acceleration"]["aup"]} == {"none", "dual"}
    (traj,) = data["trajectory"]
    assert traj["pipeline"] == "w4a16-rtn" and traj["kl_mean"] > 0
    assert 0.0 <= traj["wrong_commit_rate"] <= 1.0 and len(traj["kl_per_step"]) == 8
    q = [s for s in data["summary"] if s["pipeline"] == "w4a16-rtn"][0]
    assert q["traj_kl_mean"] == traj["kl_mean"]
    assert "Quantization × acceleration" in (out / "results.md").read_text()

    def no_compute(*a, **k):
        raise AssertionError("the cache should have served this")
    for mod in (acceleration, trajectory_cells, study_mod):
        monkeypatch.setattr(mod, "_quantized", no_compute)
    monkeypatch.setattr(acceleration, "evaluate", no_compute)
    monkeypatch.setattr(study_mod, "evaluate", no_compute)
    monkeypatch.setattr(trajectory_cells, "load_any", no_compute)
    report = tmp_path / "report.html"
    assert main(["study", str(cfg), "--out", str(out), "--no-plots", "--report",
                 str(report)]) == 0
    again = json.loads((out / "results.json").read_text())
    assert all(r["cached"] for r in again["acceleration"]["rows"] + again["trajectory"])
    page = report.read_text()
    assert "Finding by finding" in page and "AUP" in page and "wrong-commit rate" in page
    assert not re.search(r"(src|href)=['\"](?!data:)", page)     # self-contained
    loaded = _images_loaded_in_chromium(report, tmp_path)
    # drop_vs_fp, accuracy_vs_bits, accuracy_vs_parallelism, trajectory_kl
    assert len(loaded) == 4 and all(loaded), loaded


_CHECK = ('<script>window.addEventListener("load",()=>{const p=document.createElement("pre");'
          'p.id="qpass-check";p.textContent=JSON.stringify([...document.images].map('
          'i=>i.complete&&i.naturalWidth>0));document.body.appendChild(p);});</script>')


def _images_loaded_in_chromium(report, tmp_path) -> list[bool]:
    """For each <img> of the report: loaded with a width (naturalWidth > 0), in headless
    Chromium (a copy of the report with a script that writes the answer into the DOM)."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        # make installs it (as root, when the Debian mirror answers); a machine without it
        # says so here instead of failing the suite
        pytest.skip("headless Chromium is not installed (apt-get install chromium; make "
                    "installs it when run as root): the HTML report is not rendered")
    probe = tmp_path / "probe.html"
    probe.write_text(report.read_text().replace("</body>", _CHECK + "</body>"))
    dom = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu",
                          f"--user-data-dir={tmp_path / 'chromium'}", "--dump-dom",
                          "--virtual-time-budget=5000", probe.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'<pre id="qpass-check">([^<]*)</pre>', dom)
    assert found, f"Chromium did not render the report: {dom[:300]!r}"
    return json.loads(found.group(1))

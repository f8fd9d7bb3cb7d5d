"""The run report's summary level (issue 26 part 7): a few lines, at most 80 columns whatever
the model (many roles split the SQNR grid; a name longer than a line is printed whole, never
cut), the numbers computed from the records (median / worst per role, counts, sizes)."""
import io
import statistics

import pytest
from rich.console import Console

from qpass.runtime.report import CoverageRow, LinearRecord, PassRecord, Report
from qpass.runtime.report_summary import print_report, role_label, summary_lines

ROLES = ("q", "k", "v", "o", "gate", "up", "down", "router", "shared_gate", "shared_up",
         "shared_down", "attn_out_gate")
LONG = "model.language_model.layers.30.block_sparse_moe.experts.127.very_long_expert_gate_proj"


def _report(output=True, n_blocks=4) -> Report:
    linears, cov = [], []
    for b in range(n_blocks):
        for i, r in enumerate(ROLES):
            name = f"blocks.{b}.{r}" if r in ("router", "attn_out_gate") else f"blocks.{b}.{r}_proj"
            db = 10.0 + b + i / 10
            linears.append(LinearRecord(name, "int4:g128:sym", None, db + 5,
                                        db if output else None))
            cov.append(CoverageRow(name, "linear", "quantized", "int4:g128:sym", None, "scheme"))
    linears.append(LinearRecord(LONG, "int4:g128:sym", None, 3.0, 1.0 if output else None))
    cov += [CoverageRow("head", "head", "kept", None, None, "role head"),
            *(CoverageRow(f"blocks.{b}.extra_proj", "linear", "uncovered", None, None, "no rule")
              for b in range(5))]
    passes = [PassRecord("FuseNorms", "FuseNorms()", 0.25, ["a"], verified_rel_change=2e-7),
              PassRecord("GPTQ", "GPTQ('w4a16g128')", 12.5, ["b"], notes=["n1", "n2"]),
              PassRecord("Lower", "Lower()", 0.04, [], notes=["n3"])]
    return Report(passes, linears, cov)


def test_summary_fits_80_columns_and_says_the_numbers():
    lines = summary_lines(_report(), {"linear": 3 << 30, "total": 4 << 30, "dtype": "bfloat16"},
                          {"linear": 800 << 20, "total": 1 << 30})
    assert len(lines) <= 20, "\n".join(lines)             # 13 roles, 5 uncovered, a long name
    assert all(len(ln) <= 80 for ln in lines if LONG not in ln), "\n".join(lines)
    text = "\n".join(lines)
    assert "passes    FuseNorms 0.25 s, GPTQ 12.50 s, Lower 0.04 s (total 12.79 s)" in text
    assert "logits moved ≤ 2.0e-07" in text
    assert ("coverage  48 quantized, 1 kept (head), 5 uncovered of 54 linears: blocks.0.extra_proj,"
            in text.replace("\n          ", " "))
    assert "extra_proj and 2 more" in text.replace("\n          ", " ")
    # twelve roles (+ the long name's) do not fit one 80-column grid: it is split, and each
    # role's median and worst are those of its records
    grids = [i for i, ln in enumerate(lines) if ln.startswith("output SQNR dB")]
    assert len(grids) >= 2
    cols = {}
    for g in grids:
        for role, med, worst in zip(*(lines[g + k].split()[k and 1 or 3:] for k in range(3))):
            cols[role] = (float(med), float(worst))
    assert list(cols)[:len(ROLES)] == ["q", "k", "v", "o", "gate", "up", "down", "router",
                                        "shared_gate", "shared_up", "shared_down",
                                        "attn_out_gate"]
    for i, role in enumerate(ROLES):
        vals = [10.0 + b + i / 10 for b in range(4)]
        assert cols[role] == (round(statistics.median(vals), 1), round(min(vals), 1))
    i = lines.index(f"worst     {LONG}:")                  # whole, on a line of its own
    assert lines[i + 1] == "          1.0 dB output SQNR"
    assert "size      4.00 GiB bfloat16 → 1.00 GiB (4.00× smaller)" in lines
    assert "          linear weights 3.00 GiB → 800.00 MiB" in lines
    assert "notes     3 from the passes (--report full lists them)" in lines


def test_without_output_sqnr_the_summary_says_weight_sqnr():
    lines = summary_lines(_report(output=False))
    assert any(ln.startswith("weight SQNR dB") for ln in lines)
    assert lines[lines.index(f"worst     {LONG}:") + 1] == "          3.0 dB weight SQNR"
    assert not any(ln.startswith("size") for ln in lines)     # no sizes given: no size line


def test_role_labels_are_the_last_name_without_proj():
    assert [role_label(n) for n in ("blocks.3.gate_proj", "head", "blocks.0.experts.7.up_proj",
                                    "blocks.1.router", "x._proj")] == \
        ["gate", "head", "up", "router", "_proj"]


@pytest.mark.parametrize("level", ["summary", "full", "none"])
def test_print_levels(level):
    buf = io.StringIO()
    print_report(_report(n_blocks=1), level, Console(file=buf, width=80, color_system=None))
    text = buf.getvalue()
    assert ("coverage  " in text) == (level != "none")
    assert ("Linears (SQNR" in text) == ("┏" in text) == (level == "full")
    if level == "full":                      # tables first, then the summary
        assert text.index("Coverage: ") < text.index("coverage  ")
    with pytest.raises(ValueError, match="one of summary, full, none"):
        print_report(_report(), "brief")

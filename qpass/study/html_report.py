"""`qpass study … --report report.html`: the whole study in one self-contained HTML file.

Nothing is fetched: the CSS is inline and every plot is a PNG embedded as a data: URI, so the
file can be mailed or opened offline. Sections: the claims checked finding by finding
(claims.py), the grid with paired verdicts against FP (and the format / trajectory columns),
quantization × acceleration with AUP, the trajectory table, the plots. Every cell is escaped."""
from __future__ import annotations

import base64
import html
import tempfile
from pathlib import Path

from .accel_report import plots as accel_plots
from .claims import findings
from .report import plots as grid_plots

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}th,td{border:1px solid #ccc;
padding:3px 7px;text-align:right}th{background:#f2f2f2}td.l,th.l{text-align:left}
.worse{background:#fde2e2}.better{background:#e1f5e1}.agrees{color:#176317}
.disagrees{color:#a31515}img{max-width:100%;border:1px solid #ddd;margin:.5em 0}
.note{color:#555;font-size:13px}"""


def _e(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return html.escape(f"{v:.4g}" if abs(v) < 1e-2 and v else f"{v:.4f}")
    return html.escape(str(v))


def _table(rows: list[dict], cols: list[tuple[str, str]], cls=None) -> str:
    """cols: (key, heading); the first two columns and text left-aligned, numbers right;
    `cls(row)` a row class."""
    head = "".join(f'<th class="{"l" if i < 2 else ""}">{html.escape(h)}</th>'
                   for i, (_, h) in enumerate(cols))
    body = []
    for r in rows:
        c = f' class="{cls(r)}"' if cls and cls(r) else ""
        body.append(f"<tr{c}>" + "".join(
            f'<td class="{"l" if i < 2 or isinstance(r.get(k), str) else ""}">{_e(r.get(k))}</td>'
            for i, (k, _) in enumerate(cols)) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _images(data: dict) -> list[tuple[str, str]]:
    """(name, data URI) of every plot, drawn into a private temporary folder."""
    acc = data.get("acceleration", {})
    with tempfile.TemporaryDirectory(prefix="qpass-report-") as tmp:
        paths = grid_plots(data["summary"], Path(tmp)) + accel_plots(
            acc.get("summary", []), data.get("trajectory", []), Path(tmp))
        return [(p.stem, "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode())
                for p in paths]


def render(data: dict) -> str:
    """The report's HTML for a study_data() dict."""
    title = html.escape(data.get("title", "qpass study"))
    acc = data.get("acceleration", {})
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>"
             f"<style>{_CSS}</style></head><body><h1>{title}</h1>",
             f"<p class='note'>{len(data['rows'])} grid results, "
             f"{len(acc.get('rows', []))} acceleration results, "
             f"{len(data.get('trajectory', []))} trajectory results. Verdicts are paired tests "
             "on the same items (McNemar's exact test for correctness, a paired bootstrap "
             "95% interval for bits per byte): a gap is called better or worse only when "
             "the test says so.</p>", "<h2>Finding by finding</h2>",
             _table(findings(data), [("source", "source"), ("claim", "claim"),
                                     ("verdict", "verdict"), ("measured", "measured here")],
                    cls=lambda r: r["verdict"] if r["verdict"] in ("agrees", "disagrees") else None),
             "<h2>The grid (vs FP of the same model, paired)</h2>"]
    cols = [("model", "model"), ("pipeline", "pipeline"), ("format", "format"),
            ("w_bits", "W bits"), ("a_bits", "A bits"), ("task", "task"), ("metric", "metric"),
            ("value", "value"), ("drop_vs_fp_pct", "drop vs FP %"),
            ("vs_fp_text", "vs FP (paired)")]
    if any("traj_kl_mean" in s for s in data["summary"]):
        cols += [("traj_kl_mean", "KL/step"), ("traj_wrong_commit_rate", "wrong commits")]
    parts.append(_table(data["summary"], cols, cls=lambda s: (s.get("vs_fp") or {}).get("verdict")))
    if acc.get("summary"):
        parts += ["<h2>Quantization × acceleration (math; paired vs the pipeline's own uncached "
                  "schedule run)</h2>",
                  "<p class='note'>tokens/forward: generated tokens over each problem's own "
                  "denoising steps; tokens/s: per CPU second of this machine running qpass's "
                  "simulated (or CPU reference) kernels — a relative measure between cache "
                  "policies of one pipeline, not a deployment speed.</p>",
                  _table(acc["summary"], [("model", "model"), ("pipeline", "pipeline"),
                                          ("format", "format"), ("cache", "cache"),
                                          ("threshold", "threshold"), ("block_length", "block"),
                                          ("accuracy_pct", "accuracy %"),
                                          ("tokens_per_forward", "tokens/forward"),
                                          ("tokens_per_second", "tokens/s (CPU)"),
                                          ("vs_uncached_points", "Δ points"),
                                          ("vs_uncached_p", "McNemar p"),
                                          ("vs_uncached", "verdict")],
                         cls=lambda s: s["vs_uncached"] if s["vs_uncached"] in ("better", "worse")
                         else None),
                  "<h3>AUP (accuracy under parallelism, d3LLM)</h3>",
                  _table(acc.get("aup", []), [("model", "model"), ("pipeline", "pipeline"),
                                              ("cache", "cache"), ("aup", "AUP"),
                                              ("max_tokens_per_forward", "max tokens/forward"),
                                              ("points", "points")])]
    if data.get("trajectory"):
        parts += ["<h2>Trajectory error along FP's sampler</h2>",
                  _table(data["trajectory"], [("model", "model"), ("pipeline", "pipeline"),
                                              ("seed", "seed"), ("kl_mean", "KL per step"),
                                              ("wrong_commit_rate", "wrong-commit rate"),
                                              ("top1_agreement_mean", "top-1 agreement")])]
    parts.append("<h2>Plots</h2>")
    parts += [f"<h3>{html.escape(name)}</h3><img alt='{html.escape(name)}' src='{uri}'>"
              for name, uri in _images(data)]
    parts.append("</body></html>\n")
    return "\n".join(parts)

"""Finding by finding: the published claims the study can speak to, each checked on the study's
own data with paired tests (significance, never the size of a gap).

Sources: "Quantization Meets dLLMs" (arXiv 2508.14896), DLLMQuant (2508.14090), Quant-dLLM
(2510.03274), STaR-Quant (2606.04945), FAIR-Calib (2606.06547), Fast-dLLM's cache and
threshold decoding. A claim whose pipelines are not in the grid says so. Verdicts: "agrees",
"disagrees", "mixed" (both directions), "not resolved" (paired ties), "indirect", "not
testable here"."""
from __future__ import annotations

from .significance import versus

HIGHER = {"cloze_acc": True, "exact_match": True, "bits_per_byte": False}


def _rows(data, model, pipe, task):
    return [r for r in data["rows"] if (r["model"], r["pipeline"], r["task"]) == (model, pipe, task)]


def _models(data):
    return list(dict.fromkeys(r["model"] for r in data["rows"]))


def _pipes(data):
    return set(r["pipeline"] for r in data["rows"])


def _metric(data, task):
    return next((s["metric"] for s in data["summary"] if s["task"] == task), None)


def _pair(data, model, a, b, task) -> dict | None:
    metric = _metric(data, task)
    ra, rb = _rows(data, model, a, task), _rows(data, model, b, task)
    if not metric or not ra or not rb:
        return None
    return versus(ra, rb, metric, HIGHER.get(metric, True))


def _pairs(data, a, b) -> list[tuple[str, str, dict]]:
    """(model, task, comparison of a against b) for every model and task with both rows."""
    tasks = list(dict.fromkeys(r["task"] for r in data["rows"]))
    out = []
    for m in _models(data):
        for t in tasks:
            c = _pair(data, m, a, b, t)
            if c is not None:
                out.append((m, t, c))
    return out


def _text(pairs) -> str:
    return "; ".join(f"{m} {t}: {c['verdict']}" + (f" (p={c['p']:.2g})" if c["test"].startswith(
        "mcnemar") else f" [{c['lo']:+.3f}, {c['hi']:+.3f}]") for m, t, c in pairs)


def _missing(data, needed) -> str | None:
    lack = [p for p in needed if p not in _pipes(data)]
    return f"pipelines not in this grid: {', '.join(lack)}" if lack else None


def _against_fp(data, pipes, expect_worse: bool) -> dict:
    pairs = [(m, t, c) for p in pipes if p in _pipes(data)
             for m, t, c in _pairs(data, p, "fp")]
    if not pairs:
        return {"verdict": "not testable here", "measured": _missing(data, pipes) or "no items"}
    worse = sum(c["verdict"] == "worse" for *_, c in pairs)
    if expect_worse:
        verdict = "agrees" if worse else "not resolved"
    else:
        verdict = "disagrees" if worse else "agrees"
    return {"verdict": verdict, "measured": f"{worse} of {len(pairs)} (pipeline, model, task) "
            f"cells significantly worse than FP"}


def _within(data, pipes, pct: float) -> dict:
    """Every cell's loss vs FP below pct percent, judged by the far end of its paired 95%
    interval (a size claim: a significant but small loss still agrees)."""
    fp = {(s["model"], s["task"]): s["value"] for s in data["summary"] if s["pipeline"] == "fp"}
    cells = [s for s in data["summary"] if s["pipeline"] in pipes and s.get("vs_fp")]
    if not cells:
        return {"verdict": "not testable here", "measured": _missing(data, pipes) or "no items"}
    bounds = []                # (near, far) ends of each cell's loss interval, in percent
    for s in cells:
        sign = -1.0 if s["higher_is_better"] else 1.0           # loss = sign · diff
        ref = abs(fp[(s["model"], s["task"])]) or 1.0
        ends = sorted(100.0 * sign * s["vs_fp"][k] / ref for k in ("lo", "hi"))
        bounds.append((ends[0], ends[1], s))
    near = max(b[0] for b in bounds)
    far, _, s = max(((b[1], b[0], b[2]) for b in bounds), key=lambda b: b[0])
    # agrees: every interval below pct; disagrees: some interval wholly above; else unresolved
    verdict = "agrees" if far < pct else ("disagrees" if near >= pct else "not resolved")
    return {"verdict": verdict,
            "measured": f"largest loss bound {far:.1f}% ({s['model']} {s['pipeline']} "
            f"{s['task']}; far end of the paired 95% interval), largest near end {near:.1f}%, "
            f"over {len(cells)} cells"}


def _a_vs_b(data, a, b, a_should: str) -> dict:
    miss = _missing(data, [a, b])
    if miss:
        return {"verdict": "not testable here", "measured": miss}
    pairs = _pairs(data, a, b)
    got = {c["verdict"] for *_, c in pairs}
    other = "worse" if a_should == "better" else "better"
    if got <= {"tie"}:
        verdict = "not resolved"
    elif other not in got:
        verdict = "agrees"
    else:
        verdict = "disagrees" if a_should not in got else "mixed"
    return {"verdict": verdict, "measured": f"{a} vs {b}: " + _text(pairs)}


def _rank(xs):
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    r = [0.0] * len(xs)
    for pos, i in enumerate(order):
        r[i] = float(pos)
    return r


def spearman(xs, ys) -> float | None:
    """Spearman's rank correlation (no tie correction); None below 3 points."""
    if len(xs) < 3:
        return None
    rx, ry = _rank(xs), _rank(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sx = sum((a - mx) ** 2 for a in rx) ** 0.5
    sy = sum((b - my) ** 2 for b in ry) ** 0.5
    return cov / (sx * sy) if sx and sy else None


def _frontier(data) -> dict:
    """FAIR-Calib's premise, indirectly: does the trajectory's wrong-commit rate rank the
    pipelines by their math loss?"""
    traj = {(t["model"], t["pipeline"]): t["wrong_commit_rate"] for t in data.get("trajectory", [])}
    parts = []
    for m in _models(data):
        pts = [(traj[(m, s["pipeline"])], s["drop_vs_fp_pct"]) for s in data["summary"]
               if s["model"] == m and s["task"] == "math" and (m, s["pipeline"]) in traj
               and s["drop_vs_fp_pct"] is not None]
        rho = spearman([p[0] for p in pts], [p[1] for p in pts])
        if rho is not None:
            parts.append(f"{m}: Spearman ρ(wrong-commit rate, math drop) = {rho:+.2f} over "
                         f"{len(pts)} pipelines")
    if not parts:
        return {"verdict": "not testable here", "measured": "needs the trajectory columns of "
                "at least 3 quantized pipelines with a math row"}
    return {"verdict": "indirect", "measured": "; ".join(parts)}


def _acceleration(data) -> dict:
    summ = [s for s in data.get("acceleration", {}).get("summary", [])
            if s["threshold"] == "0.9" and s["cache"] == "none"]
    if not summ:
        return {"verdict": "not testable here", "measured": "no acceleration rows at threshold 0.9"}
    within = [f"{s['model']} {s['pipeline']} (block {s['block_length']}): "
              f"{s['vs_uncached_points']:+.1f} pt, {s['vs_uncached']}" for s in summ
              if s["vs_uncached_points"] is not None]
    worse = sum(s["vs_uncached"] == "worse" for s in summ)
    far = sum((s["vs_uncached_points"] or 0.0) < -1.0 for s in summ)
    # no significant loss and none beyond 1 point: agrees; losses beyond 1 point that the
    # paired test cannot call: not resolved
    verdict = "disagrees" if worse else ("agrees" if not far else "not resolved")
    return {"verdict": verdict, "measured": f"{worse} of {len(summ)} settings significantly "
            f"worse, {far} more than 1 point below their uncached run; " + "; ".join(within)}


CLAIMS = [
    ("2508.14896", "8-bit weight-activation quantization is near lossless",
     lambda d: _against_fp(d, ["w8a8-rtn", "w8a8-smoothquant", "w8a8-quarot", "w8a8-duquant",
                               "w8a8-fp8"], expect_worse=False)),
    ("2508.14896", "4-bit weight-only GPTQ is safe (< 4% loss)",
     lambda d: _within(d, ["w4a16-gptq"], 4.0)),
    ("2508.14896", "AWQ is ahead of GPTQ at 4-bit weight-only (Dream-7B-Instruct numbers)",
     lambda d: _a_vs_b(d, "w4a16-awq", "w4a16-gptq", "better")),
    ("2508.14896", "at W4A4 without rotation the loss is large",
     lambda d: _against_fp(d, ["w4a4-rtn", "w4a4-smoothquant", "w4a4-awq"], expect_worse=True)),
    ("2508.14896", "rotation (QuaRot) beats SmoothQuant at W4A4",
     lambda d: _a_vs_b(d, "w4a4-quarot", "w4a4-smoothquant", "better")),
    ("2508.14896", "rotation (DuQuant) beats round-to-nearest at W4A4",
     lambda d: _a_vs_b(d, "w4a4-duquant", "w4a4-rtn", "better")),
    ("2508.14090 (DLLMQuant)", "plain AWQ loses much at W4A4",
     lambda d: _against_fp(d, ["w4a4-awq"], expect_worse=True)),
    ("2510.03274 (Quant-dLLM)", "2-bit weight-only GPTQ breaks where 3-bit does not",
     lambda d: _a_vs_b(d, "w2a16-gptq", "w3a16-gptq", "worse")),
    ("llm-compressor presets (issue 28)", "NVFP4 W4A4 is ahead of integer W4A4 round-to-nearest",
     lambda d: _a_vs_b(d, "w4a4-nvfp4", "w4a4-rtn", "better")),
    ("llm-compressor presets (issue 28)", "FP8 W8A8 is near lossless",
     lambda d: _against_fp(d, ["w8a8-fp8"], expect_worse=False)),
    ("2410.09426 (FlatQuant)", "learned transforms beat QuaRot's fixed rotation at W4A4",
     lambda d: _a_vs_b(d, "w4a4-learned", "w4a4-quarot", "better")),
    ("2606.04945 (STaR-Quant)", "[MASK] and unmasked tokens need separate activation transforms",
     lambda d: {"verdict": "not testable here",
                "measured": "no mask-aware transform in qpass's pipelines"}),
    ("2606.06547 (FAIR-Calib)", "errors at the commit frontier drive the loss",
     _frontier),
    ("Fast-dLLM", "threshold-0.9 parallel decoding keeps accuracy (quantized models too)",
     _acceleration),
]


def findings(data: dict) -> list[dict]:
    """One entry per claim: source, claim, verdict, what was measured."""
    return [{"source": src, "claim": claim, **check(data)} for src, claim, check in CLAIMS]

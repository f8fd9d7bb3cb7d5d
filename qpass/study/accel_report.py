"""Tables and plots of the acceleration dimension and the trajectory columns.

- accel_summary: each (model, pipeline, cache, threshold, block length) setting with accuracy
  in percent, tokens per forward and per CPU second, and its paired test (McNemar, exact)
  against the same pipeline's uncached, schedule-decoded run at the same block length;
- aup_table: AUP (aup.py) per (model, pipeline, cache) over its thresholds × block lengths,
  y_max the best accuracy of any setting of any pipeline of that model;
- merge_trajectory: the trajectory's mean per-step KL and wrong-commit rate as columns of the
  main grid's summary lines (seed means)."""
from __future__ import annotations

from pathlib import Path

from ..folders.owned import replacing
from .aup import aup
from .significance import versus

NONE = "none"


def _label(t) -> str:
    return NONE if t is None else f"{t:g}"


def accel_summary(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = (r["model"], r["pipeline"], r["cache"], r["threshold"], r["block_length"])
        groups.setdefault(key, []).append(r)
    out = []
    for (model, pipe, cache, thr, bl), rs in groups.items():
        base = groups.get((model, pipe, NONE, None, bl))
        cmp = None if base is None or (cache, thr) == (NONE, None) else \
            versus(rs, base, "exact_match", True)
        n = len(rs)
        acc = 100.0 * sum(r["exact_match"] for r in rs) / n
        tps = [r["tokens_per_second"] for r in rs if r.get("tokens_per_second")]
        out.append({"model": model, "pipeline": pipe, "format": rs[0]["format"],
                    "cache": cache, "threshold": _label(thr), "block_length": bl,
                    "accuracy_pct": acc, "items": sum(r["n"] for r in rs),
                    "tokens_per_forward": sum(r["tokens_per_forward"] for r in rs) / n,
                    "tokens_per_second": sum(tps) / len(tps) if tps else None,
                    "vs_uncached_points": None if cmp is None else 100.0 * cmp["diff"],
                    "vs_uncached_p": None if cmp is None else cmp["p"],
                    "vs_uncached": "–" if cmp is None else cmp["verdict"]})
    return out


def aup_table(summary: list[dict]) -> list[dict]:
    best = {}
    for s in summary:
        best[s["model"]] = max(best.get(s["model"], 0.0), s["accuracy_pct"])
    curves: dict[tuple, list[dict]] = {}
    for s in summary:
        curves.setdefault((s["model"], s["pipeline"], s["cache"]), []).append(s)
    out = []
    for (model, pipe, cache), pts in curves.items():
        # at equal parallelism the better accuracy first: y_1 is the best the least parallel
        # setting achieves (d3LLM sorts by ρ alone)
        pts = sorted(pts, key=lambda s: (s["tokens_per_forward"], -s["accuracy_pct"]))
        out.append({"model": model, "pipeline": pipe, "cache": cache,
                    "aup": aup([s["tokens_per_forward"] for s in pts],
                               [s["accuracy_pct"] for s in pts], best[model]),
                    "max_tokens_per_forward": max(s["tokens_per_forward"] for s in pts),
                    "points": len(pts)})
    return out


def merge_trajectory(summary: list[dict], traj: list[dict]) -> None:
    """Add traj_kl_mean / traj_wrong_commit_rate (seed means) to the summary's lines."""
    acc: dict[tuple, list[dict]] = {}
    for t in traj:
        acc.setdefault((t["model"], t["pipeline"]), []).append(t)
    for s in summary:
        ts = acc.get((s["model"], s["pipeline"]))
        if ts:
            s["traj_kl_mean"] = sum(t["kl_mean"] for t in ts) / len(ts)
            s["traj_wrong_commit_rate"] = sum(t["wrong_commit_rate"] for t in ts) / len(ts)


def _f(v, spec=".3f") -> str:
    return "–" if v is None else (format(v, spec) if isinstance(v, float) else str(v))


def markdown(summary: list[dict], aups: list[dict], traj: list[dict]) -> str:
    lines = []
    if summary:
        lines += ["", "## Quantization × acceleration (math, paired vs own uncached run)", "",
                  "| model | pipeline | format | cache | threshold | block | accuracy % | "
                  "tokens/forward | tokens/s (CPU) | Δ vs uncached (points) | McNemar p | "
                  "verdict |", "|" + "---|" * 12]
        lines += [f"| {s['model']} | {s['pipeline']} | {s['format']} | {s['cache']} | "
                  f"{s['threshold']} | {s['block_length']} | {s['accuracy_pct']:.1f} | "
                  f"{s['tokens_per_forward']:.2f} | {_f(s['tokens_per_second'], '.1f')} | "
                  f"{_f(s['vs_uncached_points'], '+.1f')} | {_f(s['vs_uncached_p'], '.3g')} | "
                  f"{s['vs_uncached']} |" for s in summary]
    if aups:
        lines += ["", "## AUP (accuracy under parallelism, d3LLM)", "",
                  "| model | pipeline | cache | AUP | max tokens/forward | points |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {a['model']} | {a['pipeline']} | {a['cache']} | {a['aup']:.1f} | "
                  f"{a['max_tokens_per_forward']:.2f} | {a['points']} |" for a in aups]
    if traj:
        lines += ["", "## Trajectory error along FP's sampler (math prompts)", "",
                  "| model | pipeline | seed | KL per step (mean, nats) | wrong-commit rate | "
                  "top-1 agreement |", "|---|---|---|---|---|---|"]
        lines += [f"| {t['model']} | {t['pipeline']} | {t['seed']} | {t['kl_mean']:.5f} | "
                  f"{t['wrong_commit_rate']:.3f} | {t['top1_agreement_mean']:.3f} |"
                  for t in traj]
    return "\n".join(lines) + ("\n" if lines else "")


def plots(summary: list[dict], traj: list[dict], out: Path) -> list[Path]:
    """accuracy_vs_parallelism.png (per model: accuracy vs tokens per forward, one line per
    pipeline × cache) and trajectory_kl.png (per model: KL per step, one line per pipeline)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    written = []
    for name, data, draw in (("accuracy_vs_parallelism", summary, _draw_accel),
                             ("trajectory_kl", traj, _draw_traj)):
        if not data:
            continue
        models = sorted({d["model"] for d in data})
        fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
        for ax, model in zip(axes[0], models):
            draw(ax, [d for d in data if d["model"] == model], model)
        fig.tight_layout()
        written.append(out / f"{name}.png")
        with replacing(written[-1]) as tmp:
            fig.savefig(tmp, dpi=100)
        plt.close(fig)
    return written


def _draw_accel(ax, part, model):
    for key in sorted({(s["pipeline"], s["cache"]) for s in part}):
        pts = sorted((s["tokens_per_forward"], s["accuracy_pct"]) for s in part
                     if (s["pipeline"], s["cache"]) == key)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=" ".join(key))
    ax.set_title(f"{model}: accuracy vs parallelism (math)")
    ax.set_xlabel("tokens per forward")
    ax.set_ylabel("exact match %")
    ax.legend(fontsize=6)


def _draw_traj(ax, part, model):
    for t in part:
        ax.plot(range(1, len(t["kl_per_step"]) + 1), [max(k, 1e-12) for k in t["kl_per_step"]],
                marker=".", label=t["pipeline"])
    ax.set_yscale("log")
    ax.set_title(f"{model}: KL(FP‖Q) per denoising step")
    ax.set_xlabel("step")
    ax.legend(fontsize=6)

"""The trajectory PNG: per-step KL, top-1 and commit agreement, and per-block attribution."""
from __future__ import annotations

from pathlib import Path

from ..errors import QpassError
from ..folders.owned import replacing


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise QpassError("the trajectory plot needs matplotlib: pip install 'qpass[plot]' (or "
                         "leave out the PNG)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_trajectory(report: dict, path: str | Path, title: str = "") -> Path:
    """Write a 2×2 figure for a `TrajectoryReport.to_dict()`: KL(FP‖Q) per step (log scale;
    dotted lines at each model's earliest free-running divergence), top-1 agreement,
    commit-set Jaccard, and the per-block attribution when there is one."""
    plt = _pyplot()
    models = report["models"]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    (ax_kl, ax_top), (ax_commit, ax_blocks) = axes
    for i, (name, entry) in enumerate(models.items()):
        color = f"C{i}"
        steps = [s["step"] for s in entry["steps"]]
        ax_kl.plot(steps, [max(s["kl"], 1e-12) for s in entry["steps"]], color=color,
                   marker=".", label=f"{name} (mean {entry['summary']['kl_mean']:.3g})")
        earliest = entry.get("free_running", {}).get("earliest")
        if earliest is not None:
            ax_kl.axvline(earliest, color=color, linestyle=":", linewidth=1)
        ax_top.plot(steps, [s["top1_agreement"] for s in entry["steps"]], color=color,
                    marker=".", label=name)
        ax_commit.plot(steps, [s["commit_jaccard"] for s in entry["steps"]], color=color,
                       marker=".", label=name)
    ax_kl.set_yscale("log")
    ax_kl.set_title("KL(FP‖Q) on masked positions (nats)\n(dotted: first free-running divergence)")
    ax_top.set_title("top-1 agreement on masked positions")
    ax_commit.set_title("committed-set agreement (Jaccard)")
    for ax in (ax_kl, ax_top, ax_commit):
        ax.set_xlabel("denoising step")
        ax.legend(fontsize=7)
    ax_top.set_ylim(-0.02, 1.02)
    ax_commit.set_ylim(-0.02, 1.02)
    _attribution_panel(ax_blocks, models)
    s = report["settings"]
    fig.suptitle(title or f"trajectory error ({s['sampler']} sampler, {s['prompts']} prompts, "
                 f"gen {s['gen_length']}, {s['steps']} steps)")
    fig.tight_layout()
    path = Path(path)
    with replacing(path, "--png") as tmp:     # never written through a link (DESIGN §6)
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def _attribution_panel(ax, models: dict) -> None:
    with_attr = [(n, e["attribution"]) for n, e in models.items() if "attribution" in e]
    if not with_attr:
        ax.axis("off")
        ax.text(0.5, 0.5, "no per-block attribution requested", ha="center", va="center")
        return
    width = 0.8 / len(with_attr)
    for i, (name, attr) in enumerate(with_attr):
        xs = [b["block"] + (i - (len(with_attr) - 1) / 2) * width for b in attr["blocks"]]
        ax.bar(xs, [b["effect"] for b in attr["blocks"]], width, color=f"C{list(models).index(name)}",
               label=f"{name} (top: block {attr['top_block']})")
    ax.set_xlabel("transformer block")
    ax.set_ylabel("mean KL (nats)")
    ax.set_title(f"per-block attribution: {with_attr[0][1]['effect']}")
    ax.legend(fontsize=7)

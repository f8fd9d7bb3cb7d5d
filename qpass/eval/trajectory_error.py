"""Per-denoising-step error of a quantized dLLM along the FP sampler's trajectory.

    report = qpass.eval.trajectory(fp, {"w4a4-rtn": q1, "w4a4-quarot": q2}, prompts,
                                   gen_length=32, steps=32, block_length=16)
    report.to_dict()["models"]["w4a4-rtn"]["steps"][5]["kl"]

How it works, without a second sampler: the FP model is sampled by qpass.sampling's own
sampler through a tap that records every canvas it is called on (one call per step; the
cache is off so every call sees the whole canvas). Each quantized model is then scored on
exactly those canvases (KL(FP‖Q) and top-1 agreement on the masked positions). The set it
would commit is obtained by REPLAYING the same sampler: the tap returns the recorded FP
logits for steps < s and the quantized logits at step s, and the canvas after step s is read
back — so the commit rule (schedule, remasking, Gumbel noise, Dream's algorithms) is the
sampler's own, with its seeded randomness reproduced draw for draw. Free-running divergence
runs the sampler on each model alone and compares the canvases step by step.

Memory: the recorded logits of the generated region are kept on the CPU in float32 (float64 models: float64),
steps × rows × gen_length × vocab × 4 bytes per model (about 9 MB per model for tiny-llada
with 8 prompts, 32 steps and 32 tokens); use fewer prompts or steps for a large vocabulary."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch

from ..display import progress as progress_lines
from ..errors import QpassError
from ..sampling import generate, resolve_sampler
from ..sampling.common import denoise, encode_text, special_ids
from .trajectory_metrics import commit_measures, first_divergence, step_measures


class _StopReplay(Exception):
    """Raised by the replay tap once the step it replays has been taken."""


def _kept(logits: torch.Tensor) -> torch.Tensor:
    """Logits as recorded: on the CPU, float64 kept, lower precisions widened to float32."""
    logits = logits.detach().cpu()
    return logits if logits.dtype == torch.float64 else logits.float()


class _Tap:
    """Looks like a denoiser to the samplers: forwards to `model`, records each call's
    canvas and logits of the generated region (and the logits of `scored` models on the
    same canvas)."""

    def __init__(self, model, gen_length: int, scored: Mapping[str, object] = ()):
        self.model, self.gen_length, self.scored = model, gen_length, dict(scored)
        self.config = getattr(model, "config", None)
        self.tokenizer = getattr(model, "tokenizer", None)
        self.canvases: list[torch.Tensor] = []
        self.key_mask = None
        self.logits: list[torch.Tensor] = []
        self.scored_logits: dict[str, list[torch.Tensor]] = {k: [] for k in self.scored}

    def parameters(self):
        return self.model.parameters()

    def buffers(self):
        return self.model.buffers()

    def __call__(self, x, key_mask=None):
        out = denoise(self.model, x, key_mask)
        lo = x.shape[1] - self.gen_length
        self.canvases.append(x.detach().clone())
        self.key_mask = key_mask
        self.logits.append(_kept(out[:, lo:]))
        for name, m in self.scored.items():
            self.scored_logits[name].append(_kept(denoise(m, x, key_mask)[:, lo:]))
        return out


class _Replay:
    """Feeds the sampler recorded logits: FP's for calls < step, `q_logits` at `step`, and
    stops at the next call, keeping the canvas the sampler produced."""

    def __init__(self, like: _Tap, fp_logits: list[torch.Tensor], q_logits: torch.Tensor,
                 step: int):
        self.config, self.tokenizer, self.like = like.config, like.tokenizer, like
        self.fp_logits, self.q_logits, self.step = fp_logits, q_logits, step
        self.calls, self.after = 0, None

    def parameters(self):
        return self.like.parameters()

    def buffers(self):
        return self.like.buffers()

    def __call__(self, x, key_mask=None):
        c = self.calls
        self.calls += 1
        if c > self.step:
            self.after = x.detach().clone()
            raise _StopReplay
        if not torch.equal(x, self.like.canvases[c]):
            raise QpassError(f"trajectory replay left the recorded FP trajectory at step {c}: the "
                             f"sampler is not deterministic given its logits and seed")
        src = self.fp_logits[c] if c < self.step else self.q_logits
        full = torch.zeros(x.shape[0], x.shape[1], src.shape[-1], dtype=src.dtype, device=x.device)
        full[:, x.shape[1] - src.shape[1]:] = src.to(x.device)
        return full


@dataclass
class TrajectoryReport:
    """What `trajectory` measured; `to_dict()` is the JSON written by `qpass eval --trajectory`."""
    settings: dict
    models: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"settings": self.settings, "models": self.models}


def summarize(steps: list[dict]) -> dict:
    """Means over the steps that had masked positions."""
    live = [s for s in steps if s["masked"]]
    mean = lambda k: sum(s[k] for s in live) / len(live) if live else 0.0  # noqa: E731
    return {"kl_mean": mean("kl"), "kl_final_step": live[-1]["kl"] if live else 0.0,
            "top1_agreement_mean": mean("top1_agreement"),
            "commit_jaccard_mean": mean("commit_jaccard"),
            "commit_token_agreement_mean": mean("commit_token_agreement"), "steps": len(steps),
            # of all tokens the quantized model would commit along FP's trajectory, the
            # share FP would not commit at that step (place and token)
            "wrong_commit_rate": sum(s.get("wrong_commits", 0) for s in steps)
            / max(sum(s.get("q_committed", 0) for s in steps), 1)}


def _prompt_ids(fp, prompts) -> list[list[int]]:
    if isinstance(prompts, torch.Tensor):
        prompts = prompts.tolist() if prompts.dim() == 2 else [prompts.tolist()]
    prompts = list(prompts)
    if not prompts:
        raise QpassError("trajectory needs at least one prompt")
    if all(isinstance(p, str) for p in prompts):
        tok = getattr(fp, "tokenizer", None)
        if tok is None:
            raise QpassError("text prompts need a tokenizer: the FP model has none; pass token ids")
        return [encode_text(tok, p) for p in prompts]
    return [[int(t) for t in p] for p in prompts]


def _run(model, prompt_ids, sampler, kw):
    return generate(model, prompt_ids, sampler=sampler, cache="none", **kw)


def _after_steps(tap: _Tap, final: torch.Tensor, rows: int) -> list[torch.Tensor]:
    """The canvas after each step: the next call's input, the sampler's output for the last."""
    return [c[:rows] for c in tap.canvases[1:]] + [final[:rows]]


def _replayed_commit(fp_tap: _Tap, q_logits: torch.Tensor, step: int, prompt_ids, sampler, kw,
                     final: torch.Tensor) -> torch.Tensor:
    replay = _Replay(fp_tap, fp_tap.logits, q_logits, step)
    try:
        out = _run(replay, prompt_ids, sampler, kw)
    except _StopReplay:
        return replay.after
    return out                        # the replayed step was the sampler's last


@torch.no_grad()
def trajectory(fp, quantized, prompts, gen_length: int = 32, steps: int = 32,
               block_length: int | None = 16, sampler: str = "auto", seed: int = 0,
               attribution: Mapping[str, Mapping[int, object]] | None = None,
               attribution_mode: str = "quantize-one", free_running: bool = True,
               progress: bool | None = None, **sampler_kw) -> TrajectoryReport:
    """Step-by-step error of `quantized` (one model, or a mapping name → model) against `fp`.

    prompts: texts (encoded with fp's tokenizer) or token-id lists. The sampler is qpass's
    (`sampler="auto"` picks Dream's for logit-shift models); further keyword arguments
    (temperature, remasking, alg, cfg_scale, ...) pass through to it; the cache is always
    off. Per step and model: KL(FP‖Q) (nats, mean and max over masked positions), top-1
    agreement, commit-set Jaccard and token agreement (module docstring); per prompt the
    first step at which free-running trajectories differ. attribution: for a model name,
    {block index: variant model}, scored on the same canvases (see trajectory_blocks).
    progress: the scored steps as a qpass.display.progress phase (None: as the enclosing step or the
    command line says)."""
    if "cache" in sampler_kw:
        raise QpassError("trajectory scores every step on the whole canvas: the cache cannot be "
                         "used (leave cache unset)")
    which = resolve_sampler(fp, sampler)
    models = dict(quantized) if isinstance(quantized, Mapping) else {"quantized": quantized}
    if not models:
        raise QpassError("trajectory needs at least one quantized model")
    ids = _prompt_ids(fp, prompts)
    kw = dict(gen_length=gen_length, steps=steps, seed=seed, **sampler_kw)
    if block_length is not None:
        kw["block_length"] = block_length
    with progress_lines.phase("trajectory", unit="steps", enabled=progress) as shown:
        shown.describe("FP reference run")
        mask_id = special_ids(fp).mask
        rows = len(ids)
        fp_tap = _Tap(fp, gen_length, models)
        fp_final = _run(fp_tap, ids, which, kw)
        after_fp = _after_steps(fp_tap, fp_final, rows)
        lo = fp_final.shape[1] - gen_length
        n = len(fp_tap.canvases)
        shown.set_total(sum(n + int(free_running) + n * len((attribution or {}).get(name, ()))
                            for name in models))
        report = TrajectoryReport(settings={
            "sampler": which, "gen_length": gen_length, "steps": steps,
            "steps_taken": len(fp_tap.canvases), "block_length": block_length, "seed": seed,
            "prompts": rows, "sampler_kw": {k: v for k, v in sampler_kw.items()},
            "attribution_mode": attribution_mode if attribution else None,
            "kl": "nats, over the vocabulary without the mask token, mean over masked positions"})
        for name in models:
            per_step = []
            for s, canvas in enumerate(fp_tap.canvases):
                shown.describe(f"{name}: step {s + 1} of {n}")
                masked = canvas[:rows, lo:] == mask_id
                q_logits = fp_tap.scored_logits[name][s]
                rec = {"step": s, **step_measures(fp_tap.logits[s][:rows], q_logits[:rows],
                                                  masked.cpu(), mask_id)}
                after_q = _replayed_commit(fp_tap, q_logits, s, ids, which, kw, fp_final)
                rec.update(commit_measures(canvas[:rows, lo:], after_fp[s][:, lo:],
                                           after_q[:rows, lo:], mask_id))
                per_step.append(rec)
                shown.advance()
            entry = {"steps": per_step, "summary": summarize(per_step)}
            if free_running:
                shown.describe(f"{name}: free-running")
                entry["free_running"] = _free_running(models[name], ids, which, kw, gen_length,
                                                      after_fp, fp_final, rows, lo)
                shown.advance()
            if attribution and name in attribution:
                shown.describe(f"{name}: block attribution")
                entry["attribution"] = score_variants(fp_tap, attribution[name], rows, lo, mask_id,
                                                      attribution_mode, entry["summary"]["kl_mean"],
                                                      advance=shown.advance)
            report.models[name] = entry
    return report


def _free_running(model, ids, which, kw, gen_length, after_fp, fp_final, rows, lo) -> dict:
    tap = _Tap(model, gen_length)
    q_final = _run(tap, ids, which, kw)
    after_q = _after_steps(tap, q_final, rows)
    first = first_divergence(after_fp, after_q)
    hit = [f for f in first if f is not None]
    same = (fp_final[:rows, lo:] == q_final[:rows, lo:]).double().mean()
    return {"first_divergence": first, "earliest": min(hit) if hit else None,
            "diverged_prompts": len(hit), "final_token_agreement": float(same)}


@torch.no_grad()
def score_variants(fp_tap: _Tap, variants: Mapping[int, object], rows: int, lo: int,
                   mask_id: int, mode: str, full_kl: float, advance=lambda: None) -> dict:
    """Per-step KL of each block variant on the recorded FP canvases.

    mode "quantize-one": variant b = FP with only block b quantized; its KL is block b's own
    contribution. mode "restore-one": variant b = the quantized model with block b back in
    FP; block b's contribution is the KL it removes (full − variant)."""
    blocks = []
    for b, model in sorted(variants.items()):
        per_step = []
        for s, canvas in enumerate(fp_tap.canvases):
            masked = canvas[:rows, lo:] == mask_id
            logits = _kept(denoise(model, canvas, fp_tap.key_mask)[:rows, lo:])
            per_step.append(step_measures(fp_tap.logits[s][:rows], logits, masked.cpu(), mask_id))
            advance()
        kl = [r["kl"] for r in per_step]
        live = [r["kl"] for r in per_step if r["masked"]]
        kl_mean = sum(live) / len(live) if live else 0.0
        effect = kl_mean if mode == "quantize-one" else full_kl - kl_mean
        blocks.append({"block": b, "kl_mean": kl_mean, "effect": effect, "kl": kl,
                       "top1_agreement_mean": sum(r["top1_agreement"] for r in per_step)
                       / max(len(per_step), 1)})
    top = max(blocks, key=lambda r: r["effect"])["block"] if blocks else None
    return {"mode": mode, "blocks": blocks, "top_block": top,
            "effect": "KL of FP with only this block quantized" if mode == "quantize-one"
            else "KL removed by restoring this block to FP"}

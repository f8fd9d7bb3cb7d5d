"""Evaluation of denoisers (FP or compiled): masked-diffusion ELBO perplexity, Monte-Carlo
conditional likelihood and multiple choice, generation tasks (code tasks run in qpass.sandbox).

    r = qpass.eval.elbo_ppl(model, texts)          # EvalResult: bits_per_byte, stderr, ...
    qpass.eval.evaluate(model, tasks=("general", "math", "code"))
    qpass.eval.trajectory(fp, quantized, prompts)  # per-denoising-step error vs FP"""
from ..sandbox import run_candidate  # the code tasks' sandbox, re-exported
from . import humaneval  # noqa: F401  (registers the humaneval task)
from .cloze import ClozeItem, build_cloze
from .elbo import EvalResult, elbo_ppl
from .humaneval import check_humaneval, humaneval_problems
from .likelihood import choose, loglikelihood, loglikelihood_draws
from .runner import DEFAULT_TASKS, evaluate, print_results, results_table
from .tasks import TASKS, TaskSettings, get_task, register
from .trajectory_error import TrajectoryReport, trajectory

__all__ = ["elbo_ppl", "EvalResult", "loglikelihood", "loglikelihood_draws", "choose",
           "run_candidate", "humaneval_problems", "check_humaneval", "evaluate",
           "results_table", "print_results", "DEFAULT_TASKS", "TASKS", "TaskSettings",
           "get_task", "register", "build_cloze", "ClozeItem", "trajectory", "TrajectoryReport"]

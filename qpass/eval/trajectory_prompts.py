"""Prompts for `qpass eval --trajectory`: the user's file, or held-out zoo data of each category."""
from __future__ import annotations

import random
from pathlib import Path

from ..data import sources
from ..errors import QpassError
from .tasks import TaskContext, TaskSettings, eval_text, math_problems


def read_prompts(path) -> list[str]:
    """A .txt file (one prompt per non-empty line; a literal \\n in it is a newline) or a
    .jsonl file (a "prompt" field per line)."""
    path = Path(path)
    if not path.is_file():
        raise QpassError(f"--prompts {path}: no such file")
    if path.suffix == ".jsonl":
        from ..calibration.texts import read_texts
        prompts = read_texts(path, field="prompt")
    elif path.suffix == ".txt":
        from .. import folders
        lines = folders.read_text(path, path.parent, folders.CAPS["data"], "--prompts").splitlines()
        prompts = [ln.replace("\\n", "\n") for ln in lines if ln.strip()]
    else:
        raise QpassError(f"--prompts {path}: expected a .txt file (one prompt per line) or a "
                         f".jsonl file with a \"prompt\" field")
    if not prompts:
        raise QpassError(f"--prompts {path} holds no prompt")
    return prompts


def _text_prompt(text: str, rng: random.Random, width: int) -> str:
    """`width` bytes of held-out text starting at a line start."""
    for _ in range(100):
        i = rng.randrange(0, max(1, len(text) - width))
        start = text.rfind("\n", 0, i) + 1
        piece = text[start:start + width]
        if len(piece.strip()) > width // 2:
            return piece
    return text[:width]


def default_prompts(n: int, data_dir=None, seed: int = 0, width: int = 48) -> list[str]:
    """n prompts cycling over the three categories: a Shakespeare passage, a Python source
    passage, a 3-shot addition problem — all from the held-out splits."""
    rng = random.Random(seed)
    general = eval_text(sources.GENERAL_FILE, data_dir)
    code = eval_text(sources.CODE_FILE, data_dir)
    n_math = (n + 2) // 3
    ctx = TaskContext(tokenizer=None, data_dir=data_dir, seed=seed,
                      settings=TaskSettings(math_items=n_math))
    maths = [p for p, _ in math_problems(ctx)]
    out = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            out.append(_text_prompt(general, rng, width))
        elif kind == 1:
            out.append(_text_prompt(code, rng, width))
        else:
            out.append(maths[i // 3])
    return out

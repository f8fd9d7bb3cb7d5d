"""Cloze multiple choice built deterministically from held-out text.

An item blanks one word of a verse line; the options are the true word and three distractors
of similar length (±1 letter) drawn from the held-out vocabulary, with the true word's
capitalization. A model that knows the language should find the true word most likely given the
words around it. Everything is a pure function of (text, n, seed)."""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

_WORD = re.compile(r"[A-Za-z]{3,}")


@dataclass(frozen=True)
class ClozeItem:
    left: str           # context before the blank (end of the previous line + line start)
    right: str          # rest of the line after the blank
    options: tuple[str, ...]
    label: int          # index of the true word in options


def _verse_lines(lines: list[str]) -> list[int]:
    """Indices of spoken lines: not headings, stage directions or speaker names."""
    keep = []
    for i, line in enumerate(lines):
        s = line.strip()
        if not s or s.startswith(("#", "_", "[")) or s.endswith(":") or s.isupper():
            continue
        if len(_WORD.findall(s)) >= 4:
            keep.append(i)
    return keep


def _styled(word: str, like: str) -> str:
    if like.isupper():
        return word.upper()
    return word.capitalize() if like[0].isupper() else word


def build_cloze(text: str, n: int, seed: int = 0, n_options: int = 4,
                max_left: int = 48) -> list[ClozeItem]:
    """Up to n items; `max_left` caps the left context in characters (keeps scoring cheap)."""
    lines = text.splitlines()
    vocab: dict[int, list[str]] = {}
    for w in sorted({w.lower() for w in _WORD.findall(text)}):
        vocab.setdefault(len(w), []).append(w)
    rng = random.Random(seed)
    candidates = _verse_lines(lines)
    rng.shuffle(candidates)
    items = []
    for i in candidates:
        if len(items) == n:
            break
        line = lines[i]
        word = rng.choice(list(_WORD.finditer(line)))
        true = word.group()
        pool = [w for d in (-1, 0, 1) for w in vocab.get(len(true) + d, []) if w != true.lower()]
        if len(pool) < n_options - 1:
            continue
        options = [true] + [_styled(w, true) for w in rng.sample(pool, n_options - 1)]
        rng.shuffle(options)
        prev = lines[i - 1].strip() + "\n" if i > 0 and lines[i - 1].strip() else ""
        left = (prev + line[:word.start()])[-max_left:]
        items.append(ClozeItem(left=left, right=line[word.end():] + "\n",
                               options=tuple(options), label=options.index(true)))
    return items

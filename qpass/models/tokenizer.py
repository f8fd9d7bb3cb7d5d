"""Byte-level tokenizer of the embedded zoo models: ids 0..255 are bytes, then specials."""
from __future__ import annotations

import json
import os
from pathlib import Path

from qpass import folders

TOKENIZER_FILE = "qpass_tokenizer.json"
MAX_VOCAB = 1 << 24                   # ids beyond this are no byte tokenizer's


class ByteTokenizer:
    def __init__(self, specials: dict[str, int] | None = None, vocab_size: int | None = None):
        self.specials = specials or {"<pad>": 256, "<eos>": 257, "<mask>": 258}
        self.vocab_size = vocab_size or max(self.specials.values()) + 1
        self.pad_token_id = self.specials["<pad>"]
        self.eos_token_id = self.specials["<eos>"]
        self.mask_token_id = self.specials["<mask>"]

    def encode(self, text: str, add_eos: bool = False) -> list[int]:
        ids = list(text.encode("utf-8"))
        return ids + [self.eos_token_id] if add_eos else ids

    def decode(self, ids, skip_special: bool = True) -> str:
        out = bytearray()
        for i in (int(t) for t in ids):
            if i < 256:
                out.append(i)
            elif not skip_special:
                out.extend({v: k for k, v in self.specials.items()}.get(i, f"<{i}>").encode())
        return out.decode("utf-8", errors="replace")

    def __call__(self, text: str) -> dict:
        return {"input_ids": self.encode(text)}

    def save(self, directory: str | Path) -> None:
        data = {"type": "byte", "specials": self.specials, "vocab_size": self.vocab_size}
        Path(directory, TOKENIZER_FILE).write_text(json.dumps(data, indent=1))

    @classmethod
    def load(cls, directory: str | Path) -> "ByteTokenizer":
        from qpass.errors import CheckpointError
        path = Path(directory, TOKENIZER_FILE)
        data = folders.read_json(path, directory, folders.CAPS["tokenizer"],
                                 {"specials": folders.Mapping(int), "vocab_size": int},
                                 "tokenizer file")
        specials, size = data["specials"], data["vocab_size"]
        missing = sorted({"<pad>", "<eos>", "<mask>"} - set(specials))
        bad = sorted(k for k, v in specials.items() if not 256 <= v < size)
        if missing or bad or not 259 <= size <= MAX_VOCAB:
            raise CheckpointError(f"{path} is not a valid qpass tokenizer file (missing "
                                  f"{missing}, ids outside 256..vocab_size-1 {bad[:3]}, vocab_size "
                                  f"{size}); re-save the checkpoint")
        return cls(specials, size)


def save_tokenizer(tokenizer, directory: str | Path) -> None:
    """Write a tokenizer's files into `directory` (HF save_pretrained, or the byte tokenizer's
    save); nothing for None. load_tokenizer reads them back."""
    if tokenizer is None:
        return
    if hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(str(directory))
    elif hasattr(tokenizer, "save"):
        tokenizer.save(directory)


# What transformers' AutoTokenizer reads from a folder (config.json names the tokenizer class
# when tokenizer_config.json does not); additional_chat_templates/*.jinja is added per folder.
HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                      "added_tokens.json", "vocab.json", "merges.txt", "vocab.txt",
                      "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
                      "chat_template.jinja", "chat_template.json", "config.json")
_TEMPLATES = "additional_chat_templates"


def tokenizer_files(directory: Path) -> list[str]:
    """The tokenizer files present in an HF folder (names relative to it)."""
    names = [n for n in HF_TOKENIZER_FILES if os.path.lexists(directory / n)]
    sub = directory / _TEMPLATES
    if sub.is_dir() and not sub.is_symlink():
        names += sorted(f"{_TEMPLATES}/{p.name}" for p in sub.iterdir() if p.name.endswith(".jinja"))
    return names


def load_tokenizer(directory: str | Path, files: set[str] | None = None):
    """The checkpoint's tokenizer: qpass byte tokenizer, else a local HF tokenizer, else None.
    `files`: the only names that may be read (a compiled checkpoint's hashed files); default:
    whatever tokenizer files the folder holds. An HF tokenizer is loaded from a private copy of
    exactly those files, each a regular file inside the folder (qpass.folders.stage_files), so
    a file linking out of the folder is refused, never read, loaded or written onward."""
    directory = Path(directory)
    allowed = (lambda n: n in files) if files is not None else (lambda n: True)
    if allowed(TOKENIZER_FILE) and os.path.lexists(directory / TOKENIZER_FILE):
        return ByteTokenizer.load(directory)
    names = [n for n in tokenizer_files(directory) if allowed(n)]
    if not {"tokenizer.json", "tokenizer_config.json"} & set(names):
        return None
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from qpass.errors import CheckpointError
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()        # its warnings are noise next to our one line
    try:
        with folders.stage_files(directory, names, folders.CAPS["tokenizer"],
                                 "tokenizer file") as staged:
            tok = AutoTokenizer.from_pretrained(str(staged), local_files_only=True,
                                                trust_remote_code=False)
        tok.name_or_path = str(directory)       # where it came from, not the private copy
        return tok
    except CheckpointError:
        raise
    except Exception as e:  # transformers raises many types; a broken file is not "none"
        why = " ".join(str(e).split())[:200]
        raise CheckpointError(f"the tokenizer files in {directory} cannot be loaded "
                              f"({type(e).__name__}: {why}); fix or remove them") from None
    finally:
        hf_logging.set_verbosity(level)

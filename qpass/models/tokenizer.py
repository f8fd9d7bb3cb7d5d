"""Byte-level tokenizer of the embedded zoo models: ids 0..255 are bytes, then specials."""
from __future__ import annotations

import json
from pathlib import Path

TOKENIZER_FILE = "qpass_tokenizer.json"


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
        try:
            data = json.loads(path.read_text())
            return cls(data["specials"], data["vocab_size"])
        except (ValueError, KeyError, TypeError) as e:
            raise CheckpointError(f"{path} is not a qpass tokenizer file ({type(e).__name__}: "
                                  f"{e}); re-save the checkpoint") from None


def save_tokenizer(tokenizer, directory: str | Path) -> None:
    """Write a tokenizer's files into `directory` (HF save_pretrained, or the byte tokenizer's
    save); nothing for None. load_tokenizer reads them back."""
    if tokenizer is None:
        return
    if hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(str(directory))
    elif hasattr(tokenizer, "save"):
        tokenizer.save(directory)


def load_tokenizer(directory: str | Path):
    """The checkpoint's tokenizer: qpass byte tokenizer, else a local HF tokenizer, else None."""
    directory = Path(directory)
    if (directory / TOKENIZER_FILE).exists():
        return ByteTokenizer.load(directory)
    if (directory / "tokenizer.json").exists() or (directory / "tokenizer_config.json").exists():
        from transformers import AutoTokenizer
        from transformers.utils import logging as hf_logging

        from qpass.errors import CheckpointError
        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()        # its warnings are noise next to our one line
        try:
            return AutoTokenizer.from_pretrained(str(directory), local_files_only=True,
                                                 trust_remote_code=False)
        except Exception as e:  # transformers raises many types; a broken file is not "none"
            why = " ".join(str(e).split())[:200]
            raise CheckpointError(f"the tokenizer files in {directory} cannot be loaded "
                                  f"({type(e).__name__}: {why}); fix or remove them") from None
        finally:
            hf_logging.set_verbosity(level)
    return None

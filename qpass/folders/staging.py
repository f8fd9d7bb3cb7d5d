"""Hand a third-party reader only what qpass checked: the named files of a folder, each a
regular file inside it and under its size cap, are copied into a fresh private directory, and
the reader (transformers' tokenizer loader, which opens whatever it finds by name and follows
symlinks) is pointed there. A `chat_template.jinja` linking to ~/.ssh/id_ed25519 is refused
here, so it can never be read, loaded, and then written into an output the user publishes."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .regular import check_name, read_bytes


@contextmanager
def stage_files(folder, names, cap: int, what: str = "file"):
    """Yield a private temporary directory holding a checked copy of each of `names` (plain
    file names, or NAME/SUB for one level of subfolder) that exists in `folder`; it is removed
    on exit."""
    folder = Path(folder)
    tmp = Path(tempfile.mkdtemp(prefix="qpass-staged-"))
    try:
        for name in names:
            parts = name.split("/")
            for p in parts:
                check_name(p, what)
            src = folder.joinpath(*parts)
            if not os.path.lexists(src):
                continue
            data = read_bytes(src, folder, cap, f"{what} {name}")
            dst = tmp.joinpath(*parts)
            dst.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

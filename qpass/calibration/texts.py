"""The user's calibration data: `qpass quantize … --calib PATH` (DESIGN §5, §9).

PATH may be
  a .txt file           one document (the whole file)
  a .jsonl file         one JSON object per line; its "text" field is a document
  a folder              every .txt / .jsonl inside (recursively, in sorted order), or a dataset
                        saved by Hugging Face `datasets` (`Dataset.save_to_disk`: it holds
                        dataset_info.json / state.json) whose "text" column is read
Documents are returned in a fixed order, so a seed picks the same windows every run. Anything
else is one CalibrationError that says what was found and what is accepted."""
from __future__ import annotations

import os
from pathlib import Path

from qpass import folders
from qpass.errors import CalibrationError, UnsafeFileError

SUFFIXES = (".txt", ".jsonl")


def _text(path: Path, root: Path) -> str:
    """A regular, size-capped UTF-8 file inside the folder the user named (qpass.folders)."""
    return folders.read_text(path, root, folders.CAPS["data"], "calibration file")


def _jsonl(path: Path, field: str, root: Path) -> list[str]:
    out = []
    for i, line in enumerate(_text(path, root).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = folders.parse_json(line, f"{path}:{i}")
        except UnsafeFileError as e:
            raise CalibrationError(f"{e}; a .jsonl calibration file holds one JSON object per "
                                   f"line") from None
        if not isinstance(row, dict) or not isinstance(row.get(field), str):
            raise CalibrationError(f"{path}:{i}: expected an object with a string {field!r} "
                                   f"field, got {type(row).__name__}"
                                   f"{' with keys ' + str(sorted(row)) if isinstance(row, dict) else ''}")
        out.append(row[field])
    return out


def _is_hf_dataset(path: Path) -> bool:
    return (path / "dataset_info.json").is_file() or (path / "state.json").is_file() or \
        (path / "dataset_dict.json").is_file()


def _check_dataset_files(path: Path) -> None:
    """The files a saved dataset's state.json names (and the splits dataset_dict.json names)
    are plain names of regular files inside the folder: `datasets` opens them by path."""
    dd = path / "dataset_dict.json"
    if os.path.lexists(dd):
        splits = folders.read_json(dd, path, folders.CAPS["config"], {"splits": [str]},
                                   "dataset file")["splits"]
        for s in splits:
            _check_dataset_files(path / folders.check_name(s, "split"))
        return
    if not os.path.lexists(path / "state.json"):
        return
    state = folders.read_json(path / "state.json", path, folders.CAPS["config"],
                              {"_data_files": [{"filename": str}]}, "dataset file")
    for f in state["_data_files"]:
        folders.regular_file(path / folders.check_name(f["filename"], "data file"), path,
                             "dataset file")


def _hf_dataset(path: Path, field: str) -> list[str]:
    _check_dataset_files(path)
    try:
        import datasets
    except ImportError:
        raise CalibrationError(f"{path} is a saved Hugging Face dataset, and reading it needs the "
                               f"`datasets` package: pip install 'qpass[data]'") from None
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        split = "train" if "train" in ds else sorted(ds)[0]
        ds = ds[split]
    if field not in ds.column_names:
        raise CalibrationError(f"dataset {path} has no {field!r} column (columns: "
                               f"{', '.join(ds.column_names)})")
    return [t for t in ds[field] if isinstance(t, str)]


def read_texts(path, field: str = "text", root=None) -> list[str]:
    """The calibration documents found at `path` (see the module doc); files are read only
    inside `root` (default: the folder `path` names, or the file's own directory)."""
    p = Path(path)
    root = Path(root) if root is not None else (p if p.is_dir() else p.parent)
    if not p.exists():
        raise CalibrationError(f"calibration path {p} does not exist")
    if p.is_dir():
        if _is_hf_dataset(p):
            texts = _hf_dataset(p, field)
        else:
            files = sorted(f for f in p.rglob("*") if f.suffix in SUFFIXES and not f.is_dir())
            if not files:
                raise CalibrationError(f"{p} holds no .txt or .jsonl file and is not a saved "
                                       f"Hugging Face dataset")
            texts = [t for f in files for t in read_texts(f, field, root)]
    elif p.suffix == ".txt":
        texts = [_text(p, root)]
    elif p.suffix == ".jsonl":
        texts = _jsonl(p, field, root)
    else:
        raise CalibrationError(f"calibration file {p} is neither .txt nor .jsonl (or a folder of "
                               f"them, or a saved Hugging Face dataset)")
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise CalibrationError(f"{p} holds no non-empty calibration text")
    return texts

"""Make tampered copies of real checkpoints: edit the manifest, then recompute every hash
(SHA256SUMS guards against accidents, not attackers, so a tamperer recomputes it too)."""
import hashlib
import json
import shutil
from pathlib import Path

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "ckpt_v1"


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def tampered(src: Path, dst: Path, mutate) -> Path:
    """Copy checkpoint `src` to `dst`, apply mutate(manifest) (in place) and rehash."""
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    mutate(m)
    (dst / "manifest.json").write_text(json.dumps(m))
    (dst / "SHA256SUMS").write_text(f"{_sha(dst / 'manifest.json')}  manifest.json\n")
    return dst


def node(op, name, target, args=(), kwargs=None):
    enc = {"tuple": list(args)}
    return {"op": op, "name": name, "target": target, "args": enc,
            "kwargs": {"dict": [[k, v] for k, v in (kwargs or {}).items()]}}


def insert_before_output(m: dict, nodes: list) -> None:
    m["graph"]["nodes"][-1:-1] = nodes


def tampered_tensors(src: Path, dst: Path, mutate_tensors, mutate=None) -> Path:
    """Copy checkpoint `src` to `dst`, apply mutate_tensors(tensors) (a dict of every stored
    tensor, changed in place) and mutate(manifest), then rewrite the weight file and every hash
    (manifest `files` and SHA256SUMS) as a tamperer would."""
    from safetensors.torch import load_file, save_file
    shutil.copytree(src, dst)
    m = json.loads((dst / "manifest.json").read_text())
    for w in m.get("weights", ["model.safetensors"]):
        tensors = load_file(str(dst / w))
        mutate_tensors(tensors)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(dst / w),
                  metadata={"format": "qpass-compiled"})
        m["files"][w] = _sha(dst / w)
    if mutate is not None:
        mutate(m)
    (dst / "manifest.json").write_text(json.dumps(m))
    (dst / "SHA256SUMS").write_text(f"{_sha(dst / 'manifest.json')}  manifest.json\n")
    return dst

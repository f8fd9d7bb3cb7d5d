"""Issue 25's fuzz suite (DESIGN §6): a stranger's folder — a compiled checkpoint or an HF
model directory — mutated at random (JSON fields of the manifest, config and index; the
safetensors headers; files truncated, emptied, replaced by links out of the folder, FIFOs,
devices or directories) always gives success or ONE QpassError line: never another
exception, never a hang, never a read of a file outside the folder (a sys.addaudithook hook
watches every open) and never a write outside the output. Whatever loads also runs a forward
pass, which must succeed or fail the same way.

The mutated checkpoint is rehashed after each mutation (SHA256SUMS stops accidents, not an
attacker, who recomputes it), so the checks behind the hashes are what is fuzzed."""
import hashlib
import json
import os
import shutil
import struct
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import qpass
from qpass import models
from qpass.errors import QpassError
from qpass.runtime import load_compiled

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "ckpt_main_32d14b6"
CHECKPOINTS = ["llada_w4a8_gptq_lowered", "llada_w4a16_awq", "llada_w8a8kv8_rtn_lowered"]
ZOO = Path(qpass.__file__).parent / "zoo" / "tiny-llada"
NO_SHRINK = [Phase.explicit, Phase.reuse, Phase.generate]   # a failure is shown as found
FUZZ = settings(max_examples=80, deadline=None, derandomize=True, phases=NO_SHRINK,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow, HealthCheck.data_too_large])

# ---- watching reads: no open of a path outside the folder being read ---------------------
_watch: dict = {}          # "root": the folder under test, "bad": opens outside it


def _allowed(path: str) -> bool:
    real = os.path.realpath(path)
    roots = [*_watch["roots"], sys.prefix, sys.base_prefix, tempfile_root(),
             str(Path(qpass.__file__).resolve().parents[1]), "/proc", "/sys", "/dev/null",
             "/dev/shm", "/etc", "/usr"]
    return any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots)


def tempfile_root() -> str:
    import tempfile
    return os.path.realpath(tempfile.gettempdir()) + "/qpass-staged-"


def _hook(event, args):
    if _watch.get("root") and event == "open" and isinstance(args[0], (str, bytes, Path)):
        p = os.fsdecode(args[0])
        if "qpass-staged-" in p:
            return
        if not _allowed(p):
            _watch["bad"].append(p)


sys.addaudithook(_hook)     # inert unless a folder is being watched


def outcome(fn, root, also=()):
    """Run fn(): success, or one QpassError line; the audit hook saw no open outside `root`
    (and the folders in `also`: where a run writes)."""
    _watch.update(root=os.path.realpath(root), bad=[],
                  roots=[os.path.realpath(r) for r in (root, *also)])
    try:
        fn()
    except QpassError as e:
        assert "\n" not in str(e).strip(), f"a multi-line error: {e}"
    finally:
        bad, _watch["root"] = _watch["bad"], None
    assert not bad, f"read outside the folder: {bad[:3]}"


# ---- mutations ---------------------------------------------------------------------------
SPECS = st.sampled_from(["int4:g3", "int4:g0", "int8", "int64", "int4:g128:asym", "fp8",
                         "int2:g1", "", "int4:g32:sym:f16scale", "nonsense"])
NUMBERS = st.sampled_from([0, -1, 1, 3, 255, 256, 2**31, 10**7, 2**40, 2**63, -2**63, 1.5,
                           float("inf"), float("nan"), 1e308])
LEAVES = st.one_of(st.none(), st.booleans(), NUMBERS, st.integers(-1000, 1000),
                   st.text(max_size=12), SPECS)
VALUES = st.recursive(LEAVES, lambda c: st.lists(c, max_size=3) |
                      st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=6)


def mutate_json(data, draw, n: int):
    """`n` random edits of a JSON document: walk down from the root to a random place, then
    replace the value there, delete a key, or (for a list) drop or repeat an item."""
    for _ in range(n):
        parent, key, node = None, None, data
        while isinstance(node, (dict, list)) and node and draw(st.integers(0, 4)) > 0:
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            k = keys[draw(st.integers(0, len(keys) - 1))]
            parent, key, node = node, k, node[k]
        if parent is None:
            if draw(st.booleans()):
                return draw(VALUES)
            continue
        action = draw(st.sampled_from(["replace", "replace", "delete", "repeat"]))
        if action == "replace":
            parent[key] = draw(VALUES)
        elif action == "delete":
            del parent[key]
        elif isinstance(parent, list):
            parent.insert(key, parent[key])
        else:
            parent[key + "_"] = parent[key] if isinstance(key, str) else None
    return data


def rehash(d: Path) -> None:
    """What an attacker does after editing a checkpoint: recompute every recorded hash."""
    sha = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()     # noqa: E731
    try:
        m = json.loads((d / "manifest.json").read_text())
    except ValueError:
        m = None
    if isinstance(m, dict) and isinstance(m.get("files"), dict):
        m["files"] = {k: (sha(d / k) if isinstance(k, str) and "/" not in k and
                          (d / k).is_file() and not (d / k).is_symlink() else v)
                      for k, v in m["files"].items()}
        (d / "manifest.json").write_text(json.dumps(m))
    if (d / "manifest.json").is_file():
        (d / "SHA256SUMS").write_text(f"{sha(d / 'manifest.json')}  manifest.json\n")


def mutate_safetensors_header(path: Path, draw) -> None:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header = mutate_json(header, draw, draw(st.integers(1, 3)))
    new = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(new)) + new + raw[8 + n:])


def forward(model) -> None:
    vocab = model.config.vocab_size if isinstance(model.config.vocab_size, int) else 2
    ids = torch.arange(8).remainder(max(1, min(vocab, 97))).view(1, 8)
    with torch.no_grad():
        model(ids)


@pytest.fixture
def secret(tmp_path):
    s = tmp_path / "outside" / "id_ed25519"
    s.parent.mkdir()
    s.write_text("PRIVATE KEY")
    return s


def _place(d: Path, name: str, how: str, secret: Path, draw) -> None:
    """Put something hostile where file `name` of folder `d` was."""
    f = d / name
    data = f.read_bytes() if f.is_file() else b""
    if f.is_symlink() or f.is_file():
        f.unlink()
    elif f.is_dir():
        shutil.rmtree(f)
    if how == "link-out":
        f.symlink_to(secret)
    elif how == "dev-zero":
        f.symlink_to("/dev/zero")
    elif how == "fifo":
        os.mkfifo(f)
    elif how == "dir":
        f.mkdir()
    elif how == "dangling":
        f.symlink_to(d / "no-such-file")
    elif how == "truncated":
        f.write_bytes(data[:draw(st.integers(0, max(0, len(data) - 1)))])
    elif how == "empty":
        f.write_bytes(b"")


PLACEMENTS = st.sampled_from(["link-out", "dev-zero", "fifo", "dir", "dangling", "truncated",
                              "empty"])


@pytest.fixture(scope="module")
def zoo_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("zoo") / "q4"
    qpass.Pipeline([qpass.passes.RTN()], scheme="int4:g32:sym:f16scale").run(
        models.load("tiny-llada"), out=out)
    return out


# ---- compiled checkpoints ----------------------------------------------------------------
def _copy_checkpoint(tmp_path, case) -> Path:
    d = tmp_path / "ck"
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(FIX / case, d)
    return d


def _load_and_run(d):
    forward(load_compiled(d))


@FUZZ
@given(data=st.data(), case=st.sampled_from(CHECKPOINTS))
def test_fuzz_manifest_fields(tmp_path, data, case):
    d = _copy_checkpoint(tmp_path, case)
    m = json.loads((d / "manifest.json").read_text())
    m = mutate_json(m, data.draw, data.draw(st.integers(1, 4)))
    (d / "manifest.json").write_text(json.dumps(m))
    rehash(d)
    outcome(lambda: _load_and_run(d), d)


@FUZZ
@given(data=st.data(), case=st.sampled_from(CHECKPOINTS))
def test_fuzz_checkpoint_tensor_headers(tmp_path, data, case):
    d = _copy_checkpoint(tmp_path, case)
    mutate_safetensors_header(d / "model.safetensors", data.draw)
    rehash(d)
    outcome(lambda: _load_and_run(d), d)


@FUZZ
@given(data=st.data(), case=st.sampled_from(CHECKPOINTS), how=PLACEMENTS,
       rehashed=st.booleans())
def test_fuzz_checkpoint_file_placements(tmp_path, secret, data, case, how, rehashed):
    d = _copy_checkpoint(tmp_path, case)
    names = sorted(p.name for p in d.iterdir())
    _place(d, data.draw(st.sampled_from(names)), how, secret, data.draw)
    if rehashed and how in ("truncated", "empty"):
        rehash(d)
    outcome(lambda: _load_and_run(d), d)


# ---- HF model directories ----------------------------------------------------------------
def _copy_hf(tmp_path) -> Path:
    d = tmp_path / "hf"
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(ZOO, d)
    return d


def _load_hf_and_run(d):
    forward(models.load(d))


@FUZZ
@given(data=st.data())
def test_fuzz_hf_config(tmp_path, data):
    d = _copy_hf(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg = mutate_json(cfg, data.draw, data.draw(st.integers(1, 3)))
    (d / "config.json").write_text(json.dumps(cfg))
    outcome(lambda: _load_hf_and_run(d), d)


@FUZZ
@given(data=st.data())
def test_fuzz_hf_tensor_header_and_index(tmp_path, data):
    d = _copy_hf(tmp_path)
    if data.draw(st.booleans()):
        mutate_safetensors_header(d / "model.safetensors", data.draw)
    else:
        from safetensors import safe_open
        with safe_open(str(d / "model.safetensors"), "pt") as fh:
            index = {"weight_map": {k: "model.safetensors" for k in fh.keys()}}
        index = mutate_json(index, data.draw, data.draw(st.integers(1, 3)))
        (d / "model.safetensors.index.json").write_text(json.dumps(index))
    outcome(lambda: _load_hf_and_run(d), d)


@FUZZ
@given(data=st.data(), how=PLACEMENTS)
def test_fuzz_hf_file_placements(tmp_path, secret, data, how):
    d = _copy_hf(tmp_path)
    names = sorted(p.name for p in d.iterdir() if p.name != "eval")
    _place(d, data.draw(st.sampled_from(names)), how, secret, data.draw)
    outcome(lambda: _load_hf_and_run(d), d)


@settings(max_examples=12, deadline=None, derandomize=True, phases=NO_SHRINK,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data(), how=PLACEMENTS)
def test_fuzz_streamed_quantize_writes_only_its_output(tmp_path, secret, data, how):
    """A hostile HF dir quantized straight from disk: nothing outside --out (and its work
    folder) changes, the secret is never copied into the result."""
    d = _copy_hf(tmp_path)
    names = sorted(p.name for p in d.iterdir() if p.name not in ("eval", "config.json"))
    _place(d, data.draw(st.sampled_from(names)), how, secret, data.draw)
    out = tmp_path / "q" / "w4"
    if out.parent.exists():
        shutil.rmtree(out.parent)
    before = _snapshot(tmp_path, skip=out.parent)

    def run():
        qpass.Pipeline([qpass.passes.RTN()], scheme="int4:g32:sym").run(
            models.load(d, device="meta"), out=out)
    outcome(run, d, also=[out.parent])
    assert _snapshot(tmp_path, skip=out.parent) == before
    if out.exists():
        assert all(b"PRIVATE KEY" not in f.read_bytes() for f in out.iterdir())


def _snapshot(root: Path, skip: Path) -> dict:
    out = {}
    for p in sorted(root.rglob("*")):
        if skip in p.parents or p == skip:
            continue
        if p.is_symlink():
            out[str(p)] = ("link", os.readlink(p))
        elif p.is_file():
            out[str(p)] = ("file", hashlib.sha256(p.read_bytes()).hexdigest())
        else:
            out[str(p)] = ("other", p.is_dir())
    return out


@settings(max_examples=30, deadline=None, derandomize=True, phases=NO_SHRINK,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data(), fmt=st.sampled_from(["gguf", "gptq", "compressed-tensors"]),
       target=st.sampled_from(["manifest.json", "qpass_tokenizer.json"]))
def test_fuzz_export_of_a_hostile_checkpoint(tmp_path, zoo_checkpoint, data, fmt, target):
    """Exports read the same hostile checkpoint (tiny-llada, q4_0 RTN, with its tokenizer):
    one error line, or a file only at --out."""
    from qpass.interop import FORMATS, read_source
    d = tmp_path / "ck"
    if d.exists():
        shutil.rmtree(d)
    shutil.copytree(zoo_checkpoint, d)
    doc = json.loads((d / target).read_text())
    (d / target).write_text(json.dumps(mutate_json(doc, data.draw, data.draw(st.integers(1, 3)))))
    rehash(d)
    out = tmp_path / "x" / ("e.gguf" if fmt == "gguf" else "e")
    if out.parent.exists():
        shutil.rmtree(out.parent)
    out.parent.mkdir()            # the output check's probe file goes there, not beside it
    before = _snapshot(tmp_path, skip=out.parent)
    outcome(lambda: FORMATS[fmt](read_source(load_compiled(d)), out, scale_dtype="float16"),
            d, also=[out.parent])
    assert _snapshot(tmp_path, skip=out.parent) == before


@FUZZ
@given(data=st.data(), case=st.sampled_from(CHECKPOINTS))
def test_fuzz_pipeline_from_manifest(tmp_path, data, case):
    """`eval --trajectory` rebuilds the pipeline a checkpoint records: its pass configs are
    the stranger's too."""
    d = _copy_checkpoint(tmp_path, case)
    m = json.loads((d / "manifest.json").read_text())
    m["pipeline"] = mutate_json(m["pipeline"], data.draw, data.draw(st.integers(1, 4)))
    (d / "manifest.json").write_text(json.dumps(m))
    rehash(d)
    outcome(lambda: qpass.Pipeline.from_manifest(d), d)

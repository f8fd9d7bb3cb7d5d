"""Issue 25, parts 1-2 (the write side of hostile folders, DESIGN §6): work and output folders
qpass creates are its own. Each test is an attack that worked on main before this change:
a symlinked or planted work folder, outputs written through or replacing a symlink, two runs
sharing one work folder, progress records naming files outside the work folder, a cache that
is a pickle, a path read from a file choosing where qpass writes."""
import errno
import fcntl
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import qpass
from qpass import passes as P
from qpass.cli import main
from qpass.errors import OutputPathError, UnsafeFileError
from qpass.models.loading import save_checkpoint
from qpass.runtime import atomic_dir
from qpass.runtime.atomic_dir import commit, discard, new_temporary
from qpass.runtime.output import check_output_file

FAST = ["--pipeline", "w4a16-rtn", "--quiet", "--calib-n", "2", "--seq-len", "32"]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("hf") / "tiny-llada"
    save_checkpoint(qpass.models.load("tiny-llada"), d, dtype=torch.bfloat16)
    return d


def _pipe():
    return qpass.Pipeline([P.FuseNorms(), P.RTN()], scheme="int4:g32:sym")


@pytest.fixture(scope="module")
def once(hf_dir, tmp_path_factory):
    """The tensors of one uninterrupted streamed run of _pipe()."""
    out = tmp_path_factory.mktemp("once") / "ck"
    return _tensors(_pipe().run(str(hf_dir), out=out, progress=False).path)


@pytest.fixture(scope="module")
def small():
    return qpass.Pipeline([P.FuseNorms()], verify=False).run(
        qpass.models.load("tiny-dream-random"), progress=False)


def _tensors(d) -> dict:
    out = {}
    for w in json.loads((Path(d) / "manifest.json").read_text()).get("weights",
                                                                     ["model.safetensors"]):
        out.update(load_file(Path(d) / w))
    return out


def _same(a: dict, b: dict) -> bool:
    return set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def _dead_pid() -> int:
    pid = 4_000_000
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return pid
        except PermissionError:
            pass
        pid += 1


# ---- a. the work folder of a streamed run -------------------------------------------------

def test_symlinked_work_folder_is_refused_and_what_it_points_to_is_untouched(
        hf_dir, tmp_path, monkeypatch, capsys):
    """`cd model && qpass quantize . --out w4` with `.w4.qpass-stream -> ../../Documents`
    planted in the model folder: on main the run wrote its stages into Documents and its
    cleanup unlinked every file there."""
    docs = tmp_path / "Documents"
    docs.mkdir()
    (docs / "thesis.tex").write_text("\\chapter{Results}")
    (docs / "photo.jpg").write_bytes(b"\xff\xd8")
    model = tmp_path / "home" / "model"
    shutil.copytree(hf_dir, model)
    os.symlink("../../Documents", model / ".w4.qpass-stream")
    monkeypatch.chdir(model)
    assert main(["quantize", ".", "--out", "w4", *FAST]) == 2
    err = capsys.readouterr().err
    assert "symbolic link" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in docs.iterdir()) == ["photo.jpg", "thesis.tex"]
    assert (docs / "thesis.tex").read_text() == "\\chapter{Results}"
    assert os.readlink(model / ".w4.qpass-stream") == "../../Documents"
    assert not (model / "w4").exists()


def test_work_folder_that_is_a_file_or_another_users_is_refused(hf_dir, tmp_path):
    (tmp_path / ".o.qpass-stream").write_text("my notes")
    with pytest.raises(UnsafeFileError, match="is a file, not a folder qpass made"):
        _pipe().run(str(hf_dir), out=tmp_path / "o", progress=False)
    assert (tmp_path / ".o.qpass-stream").read_text() == "my notes"
    if os.geteuid() != 0:
        return                                   # chown needs root
    theirs = tmp_path / ".p.qpass-stream"
    theirs.mkdir()
    (theirs / "progress.json").write_text("{}")
    os.chown(theirs, 65534, 65534)
    with pytest.raises(UnsafeFileError, match="belongs to user id 65534"):
        _pipe().run(str(hf_dir), out=tmp_path / "p", progress=False)
    assert (theirs / "progress.json").read_text() == "{}"


def test_planted_work_folder_is_never_written_through_and_foreign_files_stay(
        hf_dir, tmp_path, once):
    """A real work folder left in the model's folder (e.g. from a tarball) holding stage
    names that link to a user's file, a garbage progress.json and a file of the user's: the
    run starts over, replaces the links (on main the boundary cache was written through one),
    and leaves the user's file (on main the cleanup deleted it), so the folder stays."""
    victim = tmp_path / "bashrc"
    victim.write_text("alias ls='ls -F'\n")
    work = tmp_path / ".o.qpass-stream"
    work.mkdir(mode=0o755)
    for name in ("stage-00000.safetensors", "cache-00000.pt", "cache-00001.pt",
                 "globals.safetensors"):
        os.symlink(victim, work / name)
    (work / "progress.json").write_text("{not json")
    (work / "notes.txt").write_text("mine")
    path = _pipe().run(str(hf_dir), out=tmp_path / "o", progress=False).path
    assert victim.read_text() == "alias ls='ls -F'\n"
    assert _same(_tensors(path), once)
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt"]
    assert (work / "notes.txt").read_text() == "mine"


# ---- b. exports and atomic directories ----------------------------------------------------

@pytest.fixture(scope="module")
def q4(tmp_path_factory):
    d = tmp_path_factory.mktemp("q4") / "ck"
    qpass.Pipeline([P.RTN()], scheme="q4_0").run(qpass.models.load("tiny-llada"), verify=False,
                                                   progress=False).save(d)
    return d


@pytest.mark.parametrize("fmt", ["gguf", "gptq", "compressed-tensors"])
def test_export_never_replaces_or_writes_through_a_symlink(q4, tmp_path, capsys, fmt):
    """A dangling symlink at --out was replaced by the GGUF export on main (and the
    directory exports died with a traceback); a link to a user's file is left alone too."""
    user = tmp_path / "notes.txt"
    user.write_text("keep")
    for name, target in (("dangling", tmp_path / "nowhere"), ("to-file", user)):
        link = tmp_path / name
        os.symlink(target, link)
        rc = main(["export", str(q4), "--format", fmt, "--out", str(link)])
        err = capsys.readouterr().err
        assert rc == 2 and "already exists" in err and "Traceback" not in err, err
        assert os.readlink(link) == str(target)
    assert user.read_text() == "keep" and not (tmp_path / "nowhere").exists()


def test_export_under_a_file_is_one_error(q4, tmp_path, capsys):
    (tmp_path / "FILE").write_text("x")
    for fmt in ("gptq", "gguf"):
        rc = main(["export", str(q4), "--format", fmt, "--out", str(tmp_path / "FILE" / "sub")])
        err = capsys.readouterr().err
        assert rc == 2 and "is a file, not a directory" in err, err
    assert (tmp_path / "FILE").read_text() == "x"


def test_stale_temporary_names_planted_by_others_are_never_followed_or_removed(small, tmp_path):
    """Names of dead saves' temporaries next to OUT: a symlink (to a folder of the user's) and
    another user's folder are left alone; this user's real stale temporary goes."""
    victim = tmp_path / "Documents"
    victim.mkdir()
    (victim / "a.txt").write_text("keep")
    dead = _dead_pid()
    link = tmp_path / f".ck.qpass-tmp-{dead}-deadbeef"
    os.symlink(victim, link)
    ours = tmp_path / f".ck.qpass-tmp-{dead}-0badf00d"
    ours.mkdir()
    (ours / "half.safetensors").write_bytes(b"x")
    theirs = tmp_path / f".ck.qpass-tmp-{dead}-cafebabe"
    if os.geteuid() == 0:
        theirs.mkdir()
        (theirs / "their.txt").write_text("theirs")
        os.chown(theirs, 65534, 65534)
    small.save(tmp_path / "ck")
    assert (victim / "a.txt").read_text() == "keep" and os.readlink(link) == str(victim)
    assert not ours.exists()
    if os.geteuid() == 0:
        assert (theirs / "their.txt").read_text() == "theirs"


def test_commit_never_swaps_out_a_symlink(tmp_path):
    """A symlink that appeared at OUT after the caller's check is not exchanged away."""
    victim = tmp_path / "Documents"
    victim.mkdir()
    (victim / "a.txt").write_text("keep")
    out = tmp_path / "out"
    tmp = new_temporary(out)
    (tmp / "model.safetensors").write_text("new")
    os.symlink(victim, out)
    with pytest.raises(qpass.CheckpointError, match="symbolic link"):
        commit(tmp, out)
    discard(tmp)
    assert os.readlink(out) == str(victim) and [p.name for p in victim.iterdir()] == ["a.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Documents", "out"]


# ---- c. one run per output ----------------------------------------------------------------

_HOLDER = """
import fcntl, os, sys
work = sys.argv[1]
os.makedirs(work, mode=0o700, exist_ok=True)
fd = os.open(os.path.join(work, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"{os.getpid()}\\n".encode())
print("held", flush=True)
sys.stdin.read()
"""


def test_a_second_run_on_one_out_fails_at_once_naming_the_first(hf_dir, tmp_path, capsys):
    """Another process writing --out (here: holding its work folder's lock, as a run does):
    the streamed CLI run, the in-memory CLI run and Pipeline.run(out=) are each one error
    before any compute, naming its PID; once that process dies the lock is gone and the run
    goes through. On main the two runs shared the folder (a traceback in one, the other's
    block 0 in the second's checkpoint)."""
    out = tmp_path / "q"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(tmp_path / ".q.qpass-stream")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        for model in (str(hf_dir), "tiny-llada"):
            t0 = time.monotonic()
            assert main(["quantize", model, "--out", str(out), *FAST]) == 2
            err = capsys.readouterr().err
            assert f"another qpass run (PID {holder.pid}" in err and "Traceback" not in err, err
            assert time.monotonic() - t0 < 20 and not out.exists()
        with pytest.raises(OutputPathError, match=f"PID {holder.pid}"):
            _pipe().run(qpass.models.load("tiny-llada"), out=out, progress=False)
        with pytest.raises(OutputPathError, match=f"PID {holder.pid}"):
            _pipe().run(str(hf_dir), out=out, progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert main(["quantize", str(hf_dir), "--out", str(out), *FAST]) == 0   # the kernel freed it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]               # folder gone too


def test_runs_in_one_process_release_the_lock_on_success_and_failure(hf_dir, tmp_path):
    """A failed run unlocks (a rerun in the same process resumes), an in-memory run leaves
    no work folder, and another thread of the same process is refused while one runs."""
    from qpass.pipeline.work_dir import hold
    model = qpass.models.load("tiny-llada")
    _pipe().run(model, out=tmp_path / "m", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    with hold(tmp_path / "m"):
        errors = []

        def other():
            try:
                _pipe().run(model, out=tmp_path / "m", progress=False, overwrite=True)
            except OutputPathError as e:
                errors.append(str(e))
        t = threading.Thread(target=other)
        t.start()
        t.join(60)
        assert errors and f"PID {os.getpid()}" in errors[0]
        _pipe().run(model, out=tmp_path / "m", progress=False, overwrite=True)   # re-entrant
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_concurrent_saves_to_one_out_never_interleave(small, tmp_path, monkeypatch):
    """Two saves of different models to one OUT where the filesystem has no atomic exchange
    (three renames, OUT briefly absent): the second waits for the first's commit instead of
    renaming into the gap (on main: the first then failed, leaving a stray temporary); the
    last commit wins, whole."""
    other = qpass.Pipeline([P.FuseNorms(), P.RTN()], scheme="int8:channel:sym", verify=False).run(
        qpass.models.load("tiny-dream-random"), progress=False)
    out = tmp_path / "ck"
    small.save(out)

    def no_exchange(a, b):
        raise OSError(errno.ENOSYS, "no RENAME_EXCHANGE here")
    monkeypatch.setattr(atomic_dir, "exchange_paths", no_exchange)
    paused, go = threading.Event(), threading.Event()
    real_rename = os.rename

    def rename(src, dst, *a, **k):
        real_rename(src, dst, *a, **k)
        if threading.current_thread().name == "A" and not paused.is_set() and \
                Path(src) == out:                   # A moved the old OUT aside: OUT is absent
            paused.set()
            go.wait(30)
    monkeypatch.setattr(os, "rename", rename)
    errors = []

    def save(m):
        try:
            m.save(out)
        except Exception as e:                      # noqa: BLE001 - the test reports it
            errors.append(repr(e))
    a = threading.Thread(target=save, args=(other,), name="A")
    b = threading.Thread(target=save, args=(small,), name="B")
    a.start()
    assert paused.wait(60)
    b.start()
    b.join(2.0)                                     # on main B renamed into the gap here
    go.set()
    a.join(60)
    b.join(60)
    monkeypatch.undo()
    assert not errors, errors
    ids = torch.randint(0, 101, (1, 6), generator=torch.Generator().manual_seed(0))
    assert torch.equal(qpass.load_compiled(out)(ids), small(ids))     # B committed last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


# ---- d. resume records --------------------------------------------------------------------

def _interrupted(hf_dir, out: Path, monkeypatch) -> tuple[Path, dict]:
    """A streamed run stopped by a full disk after two stages (its own, resumable state)."""
    import safetensors.torch as st
    real, calls = st.save_file, {"n": 0}

    def full(tensors, path, metadata=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, metadata=metadata)
    monkeypatch.setattr(st, "save_file", full)
    with pytest.raises(qpass.CheckpointError, match="disk is full"):
        _pipe().run(str(hf_dir), out=out, progress=False)
    monkeypatch.setattr(st, "save_file", real)
    work = out.parent / f".{out.name}.qpass-stream"
    progress = json.loads((work / "progress.json").read_text())
    assert [s["index"] for s in progress["stages"]] == [0, 1]
    return work, progress


def _loads(monkeypatch) -> list:
    from qpass.pipeline.disk_store import DiskStore
    seen, real = [], DiskStore.load

    def load(self, g, stage):
        seen.append(stage.index)
        return real(self, g, stage)
    monkeypatch.setattr(DiskStore, "load", load)
    return seen


def test_users_own_interrupted_run_resumes(hf_dir, tmp_path, monkeypatch, caplog, once):
    work, _ = _interrupted(hf_dir, tmp_path / "o", monkeypatch)
    assert stat_mode(work) == 0o700
    loaded = _loads(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="qpass"):
        path = _pipe().run(str(hf_dir), out=tmp_path / "o", progress=False).path
    assert loaded and loaded[0] == 2                   # stages 0 and 1 were not recomputed
    assert "ignoring" not in caplog.text
    assert _same(_tensors(path), once)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def stat_mode(p: Path) -> int:
    return os.lstat(p).st_mode & 0o777


def _shard_outside(work, progress, tmp_path):
    users = tmp_path / "users-file.safetensors"
    os.replace(work / "stage-00001.safetensors", users)    # bytes whose hash is recorded
    progress["stages"][1]["shard"] = "../users-file.safetensors"
    return users


def _cache_absolute(work, progress, tmp_path):
    users = tmp_path / "users-cache.pt"
    os.replace(work / "cache-00001.pt", users)
    progress["stages"][1]["cache"] = str(users)
    return users


def _shard_link_out(work, progress, tmp_path):
    users = tmp_path / "users-file.safetensors"
    os.replace(work / "stage-00001.safetensors", users)
    os.symlink(users, work / "stage-00001.safetensors")
    return users


def _wrong_type(work, progress, tmp_path):
    progress["stages"][0]["index"] = "0"


def _progress_is_a_list(work, progress, tmp_path):
    progress.clear()
    return "list"


def _progress_links_out(work, progress, tmp_path):
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps(progress))
    return "link"


@pytest.mark.parametrize("attack", [_shard_outside, _cache_absolute, _shard_link_out,
                                    _wrong_type, _progress_is_a_list, _progress_links_out])
def test_progress_records_outside_the_closed_names_are_ignored(
        hf_dir, tmp_path, monkeypatch, caplog, once, attack):
    """A progress.json naming `../users-file.safetensors` (with its true hash): on main the
    rerun moved the user's file into the checkpoint. Every record that is not what a run
    writes (a name other than stage-NNNNN.safetensors / cache-NNNNN.pt of its own index, an
    absolute path, a link, a field of the wrong type, not an object, the file itself a link)
    is ignored with one warning line; the run starts over and gives the same checkpoint,
    and the user's file is where it was, unchanged."""
    work, progress = _interrupted(hf_dir, tmp_path / "o", monkeypatch)
    users = attack(work, progress, tmp_path)
    before = users.read_bytes() if isinstance(users, Path) else None
    if users == "list":
        (work / "progress.json").write_text("[]")
    elif users == "link":
        os.unlink(work / "progress.json")
        os.symlink(tmp_path / "elsewhere.json", work / "progress.json")
    else:
        (work / "progress.json").write_text(json.dumps(progress))
    loaded = _loads(monkeypatch)
    with caplog.at_level(logging.WARNING, logger="qpass"):
        path = _pipe().run(str(hf_dir), out=tmp_path / "o", progress=False).path
    assert "ignoring" in caplog.text and "progress.json" in caplog.text, caplog.text
    assert len(caplog.records) == 1
    assert loaded[0] == 0                                # started over
    assert _same(_tensors(path), once)
    if before is not None:
        assert users.read_bytes() == before
    assert "users-file.safetensors" not in {p.name for p in Path(path).iterdir()}


def test_a_tampered_cache_cannot_execute_code(hf_dir, tmp_path, monkeypatch, caplog, once):
    """The last stage's boundary cache replaced by a pickle that runs a command on load, its
    hash updated in progress.json: torch.load(weights_only=True) refuses it, the run starts
    over with one warning, and the command never runs."""
    work, progress = _interrupted(hf_dir, tmp_path / "o", monkeypatch)
    mark = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {mark}",)
    torch.save({"main": [Evil()], "shadows": {}}, work / "cache-00001.pt")
    from qpass.runtime.checkpoint import sha256
    progress["stages"][1]["cache_sha256"] = sha256(work / "cache-00001.pt")
    (work / "progress.json").write_text(json.dumps(progress))
    with caplog.at_level(logging.WARNING, logger="qpass"):
        path = _pipe().run(str(hf_dir), out=tmp_path / "o", progress=False).path
    assert not mark.exists()
    assert "ignoring" in caplog.text and "cache-00001.pt" in caplog.text
    assert _same(_tensors(path), once)


# ---- e. nothing read from a file chooses where qpass writes -------------------------------

FIXTURE = Path(__file__).parents[1] / "fixtures" / "ckpt_main_32d14b6" / "llada_w4a8_gptq_lowered"


def test_manifest_offload_dir_writes_nothing_there(tmp_path):
    """An old GPTQ config recorded offload_dir (a path on the machine that made the
    checkpoint): Pipeline.from_manifest drops it, and the rebuilt pipeline's run writes
    nothing there."""
    from qpass.runtime.checkpoint import sha256
    ck = tmp_path / "ck"
    shutil.copytree(FIXTURE, ck)
    manifest = json.loads((ck / "manifest.json").read_text())
    evil = tmp_path / "evil"
    gptq = next(e for e in manifest["pipeline"] if e["name"] == "GPTQ")
    assert "offload_dir" in gptq["config"] and gptq["config"]["version"] == 1
    gptq["config"]["offload_dir"] = str(evil)
    (ck / "manifest.json").write_text(json.dumps(manifest, indent=1))
    (ck / "SHA256SUMS").write_text(f"{sha256(ck / 'manifest.json')}  manifest.json\n")
    pipe = qpass.Pipeline.from_manifest(ck)
    assert all("offload_dir" not in p.config() for p in pipe.passes)
    model = qpass.models.load("tiny-llada")
    calib = qpass.calibration.CalibrationSet.from_ids(
        torch.arange(4000) % 90, mask_id=model.config.mask_token_id, n=2, seq_len=32, seed=0)
    pipe.run(model, calib, progress=False, verify=False)
    assert not evil.exists()


def test_study_out_from_a_config_stays_under_the_current_directory(tmp_path):
    from qpass.study import read_config
    for bad in ("/tmp/elsewhere", "../up", "~/study"):
        cfg = tmp_path / "s.toml"
        cfg.write_text(f'[study]\nout = "{bad}"\n[grid]\npipelines = ["fp"]\ntasks = ["math"]\n'
                       f'[[models]]\npath = "tiny-dream-random"\n')
        with pytest.raises(qpass.QpassError, match="relative folder name"):
            read_config(cfg)
        assert read_config(cfg, out=str(tmp_path / "ok")).out == tmp_path / "ok"   # --out may


# ---- f. result files and the study's folders ----------------------------------------------

def test_json_output_through_a_symlink_is_refused_before_compute(tmp_path, capsys):
    victim = tmp_path / "victim.json"
    victim.write_text('{"mine": 1}')
    for target in (victim, tmp_path / "nowhere.json"):
        link = tmp_path / "results.json"
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(target, link)
        rc = main(["eval", "tiny-llada", "--tasks", "math", "--limit", "1",
                   "--json", str(link)])
        err = capsys.readouterr().err
        assert rc == 2 and "symbolic link" in err, err
        assert os.readlink(link) == str(target)
    assert victim.read_text() == '{"mine": 1}' and not (tmp_path / "nowhere.json").exists()
    with pytest.raises(OutputPathError, match="symbolic link"):
        check_output_file(link, "--png")


def test_outputs_replace_a_regular_file_whole_and_never_a_link(tmp_path):
    from qpass.folders.owned import replacing, write_output
    f = tmp_path / "r.json"
    f.write_text("old")
    os.chmod(f, 0o644)
    write_output(f, "new", "--json")
    assert f.read_text() == "new" and not f.is_symlink()
    with pytest.raises(RuntimeError):
        with replacing(f, "--json") as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash while writing")
    assert f.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
    os.symlink(tmp_path / "r.json", tmp_path / "l.json")
    with pytest.raises(OutputPathError, match="symbolic link"):
        write_output(tmp_path / "l.json", "x", "--json")
    assert f.read_text() == "new"


def test_study_cache_folder_that_is_a_symlink_is_refused(tmp_path):
    """A study folder (with its marker) whose cache/ links elsewhere: on main the cache's
    folders and files were written there."""
    from qpass.study import StudyConfig, run_study
    from qpass.study.runner import MARKER
    victim = tmp_path / "Documents"
    victim.mkdir()
    out = tmp_path / "study"
    out.mkdir()
    (out / MARKER).write_text('{"study": "s"}\n')
    os.symlink(victim, out / "cache")
    cfg = StudyConfig(name="s", out=out, models=[{"name": "m", "path": "tiny-llada"}],
                      pipelines=["fp"], tasks=["math"], eval={"limit": 1})
    with pytest.raises(UnsafeFileError, match="symbolic link"):
        run_study(cfg, lambda name: None, log=lambda s: None)
    assert list(victim.iterdir()) == []

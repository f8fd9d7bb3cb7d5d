"""Problems 2, 4 and 5 of issue 14: saving never deletes what qpass did not write, the target
always holds the old or the new checkpoint, stale temporaries are cleaned, and every output
path is validated before any compute."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import qpass
from qpass import passes as P
from qpass.cli import main


@pytest.fixture(scope="module")
def small():
    return qpass.Pipeline([P.FuseNorms()], verify=False).run(
        qpass.models.load("tiny-dream-random"), progress=False)


def _web_app(d: Path) -> dict:
    """A folder a user cares about that happens to hold a manifest.json."""
    files = {"manifest.json": '{"name": "my-pwa", "start_url": "/"}',
             "thesis.tex": "\\chapter{Results}", "src/app.js": "console.log(1)"}
    for rel, text in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(text)
    return files


def _intact(d: Path, files: dict) -> bool:
    return all((d / rel).is_file() and (d / rel).read_text() == t for rel, t in files.items())


def test_save_refuses_folder_with_foreign_manifest(small, tmp_path):
    files = _web_app(tmp_path / "app")
    with pytest.raises(qpass.CheckpointError, match="not a qpass"):
        small.save(tmp_path / "app")
    assert _intact(tmp_path / "app", files)


def test_cli_out_dot_in_user_folder_deletes_nothing(tmp_path, monkeypatch, capsys):
    files = _web_app(tmp_path)
    monkeypatch.chdir(tmp_path)
    rc = main(["quantize", "tiny-dream-random", "--pipeline", "w8a8-rtn", "--out", ".", "--quiet"])
    assert rc == 2 and "not a qpass" in capsys.readouterr().err
    assert _intact(tmp_path, files)


def test_resave_keeps_user_files_next_to_checkpoint(small, tmp_path):
    d = small.save(tmp_path / "ck")
    (d / "eval").mkdir()
    (d / "eval" / "results.json").write_text("{}")
    (d / "notes.md").write_text("my notes")
    with pytest.raises(qpass.CheckpointError, match="notes.md"):
        small.save(d)
    assert (d / "notes.md").read_text() == "my notes" and (d / "eval" / "results.json").exists()


def test_json_output_never_overwrites_a_checkpoint_file(small, tmp_path, capsys):
    d = small.save(tmp_path / "ck")
    before = (d / "manifest.json").read_bytes()
    rc = main(["eval", str(d), "--tasks", "math", "--limit", "1", "--json", str(d / "manifest.json")])
    assert rc == 2 and "manifest.json" in capsys.readouterr().err
    assert (d / "manifest.json").read_bytes() == before


def test_target_always_holds_a_complete_checkpoint(small, tmp_path, monkeypatch):
    """A crash after the first filesystem move of the replacement must leave a loadable
    checkpoint (old or new) at the target, never nothing."""
    import qpass.runtime.atomic_dir as ck
    target = tmp_path / "ck"
    small.save(target)
    ids = torch.randint(0, 101, (1, 6), generator=torch.Generator().manual_seed(0))
    want = small(ids)
    real_rename, moves = os.rename, []

    def crash_after_first_move(src, dst, *a, **k):
        real_rename(src, dst, *a, **k)
        moves.append((src, dst))
        raise KeyboardInterrupt("power cut (simulated)")
    monkeypatch.setattr(os, "rename", crash_after_first_move)
    monkeypatch.setattr(os, "replace", crash_after_first_move)
    if hasattr(ck, "exchange_paths"):
        real_exchange = ck.exchange_paths

        def crash_after_exchange(a, b):
            real_exchange(a, b)
            moves.append((a, b))
            raise KeyboardInterrupt("power cut (simulated)")
        monkeypatch.setattr(ck, "exchange_paths", crash_after_exchange)
    with pytest.raises(KeyboardInterrupt):
        small.save(target)
    monkeypatch.undo()
    assert moves, "the save never moved anything into place"
    assert torch.equal(qpass.load_compiled(target)(ids), want)


def test_killed_save_leaves_no_temporary_forever(small, tmp_path):
    target = tmp_path / "ck"
    small.save(target)
    # a save killed with SIGKILL half-way leaves its temporary dir; the next save removes it
    code = ("import os, qpass, qpass.runtime.checkpoint as ck\n"
            "from qpass import passes as P\n"
            "m = qpass.Pipeline([P.FuseNorms()], verify=False).run("
            "qpass.models.load('tiny-dream-random'), progress=False)\n"
            "real = ck.graph_to_json\n"
            "def die(gm):\n    os.kill(os.getpid(), 9)\n"
            "ck.graph_to_json = die\n"
            f"m.save({str(target)!r})\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert r.returncode == -9
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "ck"]
    assert leftovers, "the killed save left nothing (test is not exercising a crash)"
    small.save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


@pytest.mark.parametrize("bad", ["/proc/qpass-out", "/sys/qpass-out", "FILE/sub", "RO/out"])
def test_quantize_validates_out_before_compute(tmp_path, monkeypatch, capsys, bad):
    (tmp_path / "FILE").write_text("x")
    ro = tmp_path / "RO"
    ro.mkdir()
    if bad.startswith("RO"):
        if os.geteuid() == 0:
            # root ignores permission bits: a read-only bind mount is the honest read-only fs
            r = subprocess.run(["mount", "--bind", "-o", "ro", str(ro), str(ro)], capture_output=True)
            if r.returncode != 0:
                pytest.skip("cannot make a read-only mount here")
        else:
            ro.chmod(0o500)
    out = bad if bad.startswith("/") else str(tmp_path / bad)
    import qpass.cli.common as common

    def no_compute(*a, **k):
        raise AssertionError("the model was loaded before --out was validated")
    monkeypatch.setattr(common, "load_model", no_compute)
    monkeypatch.setattr("qpass.cli.quantize.load_model", no_compute)
    try:
        rc = main(["quantize", "tiny-dream-random", "--pipeline", "w8a8-rtn", "--out", out])
    finally:
        if bad.startswith("RO") and os.geteuid() == 0:
            subprocess.run(["umount", str(ro)], capture_output=True)
    err = capsys.readouterr().err
    assert rc == 2 and "--out" in err and len(err.strip().splitlines()) == 1


def test_eval_validates_json_before_compute(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("qpass.cli.eval.load_model",
                        lambda *a, **k: (_ for _ in ()).throw(AssertionError("computed first")))
    rc = main(["eval", "tiny-llada", "--tasks", "math", "--json", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "--json" in err and "directory" in err

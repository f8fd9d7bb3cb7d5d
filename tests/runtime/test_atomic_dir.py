"""qpass.runtime.atomic_dir, the one atomic directory writer of compiled checkpoints and
exported directories: a commit replaces or creates OUT whole, never merges into it."""
import pytest

from qpass.errors import CheckpointError
from qpass.runtime.atomic_dir import commit, discard, new_temporary


def _write(tmp, **files):
    for name, text in files.items():
        (tmp / name).write_text(text)


def test_commit_creates_then_replaces_whole(tmp_path):
    out = tmp_path / "out"
    tmp = new_temporary(out)
    _write(tmp, a="1", b="2")
    commit(tmp, out)
    discard(tmp)
    assert sorted(p.name for p in out.iterdir()) == ["a", "b"]
    tmp = new_temporary(out)
    _write(tmp, a="new")
    commit(tmp, out)                       # tmp now holds the old directory
    assert (tmp / "b").read_text() == "2"
    discard(tmp)
    assert [p.name for p in out.iterdir()] == ["a"] and (out / "a").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_no_replace_leaves_an_existing_directory_alone(tmp_path):
    out = tmp_path / "out"
    tmp = new_temporary(out)
    _write(tmp, a="mine")
    out.mkdir()
    (out / "theirs").write_text("keep")    # appeared after the caller checked
    with pytest.raises(CheckpointError, match="appeared while qpass was writing"):
        commit(tmp, out, replace=False)
    discard(tmp)
    assert [p.name for p in out.iterdir()] == ["theirs"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]

"""Issue 26 part 7: what qpass saves or exports ends with the modes a plain `cp` or
save_pretrained gives (files 0o666, folders 0o777, less the umask), whatever its writer created
them with (safetensors writes 0600: a serving container running as another user could not read
the exported model.safetensors); the temporary it fills and the run's work folder stay 0700."""
import os
import stat
from contextlib import contextmanager

import torch
from safetensors.torch import save_file

import qpass
from qpass import passes as P
from qpass.pipeline.work_dir import hold, work_path
from qpass.runtime.atomic_dir import commit, discard, new_temporary


@contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(p) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def test_a_committed_directory_gets_the_modes_of_cp_under_the_users_umask(tmp_path):
    out = tmp_path / "ckpt"
    for mask, files, dirs in ((0o022, 0o644, 0o755), (0o027, 0o640, 0o750)):
        with umask(mask):
            tmp = new_temporary(out)
            try:
                assert mode(tmp) == 0o700                      # private while it fills
                save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))
                assert mode(tmp / "model.safetensors") == 0o600     # what safetensors does
                (tmp / "tok").mkdir(mode=0o700)
                (tmp / "tok" / "vocab.json").write_text("{}")
                os.chmod(tmp / "tok" / "vocab.json", 0o600)
                commit(tmp, out)
            finally:
                discard(tmp)
        assert mode(out) == dirs and mode(out / "tok") == dirs
        assert mode(out / "model.safetensors") == files == mode(out / "tok" / "vocab.json")


def test_publish_modes_leaves_links_and_their_targets_alone(tmp_path):
    from qpass.folders.owned import publish_modes
    secret = tmp_path / "secret"
    secret.write_text("x")
    os.chmod(secret, 0o600)
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    (d / "link").symlink_to(secret)
    with umask(0o022):
        publish_modes(d)
    assert mode(secret) == 0o600 and mode(d) == 0o755


def test_current_umask_reads_without_changing_it():
    from qpass.folders.owned import current_umask
    with umask(0o027):
        assert current_umask() == 0o027
        assert os.umask(0o027) == 0o027


def test_a_saved_checkpoint_is_readable_and_the_work_folder_stays_private(tmp_path):
    model = qpass.models.load("tiny-llada-random")
    out = tmp_path / "w4"
    with umask(0o022), hold(out) as folder:
        qpass.Pipeline([P.RTN("int4:g32:sym")]).run(model, out=out, progress=False)
        assert folder.path == work_path(out) and mode(folder.path) == 0o700
    names = sorted(p.name for p in out.iterdir())
    assert "model.safetensors" in names and "manifest.json" in names
    assert mode(out) == 0o755
    assert {p.name: mode(p) for p in out.iterdir()} == {n: 0o644 for n in names}

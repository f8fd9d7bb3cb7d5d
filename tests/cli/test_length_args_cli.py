"""Lengths the user gives at run time (inspect --seq-len, generate --gen-length/--steps/
--block-length, eval --trajectory's lengths) beyond the model's positions, or beyond any
model's, are one error line (exit 2) before any compute: never a traceback from RoPE."""
import pytest

from qpass.cli import main


def _one_line(capsys, argv):
    try:
        rc = main(argv)
    except SystemExit as e:            # argparse's usage error: exit 2 and one message line
        rc = e.code
    err = [ln for ln in capsys.readouterr().err.strip().splitlines()
           if not ln.startswith("usage") and not ln.startswith(" ")]
    return rc, err


@pytest.mark.parametrize("model,seq_len,says", [
    ("tiny-llada", "100000", "1024 positions"),        # the zoo model holds 1024
    ("tiny-llada", "1025", "1024 positions"),
    ("llada-8b", "5000", "4096 positions"),             # structure only, on meta
    ("tiny-llada", "0", "positive integer"),
    ("tiny-llada", str(10 ** 12), "beyond any model"),
])
def test_inspect_seq_len_beyond_the_model_is_one_line(capsys, model, seq_len, says):
    rc, err = _one_line(capsys, ["inspect", model, "--seq-len", seq_len])
    assert rc == 2 and len(err) == 1 and says in err[0] and "--seq-len" in err[0], err


def test_inspect_seq_len_at_the_limit_works(capsys):
    assert main(["inspect", "tiny-llada-random", "--seq-len", "4096", "--format", "json"]) == 0
    assert "4096" in capsys.readouterr().out


@pytest.mark.parametrize("flags", [["--gen-length", str(10 ** 12)], ["--steps", str(2 ** 40)],
                                   ["--block-length", str(2 ** 25)]])
def test_generate_absurd_lengths_fail_before_loading(capsys, monkeypatch, flags):
    monkeypatch.setattr("qpass.cli.common.load_model",
                        lambda *a, **k: pytest.fail("loaded the model first"))
    rc, err = _one_line(capsys, ["generate", "tiny-llada", "--prompt", "a", *flags])
    assert rc == 2 and len(err) == 1 and flags[0] in err[0] and "beyond" in err[0], err


def test_trajectory_gen_length_beyond_the_model_fails_before_compute(capsys, monkeypatch):
    monkeypatch.setattr("qpass.Pipeline.run", lambda *a, **k: pytest.fail("computed first"))
    rc, err = _one_line(capsys, ["eval", "tiny-llada", "--trajectory", "w8a8-rtn",
                                 "--gen-length", "2048", "--block-length", "2048",
                                 "--steps", "2048"])
    assert rc == 2 and len(err) == 1 and "--gen-length" in err[0] and "1024" in err[0], err

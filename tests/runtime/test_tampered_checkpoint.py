"""Problem 1 of issue 14: a tampered checkpoint (hashes recomputed) must never run code or touch
files when loaded and run; it is a CheckpointError naming the node."""
import json
import sys

import pytest
import torch

import qpass
from tamper import FIX, insert_before_output, node, tampered

SRC = FIX / "dream_w8a8_lowered"
IDS = torch.zeros(1, 4, dtype=torch.long)


def _exec_chain(target_file):
    # get_attr of a module -> .forward.__func__.__globals__['__builtins__']['exec'](code)
    code = f"open({str(target_file)!r}, 'w').write('pwned')"
    return [node("get_attr", "evil_mod", "embed"),
            node("call_function", "evil_fwd", "builtins.getattr", [{"node": "evil_mod"}, "forward"]),
            node("call_function", "evil_fn", "builtins.getattr", [{"node": "evil_fwd"}, "__func__"]),
            node("call_function", "evil_g", "builtins.getattr", [{"node": "evil_fn"}, "__globals__"]),
            node("call_function", "evil_b", "operator.getitem", [{"node": "evil_g"}, "__builtins__"]),
            node("call_function", "evil_x", "operator.getitem", [{"node": "evil_b"}, "exec"]),
            node("call_function", "evil_run", "operator.call", [{"node": "evil_x"}, code])]


def _torch_save(target_file):
    return [node("call_function", "evil_save", "torch.save", [{"node": "embed"}, str(target_file)])]


def _from_file(target_file):
    return [node("call_function", "evil_map", "torch.from_file", ["/etc/hostname"])]


PAYLOADS = {"getattr-exec-chain": _exec_chain, "torch.save": _torch_save,
            "torch.from_file": _from_file}


@pytest.mark.parametrize("payload", sorted(PAYLOADS))
def test_tampered_graph_is_refused_and_runs_nothing(tmp_path, payload):
    pwned = tmp_path / "pwned"
    d = tampered(SRC, tmp_path / "ck", lambda m: insert_before_output(m, PAYLOADS[payload](pwned)))
    try:
        model = qpass.load_compiled(d)
        with torch.no_grad():
            model(IDS)
    except qpass.CheckpointError as e:
        assert "evil_" in str(e)          # names the offending node
    else:
        pytest.fail("a tampered graph loaded and ran")
    assert not pwned.exists()


def test_placeholder_target_cannot_inject_source(tmp_path):
    # fx writes a placeholder's target into the generated forward's signature verbatim
    pwned = tmp_path / "pwned"
    def mutate(m):
        m["graph"]["nodes"][1]["target"] = (f"attention_mask=open({str(pwned)!r}, 'w'), "
                                            f"_=None")
    d = tampered(SRC, tmp_path / "ck", mutate)
    with pytest.raises(qpass.CheckpointError, match="attention_mask"):
        qpass.load_compiled(d)(IDS)
    assert not pwned.exists()


def test_module_path_cannot_reach_attributes(tmp_path):
    def mutate(m):
        mods = m["graph"]["modules"]
        mods["__class__.x"] = mods["embed"]
    d = tampered(SRC, tmp_path / "ck", mutate)
    with pytest.raises(qpass.CheckpointError, match="__class__"):
        qpass.load_compiled(d)

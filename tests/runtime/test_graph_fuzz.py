"""Fuzz the graph loader with mutated real manifests (DESIGN §6): every mutation either is a
CheckpointError or gives a model whose forward opens no file, executes no code, imports
nothing new, starts no process and opens no socket (checked by a sys.addaudithook hook)."""
import copy
import json
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from qpass.errors import CheckpointError
from qpass.runtime.graph_io import build_graph_module
from tamper import FIX

CASES = ["llada_w4a16_rtn", "llada_w4a4_quarot", "dream_w8a8_lowered"]
FORBIDDEN = ("open", "exec", "import", "subprocess", "os.system", "os.exec",
             "os.spawn", "os.posix_spawn", "os.fork", "os.kill", "os.remove", "os.unlink",
             "os.rename", "os.mkdir", "os.listdir", "os.scandir", "shutil", "socket", "ctypes",
             "pty", "webbrowser", "urllib", "builtins.input", "code.__new__", "marshal", "pickle")
_armed: list = []      # non-empty while a fuzzed forward runs
_violations: list = []


def _reading_source_for_a_traceback() -> bool:
    # fx and traceback show the failing source line of installed .py files via linecache;
    # that path is fixed by the code that failed, not chosen by the checkpoint
    f = sys._getframe(2)
    while f is not None:
        if f.f_code.co_filename.endswith("linecache.py"):
            return True
        f = f.f_back
    return False


def _hook(event, args):
    if _armed and event.startswith(FORBIDDEN) and not (
            event == "open" and str(args[0]).endswith(".py") and args[1] == "r"
            and _reading_source_for_a_traceback()):
        _violations.append((event, repr(args)[:200]))
        raise RuntimeError(f"audit: forbidden event {event} during forward")


sys.addaudithook(_hook)   # cannot be removed; inert unless armed

_DATA = {}


def _case(name):
    if name not in _DATA:
        d = FIX / name
        _DATA[name] = (json.loads((d / "manifest.json").read_text()),
                       load_file(str(d / "model.safetensors")))
        gm = build_graph_module(_DATA[name][0]["graph"], _DATA[name][1], _DATA[name][0]["tensors"])
        with torch.no_grad():
            gm(IDS, None)          # warm-up: lazy imports of torch and backends happen here
            try:                   # and fx's error path reads its own source into linecache
                gm(IDS.float(), None)
            except Exception:
                pass
    return _DATA[name]


IDS = torch.tensor([[1, 5, 7, 2]])
NASTY_STR = st.sampled_from(
    ["__globals__", "__builtins__", "__class__", "__subclasses__", "forward", "exec", "eval",
     "/etc/passwd", "shape", "dtype", "reference", "view", "torch.save", "torch.load",
     "torch.from_file", "builtins.eval", "builtins.getattr", "operator.call",
     "operator.attrgetter", "os.system", "subprocess.run", "importlib.import_module",
     "qpass.ops.attention", "qpass.lowered.attention", "operator.getitem", "torch.cat",
     "embed", "rope_cos", "blocks.0", "x=open('/tmp/q','w')", "input_ids", "output"]) | st.text(max_size=12)
JSON = st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=True) | NASTY_STR,
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(
                        st.sampled_from(["node", "tuple", "dict", "slice", "dtype", "device",
                                         "ellipsis", "x"]), c, min_size=1, max_size=2),
                    max_leaves=6)
OPS = st.sampled_from(["placeholder", "get_attr", "call_function", "call_method", "call_module",
                       "output", "call"])


@st.composite
def mutation(draw):
    name = draw(st.sampled_from(CASES))
    manifest, tensors = _case(name)
    m = copy.deepcopy(manifest)
    nodes = m["graph"]["nodes"]
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(nodes) - 1))
        kind = draw(st.sampled_from(["target", "arg", "kwarg", "op", "swap", "ref", "module",
                                     "tensor"]))
        nd = nodes[i]
        if kind == "target":
            nd["target"] = draw(NASTY_STR)
        elif kind == "arg" and nd["args"]["tuple"]:
            j = draw(st.integers(0, len(nd["args"]["tuple"]) - 1))
            nd["args"]["tuple"][j] = draw(JSON)
        elif kind == "kwarg":
            nd["kwargs"]["dict"].append([draw(NASTY_STR | st.sampled_from(["weights_only", "dim",
                                                                           "backend", "inplace"])),
                                         draw(JSON)])
        elif kind == "op":
            nd["op"] = draw(OPS)
        elif kind == "swap":
            j = draw(st.integers(0, len(nodes) - 1))
            nodes[i], nodes[j] = nodes[j], nodes[i]
        elif kind == "ref":
            other = draw(st.sampled_from([n["name"] for n in nodes]))
            nd["args"] = {"tuple": [{"node": other}] + nd["args"]["tuple"][1:]}
        elif kind == "module":
            path = draw(st.sampled_from(sorted(m["graph"]["modules"])))
            ms = m["graph"]["modules"][path]
            field = draw(st.sampled_from(["class", "kwargs", "none_buffers"]))
            ms[field] = draw(NASTY_STR) if field == "class" else \
                {draw(NASTY_STR): draw(JSON)} if field == "kwargs" else [draw(NASTY_STR)]
        elif kind == "tensor":
            t = draw(st.sampled_from(sorted(m["tensors"])))
            m["tensors"][t] = {"kind": draw(st.sampled_from(["param", "buffer", "module"])),
                               "alias_of": draw(st.none() | st.sampled_from(sorted(m["tensors"])))}
    return name, m


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutation())
def test_mutated_graph_is_refused_or_only_computes(case):
    name, m = case
    tensors = _case(name)[1]
    try:
        gm = build_graph_module(m["graph"], tensors, m["tensors"])
    except CheckpointError:
        return
    _violations.clear()
    _armed.append(True)
    try:
        with torch.no_grad():
            gm(IDS, None)
    except Exception:
        pass                       # a wrong graph may fail to compute; it must not do more
    finally:
        _armed.clear()
    assert not _violations, _violations


def test_audit_hook_catches_what_it_should(tmp_path):
    """The oracle itself: an armed forward that opens a file is caught."""
    _violations.clear()
    _armed.append(True)
    try:
        with pytest.raises(RuntimeError, match="audit"):
            open(tmp_path / "x", "w")
    finally:
        _armed.clear()
    assert _violations and _violations[0][0] == "open"

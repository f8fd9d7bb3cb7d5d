"""Backend selection: priorities, availability fallbacks with reasons, entry-point plugins."""
import importlib
import sys
import textwrap

import pytest
import torch

import qpass.backends.op_schemas  # noqa: F401
from qpass.backends import registry
from qpass.errors import BackendError

PLUGIN = textwrap.dedent('''
    import torch
    from qpass.backends.registry import Backend

    CALLS = []

    def linear_w8a8(x, w_int8, w_scales, bias, act_grid):
        CALLS.append("fast")
        return torch.zeros(*x.shape[:-1], w_int8.shape[0], dtype=x.dtype)

    class FastBackend(Backend):
        name = "test-fast"
        priority = 100
        kernels = {"linear_w8a8": linear_w8a8}

    class BrokenBackend(Backend):
        name = "test-broken"
        priority = 200
        kernels = {"linear_w8a8": linear_w8a8}

        def available(self):
            return False, "the test accelerator is not plugged in"
''')


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A real installed-looking distribution: a module and a dist-info with entry_points.txt."""
    (tmp_path / "qpass_test_plugin.py").write_text(PLUGIN)
    dist = tmp_path / "qpass_test_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: qpass-test-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[qpass.backends]\nfast = qpass_test_plugin:FastBackend\n"
        "broken = qpass_test_plugin:BrokenBackend\nbad = qpass_test_plugin:Missing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    registry.load_entry_points(force=True)
    yield sys.modules["qpass_test_plugin"]
    for name in ("test-fast", "test-broken"):
        registry.unregister(name)
    registry._entry_point_errors.clear()
    registry.clear_fallbacks()


def _w8a8_args():
    x = torch.randn(3, 32)
    return x, torch.ones(4, 32, dtype=torch.int8), torch.ones(4, 1)


def test_builtin_backends_listed_with_reasons():
    rows = {r["name"]: r for r in registry.available()}
    assert rows["reference"]["available"] is True
    assert "triton" in rows
    if not rows["triton"]["available"]:
        assert rows["triton"]["reason"]          # says why, e.g. no CUDA device


def test_plugin_wins_by_priority_and_unavailable_one_falls_back(plugin):
    b, skipped = registry.explain("linear_w8a8", "cpu", {"K": 32, "N": 4}, torch.float32)
    assert b.name == "test-fast"
    assert ("test-broken", "the test accelerator is not plugged in") in skipped
    x, w, s = _w8a8_args()
    y = torch.ops.qpass.linear_w8a8(x, w, s, None)
    assert plugin.CALLS == ["fast"] and torch.equal(y, torch.zeros(3, 4))
    reasons = [(f.skipped, f.chosen, f.reason) for f in registry.fallbacks()]
    assert ("test-broken", "test-fast", "the test accelerator is not plugged in") in reasons


def test_op_without_plugin_kernel_falls_back_to_reference(plugin):
    b, skipped = registry.explain("hadamard", "cpu", {"n": 64}, torch.float32)
    assert b.name in ("reference", "triton")
    assert any(name == "test-fast" and "no kernel" in why for name, why in skipped)


def test_broken_entry_point_is_reported_not_raised(plugin):
    rows = {r["name"]: r for r in registry.available()}
    assert rows["bad"]["available"] is False and "Missing" in rows["bad"]["reason"]
    assert rows["test-broken"]["reason"] == "the test accelerator is not plugged in"


def test_pinning_a_backend_and_errors():
    x, w, s = _w8a8_args()
    ref = torch.ops.qpass.linear_w8a8(x, w, s, None, "reference")
    assert ref.shape == (3, 4)
    with pytest.raises(BackendError, match="unknown backend"):
        registry.select("linear_w8a8", "cpu", None, torch.float32, prefer="nope")
    with pytest.raises(BackendError, match="unknown op"):
        registry.select("conv2d", "cpu")


def test_register_rejects_duplicates_and_non_backends():
    with pytest.raises(BackendError):
        registry.register(object())
    with pytest.raises(BackendError, match="already registered"):
        registry.register(type("Dup", (registry.Backend,), {"name": "reference"})())


def test_fake_impls_trace_on_meta():
    x = torch.empty(2, 5, 64, device="meta")
    y = torch.ops.qpass.linear_w4a16(x, torch.empty(16, 8, dtype=torch.int32, device="meta"),
                                     torch.empty(16, 1, device="meta"), None, 4, 64)
    assert y.shape == (2, 5, 16) and y.device.type == "meta"
    q, s = torch.ops.qpass.quant_per_token(x, 8, True)
    assert q.dtype == torch.int8 and s.shape == (2, 5, 1)
    a = torch.ops.qpass.attention(*(torch.empty(1, 2, 7, 16, device="meta"),) * 3)
    assert a.shape == (1, 2, 7, 16)


def test_one_op_list():
    """backends/base.py's OPS is the one list: every op has a torch.library schema
    (backends/op_schemas.py) and a kernel in each built-in backend, and nothing else does."""
    from qpass.backends.reference import ReferenceBackend
    from qpass.backends.triton import TritonBackend
    defined = {name for name in dir(torch.ops.qpass) if not name.startswith("_")
               and isinstance(getattr(torch.ops.qpass, name), torch._ops.OpOverloadPacket)}
    assert defined == set(registry.OPS) == set(qpass.backends.OPS)
    assert tuple(ReferenceBackend.kernels) == registry.OPS == tuple(TritonBackend.kernels)

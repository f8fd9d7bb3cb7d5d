"""Kernels assert their bounds (issue 25, part 3): every kernel of the built-in backends checks
that its operands fit together (bias length N, scales (N, K/group), codes' dtypes, heads) and
refuses with a BackendError, not an assert, before computing. The Triton kernels are checked
with the same lies under the interpreter (triton_cases_bounds.py)."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import qpass.backends.op_schemas  # noqa: F401
from bound_cases import LIES, lying, valid
from qpass.backends import reference
from qpass.backends.base import OPS
from qpass.errors import BackendError

ops = torch.ops.qpass


def test_every_builtin_kernel_checks_its_operands():
    backends = [reference.ReferenceBackend()]
    try:
        from qpass.backends.triton import TritonBackend
        backends.append(TritonBackend())
    except ImportError:      # pragma: no cover - triton is a test dependency
        pass
    for b in backends:
        for op in OPS:
            assert getattr(b.kernels[op], "qpass_bounds_checked", False), (b.name, op)


@pytest.mark.parametrize("op", OPS)
def test_valid_operands_still_run(op):
    out = getattr(reference, op)(*valid(op).values())
    assert out is not None


@pytest.mark.parametrize("lie", sorted(LIES))
def test_reference_kernel_refuses_lying_operands(lie):
    op, args, named = lying(lie)
    with pytest.raises(BackendError, match=named):
        getattr(reference, op)(*args)
    # through the torch.library op as a lowered graph calls it
    with pytest.raises(BackendError, match=named):
        getattr(ops, op)(*args, backend="reference")


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(["qweight", "scales", "zeros", "bias"]),
       shape=st.lists(st.integers(0, 70), min_size=0, max_size=3),
       dtype=st.sampled_from([torch.int8, torch.int32, torch.int64, torch.float16, torch.float32,
                              torch.float64]))
def test_any_shape_lie_on_w4a16_operands_is_a_backend_error(name, shape, dtype):
    args = valid("linear_w4a16")
    if tuple(shape) == tuple(args[name].shape):
        shape = list(shape[:-1]) + [shape[-1] + 1] if shape else [1]
    args[name] = torch.zeros(shape, dtype=dtype)
    with pytest.raises(BackendError, match=name):
        ops.linear_w4a16(*args.values(), backend="reference")

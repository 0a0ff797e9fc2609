"""The documented hazard: a view does not pin the tensor's memory against
``t.resize_()`` (like ``np.from_dlpack``; ``t.numpy()`` forbids the resize).

tensorbridge documents this instead of preventing it: preventing it needs
torch's private StorageImpl API, and the check would cost more than the whole
conversion. These tests pin down exactly what a user can rely on, without
ever reading memory that a resize freed.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from helpers import data_address, is_view_of

import tensorbridge as tb


def test_the_hazard_is_documented():
    assert "resize_" in tb.to_numpy.__doc__ and "copy=True" in tb.to_numpy.__doc__


def test_growing_the_tensor_detaches_the_view():
    t = torch.zeros(4)
    a = tb.to_numpy(t)
    assert data_address(a) == t.data_ptr()
    t.resize_(1 << 20)  # reallocates: the view now points at freed memory
    assert t.data_ptr() != data_address(a)


def test_shrinking_keeps_the_memory():
    t = torch.arange(8.0)
    a = tb.to_numpy(t)
    t.resize_(4)
    assert t.data_ptr() == data_address(a)
    np.testing.assert_array_equal(a[:4], [0, 1, 2, 3])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.bool], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "requires-grad"])
def test_copy_true_is_immune_and_leaves_the_tensor_resizable(path, dtype, layout):
    # The manual's remedy for the hazard (docs/guide/views.rst): it must not break resize_ instead
    # (Tensor.numpy() marks the storage unresizable for good).
    base = torch.arange(12.0).reshape(3, 4).to(dtype)
    t = {"contiguous": base, "transposed": base.t(),
         "requires-grad": base.requires_grad_(dtype.is_floating_point)}[layout]
    expected = np.array(t.detach().float().tolist(), np.float32)  # no .numpy(): it pins
    a = tb.to_numpy(t, copy=True)
    assert a.flags.owndata
    out = tb.to_numpy(t, out=np.empty_like(a))
    alias = t.detach()  # shares the storage, which is what resize_ grows
    alias.resize_(1 << 20)
    alias.fill_(1)
    np.testing.assert_array_equal(a.astype(np.float32), expected)
    np.testing.assert_array_equal(out.astype(np.float32), expected)


def test_collect_leaves_its_batches_resizable(path):
    batches = [torch.arange(6.0).reshape(2, 3), torch.ones(1, 3, requires_grad=True)]
    result = tb.collect(batches)
    np.testing.assert_array_equal(result[:2], np.arange(6.0).reshape(2, 3))
    for batch in batches:
        batch.detach().resize_(1 << 20)  # Tensor.numpy() would have forbidden it


def test_numpy_method_still_forbids_it_for_comparison():
    t = torch.zeros(4)
    t.numpy()
    with pytest.raises(RuntimeError, match="not resizable"):
        t.resize_(1 << 20)


# Ported from PyTorch's test/test_numpy_interop.py.
def test_the_result_cannot_be_resized(path):
    # Upstream also checks that t.resize_() is refused after t.numpy(); for
    # to_numpy that is the documented hazard (tests/test_resize_hazard.py).
    t = torch.randn(5, 5)
    a = tb.to_numpy(t)
    with pytest.raises(ValueError, match="does not own its data"):
        a.resize((10, 10))
    assert a.shape == (5, 5) and is_view_of(a, t)

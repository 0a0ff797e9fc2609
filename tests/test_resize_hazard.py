"""The documented hazard: a view does not pin the tensor's memory against
``t.resize_()`` (like ``np.from_dlpack``; ``t.numpy()`` forbids the resize).

tensorbridge documents this instead of preventing it: preventing it needs
torch's private StorageImpl API, and the check would cost more than the whole
conversion. These tests pin down exactly what a user can rely on, without
ever reading memory that a resize freed.
"""

import numpy as np
import pytest
import torch

import tensorbridge as tb
from helpers import data_address


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


def test_copy_true_is_immune():
    t = torch.arange(4.0)
    a = tb.to_numpy(t, copy=True)
    t.resize_(1 << 20)
    t.fill_(-1)
    np.testing.assert_array_equal(a, [0, 1, 2, 3])


def test_numpy_method_still_forbids_it_for_comparison():
    t = torch.zeros(4)
    t.numpy()
    with pytest.raises(RuntimeError, match="not resizable"):
        t.resize_(1 << 20)

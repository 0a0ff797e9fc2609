"""Property-based checks over shapes, strides, storage offsets and dtypes."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from helpers import VIEWED_DTYPES, OnlyDLPack, array_bytes, is_view_of, logical_bytes, sample
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tensorbridge as tb

# The `path` fixture only flips a global switch, so sharing it across the
# examples of one test is sound.
SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def strided_tensors(draw):
    dtype = draw(st.sampled_from(sorted(VIEWED_DTYPES, key=str)))
    ndim = draw(st.integers(0, 5))
    shape = draw(st.lists(st.integers(0, 4), min_size=ndim, max_size=ndim))
    strides = draw(st.lists(st.integers(0, 6), min_size=ndim, max_size=ndim))
    offset = draw(st.integers(0, 7))
    extent = offset + sum((n - 1) * s for n, s in zip(shape, strides) if n > 0) + 1
    base = sample((extent,), dtype, seed=draw(st.integers(0, 2**16)))
    t = torch.as_strided(base, shape, strides, offset)
    if draw(st.booleans()) and (dtype.is_floating_point or dtype.is_complex):
        t = t.detach().requires_grad_()
    return t


@SETTINGS
@given(t=strided_tensors())
def test_any_strided_tensor_is_viewed_exactly(path, t):
    a = tb.to_numpy(t)
    assert a.shape == tuple(t.shape)
    expected_strides = tuple(s * t.element_size() for s in t.stride())
    assert a.strides == expected_strides or t.numel() == 0
    np.testing.assert_array_equal(array_bytes(a), logical_bytes(t))
    assert is_view_of(a, t)


@SETTINGS
@given(t=strided_tensors(), copy=st.sampled_from([True, None]))
def test_copies_and_out_hold_the_same_bytes(path, t, copy):
    a = tb.to_numpy(t, copy=copy)
    np.testing.assert_array_equal(array_bytes(a), logical_bytes(t))
    out = np.empty(a.shape, a.dtype)
    assert tb.to_numpy(t, out=out) is out
    np.testing.assert_array_equal(array_bytes(out), logical_bytes(t))


@st.composite
def numpy_views(draw):
    dtype = draw(st.sampled_from(["bool", "int8", "uint16", "int32", "float16", "float64",
                                  "complex64"]))
    ndim = draw(st.integers(0, 4))
    shape = draw(st.lists(st.integers(1, 5), min_size=ndim, max_size=ndim))
    base = np.arange(int(np.prod(shape)) if shape else 1).astype(dtype).reshape(shape)
    index = tuple(slice(draw(st.integers(0, n - 1)), None, draw(st.sampled_from([1, 2, -1, -2])))
                  for n in shape)
    return base[index + (Ellipsis,)]


@settings(max_examples=150, deadline=None)
@given(view=numpy_views())
def test_dlpack_producers_with_any_strides(view):
    a = tb.to_numpy(OnlyDLPack(view))
    np.testing.assert_array_equal(a, view)
    assert a.strides == view.strides or view.size <= 1
    assert view.size == 0 or np.shares_memory(a, view)


def test_fast_path_and_python_path_agree():
    # The same inputs through the three routes give identical arrays.
    from tensorbridge import _core

    t = torch.as_strided(sample((40,), torch.bfloat16), (3, 4), (8, 2), 3)
    results = []
    for fast, exchange in [(True, True), (True, False), (False, False)]:
        _core.set_fast_path(fast)
        _core.set_exchange_api(exchange)
        try:
            a = tb.to_numpy(t)
        finally:
            _core.set_fast_path(True)
            _core.set_exchange_api(True)
        results.append((a.shape, a.strides, a.dtype, array_bytes(a).tobytes()))
    assert results[0] == results[1] == results[2]


@pytest.mark.parametrize("ndim", [32, 33, 64])
def test_rank_limits_are_numpys(path, ndim):
    t = torch.zeros((1,) * ndim)
    try:
        np.empty((1,) * ndim)
    except ValueError:  # NumPy 1.x stops at 32 dimensions: so does to_numpy, clearly
        with pytest.raises(ValueError, match="dimensions"):
            tb.to_numpy(t)
    else:
        a = tb.to_numpy(t)
        assert a.ndim == ndim and is_view_of(a, t)

"""The pinned pool under failure and pressure (against the stand-in driver):
each failing driver call reported and the pool left sound, allocation retried,
exhaustion staged smaller, reuse and statistics, empty_pinned."""

import gc

import numpy as np
import pytest
from device_producers import DeviceArray, values
from helpers import fast_sample

import tensorbridge as tb
from tensorbridge import _core

_CALLS = ["cuMemcpyDtoHAsync", "cuEventCreate", "cuEventRecord", "cuEventQuery",
          "cuEventSynchronize", "cuCtxSetCurrent", "cuCtxGetCurrent"]


# An asynchronous copy is only ever waited for, never queried.
# The fast tier (-m "not slow") fails the first call site on each route.
@pytest.mark.parametrize("call, route", fast_sample([
    (call, route) for call in _CALLS for route in ("sync", "async", "staged")
    if (call, route) != ("cuEventQuery", "async")], keep=3))
def test_a_failure_at_each_call_site_is_reported_and_leaves_the_pool_sound(standin, Device, call,
                                                                          route):
    _core.set_staging_chunk_bytes(1 << 20)
    expected = values((1000, 1000) if route == "staged" else (10, 10))
    x = Device(standin, expected)
    if call == "cuEventSynchronize":
        # A synchronous wait on the main thread first queries; a copy that is
        # not over by then is waited for by a completion thread.
        standin.set_delay_us(5000, 5000)
    standin.fail(call, result=999)
    with pytest.raises(RuntimeError, match=rf"{call} failed: CUDA_ERROR_UNKNOWN \(unknown error\)"):
        if route == "async":
            tb.to_numpy_async(x).wait()
        else:
            tb.to_numpy(x)
    # the next conversion works, and nothing stays in use
    np.testing.assert_array_equal(tb.to_numpy(x), expected)


def test_pinned_allocation_failure_is_retried_once(standin):
    tb.empty_pinned_cache()
    standin.fail("cuMemHostAlloc", result=2, times=1)
    expected = values((100, 100))
    np.testing.assert_array_equal(tb.to_numpy(DeviceArray(standin, expected)), expected)
    assert standin.calls("cuMemHostAlloc") >= 2


def test_pool_exhaustion_stages_smaller_and_never_fails_a_conversion(standin):
    expected = values((2000, 1000))  # 8 MB
    tb.set_pinned_memory_limit(0)
    tb.empty_pinned_cache()
    np.testing.assert_array_equal(tb.to_numpy(DeviceArray(standin, expected)), expected)
    np.testing.assert_array_equal(tb.to_numpy_async(DeviceArray(standin, expected)).wait(),
                                  expected)
    with pytest.raises(MemoryError, match="empty_pinned: pinned memory limit reached"):
        tb.empty_pinned((10,), np.float32)
    tb.set_pinned_memory_limit(1 << 20)
    np.testing.assert_array_equal(tb.to_numpy(DeviceArray(standin, expected)), expected)
    assert tb.pinned_memory_stats()["reserved_bytes"] <= 1 << 20


def test_pool_reuses_blocks_and_reports_stats(standin):
    tb.empty_pinned_cache()
    start = tb.pinned_memory_stats()
    a = tb.empty_pinned((1000, 1000), np.float32)
    a[...] = 1
    stats = tb.pinned_memory_stats()
    assert stats["in_use_bytes"] >= 4_000_000 and stats["alloc_count"] == start["alloc_count"] + 1
    del a
    gc.collect()
    stats = tb.pinned_memory_stats()
    assert stats["in_use_bytes"] == 0 and stats["cached_bytes"] >= 4_000_000
    b = tb.empty_pinned((1000, 999), np.float32)  # served from the cache, not 2x larger
    assert tb.pinned_memory_stats()["hit_count"] == start["hit_count"] + 1
    del b
    tb.empty_pinned_cache()
    assert tb.pinned_memory_stats()["reserved_bytes"] == 0
    assert set(start) == {"reserved_bytes", "in_use_bytes", "cached_bytes", "peak_bytes",
                          "limit_bytes", "alloc_count", "hit_count", "registered_bytes"}


def test_empty_pinned_shapes_and_dtypes(standin):
    import ml_dtypes

    for shape, dtype in [((2, 3), np.float64), (5, np.int8), ((0, 4), np.float32),
                         ((3,), ml_dtypes.bfloat16)]:
        a = tb.empty_pinned(shape, dtype)
        assert a.shape == ((shape,) if isinstance(shape, int) else shape)
        assert a.dtype == np.dtype(dtype) and a.flags.writeable and a.flags.c_contiguous
    with pytest.raises(ValueError, match="shape must hold non-negative ints"):
        tb.empty_pinned((-1, 2), np.float32)


@pytest.mark.parametrize(("dtype", "message"), [
    (object, r"^empty_pinned: dtype object holds Python objects.*numeric dtype"),
    ([("a", np.float32), ("b", object)], r"^empty_pinned: dtype .* holds Python objects"),
    ("nope", r"^empty_pinned: dtype 'nope' is not a NumPy dtype"),
])
def test_empty_pinned_refuses_dtypes_pinned_memory_cannot_hold(standin, dtype, message):
    reserved = tb.pinned_memory_stats()["reserved_bytes"]
    with pytest.raises(TypeError, match=message):
        tb.empty_pinned(4, dtype)
    assert tb.pinned_memory_stats()["reserved_bytes"] == reserved  # refused before allocating

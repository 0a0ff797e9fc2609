"""Fuzzing the DLPack import and to_numpy with random, often malformed, producers.

Every case is checked against an oracle written from the DLPack contract:
either the right values (through numpy's own as_strided over the same
buffer) or the documented exception, and in every case the producer's
deleter runs exactly once. The number of cases tried is printed at the end
of the run (FUZZ_CASES in the terminal summary).
"""

import gc
import os

import numpy as np
import pytest
from dlpack_producer import READ_ONLY, Producer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tensorbridge as tb

FUZZ_CASES = {"dlpack": 0, "to_numpy": 0, "collect": 0}
# Cases per test; .ci/run lowers it for the slow valgrind pass.
EXAMPLES = int(os.environ.get("TENSORBRIDGE_FUZZ_EXAMPLES", "400"))
# The fast tier (-m "not slow") tries a sample of each loop; the full loops are
# the longest part of the suite.
SAMPLE = 5


def tiers(examples):
    return pytest.mark.parametrize("examples", [
        pytest.param(min(SAMPLE, examples), id="sample"),
        pytest.param(examples, id="full", marks=pytest.mark.slow)])


def fuzz(check, examples, **strategies):
    """Runs `check` over `examples` cases drawn from `strategies`."""
    settings(max_examples=examples, deadline=None,
             suppress_health_check=[HealthCheck.too_slow])(given(**strategies)(check))()
NPY_MAXDIMS = 64
BASE_BYTES = 8192
MIDDLE = 4096  # data points here, so negative strides stay inside the buffer

NUMPY_TYPES = {(0, 8): "i1", (0, 16): "i2", (0, 32): "i4", (0, 64): "i8",
               (1, 8): "u1", (1, 16): "u2", (1, 32): "u4", (1, 64): "u8",
               (2, 16): "f2", (2, 32): "f4", (2, 64): "f8", (5, 64): "c8", (5, 128): "c16",
               (6, 8): "?", (4, 16): "bfloat16", (7, 8): "float8_e3m4", (8, 8): "float8_e4m3",
               (9, 8): "float8_e4m3b11fnuz", (10, 8): "float8_e4m3fn", (11, 8): "float8_e4m3fnuz",
               (12, 8): "float8_e5m2", (13, 8): "float8_e5m2fnuz", (14, 8): "float8_e8m0fnu"}


def numpy_dtype(code, bits):
    import ml_dtypes

    name = NUMPY_TYPES.get((code, bits))
    if name is None:
        return None
    return np.dtype(getattr(ml_dtypes, name)) if hasattr(ml_dtypes, name) else np.dtype(name)


@st.composite
def producers(draw):
    ndim = draw(st.sampled_from([-7, -1, 0, 1, 2, 3, 4, NPY_MAXDIMS + 1, 100_000]))
    rank = max(0, min(ndim, 4))
    shape = draw(st.lists(st.integers(-2, 5), min_size=rank, max_size=rank))
    strides = draw(st.one_of(st.none(), st.lists(st.integers(-5, 6), min_size=rank,
                                                 max_size=rank)))
    code = draw(st.integers(0, 20))
    bits = draw(st.sampled_from([1, 4, 8, 16, 32, 64, 128]))
    lanes = draw(st.sampled_from([1, 1, 1, 2]))
    return {
        "ndim": ndim, "shape": tuple(shape), "strides": strides, "dtype": (code, bits, lanes),
        "byte_offset": draw(st.sampled_from([0, 8, 64])),
        "data_null": draw(st.booleans()) and draw(st.booleans()),
        "version": (draw(st.sampled_from([1, 1, 1, 0, 2])), draw(st.integers(0, 9))),
        "flags": draw(st.sampled_from([0, READ_ONLY, 2, 3])),
        "versioned": draw(st.booleans()),
        "device": draw(st.sampled_from([1, 1, 1, 3, 10, 4])),
    }


def expected_outcome(spec):
    """(exception type, None) or (None, expected array) from the DLPack contract."""
    ndim, shape = spec["ndim"], spec["shape"]
    if spec["versioned"] and spec["version"][0] != 1:
        return BufferError, None
    if ndim < 0 or ndim > NPY_MAXDIMS:
        return BufferError, None
    if any(n < 0 for n in shape):
        return BufferError, None
    size = int(np.prod(shape)) if shape else 1
    if spec["data_null"] and size > 0:
        return BufferError, None
    if spec["device"] not in (1, 3):
        return BufferError, None
    code, bits, lanes = spec["dtype"]
    dtype = numpy_dtype(code, bits) if lanes == 1 else None
    if dtype is None:
        return TypeError, None
    return None, dtype


@tiers(EXAMPLES)
def test_dlpack_import_matches_the_contract(examples):
    fuzz(check_dlpack_import, examples, spec=producers())


def check_dlpack_import(spec):
    FUZZ_CASES["dlpack"] += 1
    base = np.arange(BASE_BYTES, dtype=np.uint8)
    overrides = {
        "ndim": spec["ndim"], "shape": spec["shape"], "strides": spec["strides"],
        "dtype": spec["dtype"], "byte_offset": spec["byte_offset"],
        "data": None if spec["data_null"] else base.ctypes.data + MIDDLE,
        "version": spec["version"], "flags": spec["flags"], "device": (spec["device"], 0),
    }
    producer = Producer(base, **overrides)
    capsule = producer.capsule(versioned=spec["versioned"])
    error, dtype = expected_outcome(spec)
    if error is not None:
        with pytest.raises(error):
            tb._core.array_from_capsule(capsule)
    else:
        array = tb._core.array_from_capsule(capsule)
        itemsize = dtype.itemsize
        if spec["strides"] is None:
            strides = np.cumprod((1,) + spec["shape"][::-1])[:-1][::-1] * itemsize
            strides = tuple(int(s) for s in strides)
        else:
            strides = tuple(s * itemsize for s in spec["strides"])
        assert array.shape == spec["shape"] and array.dtype == dtype
        if array.size:
            assert array.strides == strides
            start = MIDDLE + spec["byte_offset"]
            expected = np.lib.stride_tricks.as_strided(
                base[start:].view(np.uint8), shape=spec["shape"] + (itemsize,),
                strides=strides + (1,))
            np.testing.assert_array_equal(np.ascontiguousarray(array).view(np.uint8).reshape(
                spec["shape"] + (itemsize,)), expected)
        assert array.flags.writeable == (not (spec["versioned"] and spec["flags"] & READ_ONLY))
        del array
    del capsule
    gc.collect()
    assert producer.deleted == 1


@tiers(max(1, EXAMPLES * 3 // 8))
def test_to_numpy_on_random_producers_returns_values_or_documented_errors(examples):
    fuzz(check_to_numpy, examples, spec=producers(), copy=st.sampled_from([None, True, False]))


def check_to_numpy(spec, copy):
    FUZZ_CASES["to_numpy"] += 1
    if spec["device"] not in (1, 3):
        spec["device"] = 1  # device producers are covered by the engine tests
    base = np.arange(BASE_BYTES, dtype=np.uint8)
    producer = Producer(base, ndim=spec["ndim"], shape=spec["shape"], strides=spec["strides"],
                        dtype=spec["dtype"], byte_offset=spec["byte_offset"],
                        data=None if spec["data_null"] else base.ctypes.data + MIDDLE,
                        version=spec["version"], flags=spec["flags"],
                        versioned=spec["versioned"])
    error, dtype = expected_outcome(spec)
    if error is not None:
        with pytest.raises(error):
            tb.to_numpy(producer, copy=copy)
    else:
        array = tb.to_numpy(producer, copy=copy)
        assert array.shape == spec["shape"] and array.dtype == dtype
        if copy:
            assert array.flags.owndata
        del array
    gc.collect()
    assert producer.deleted == 1  # one capsule made (a legacy producer refuses max_version)


@tiers(max(1, EXAMPLES // 4))
def test_collect_on_random_batches(examples):
    fuzz(check_collect, examples, rows=st.lists(st.integers(0, 50), min_size=0, max_size=8),
         width=st.integers(0, 6), dtype=st.sampled_from(["f4", "i8", "u1", "c16", "?"]),
         break_at=st.one_of(st.none(), st.integers(1, 8)))


def check_collect(rows, width, dtype, break_at):
    FUZZ_CASES["collect"] += 1
    batches = [np.full((n, width), i, dtype) for i, n in enumerate(rows)]
    if break_at is not None and break_at < len(batches):
        batches[break_at] = np.zeros((1, width + 1), dtype)
        with pytest.raises(ValueError, match="trailing shape"):
            tb.collect(batches)
        return
    if not batches:
        with pytest.raises(ValueError, match="batches is empty"):
            tb.collect(batches)
        return
    result = tb.collect(iter(batches))
    np.testing.assert_array_equal(result, np.concatenate(batches))

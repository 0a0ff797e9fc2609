"""The DLPack consumer rules, driven by a producer that can break each one."""


import numpy as np
import pytest
from dlpack_producer import (
    READ_ONLY,
    ExchangeProducer,
    Producer,
    capsule_name,
    exchange_api_capsule,
)
from helpers import OnlyDLPack, data_address

import tensorbridge as tb

import_capsule = tb._core.array_from_capsule


def test_asks_for_a_versioned_capsule_first():
    p = Producer(np.arange(6.0))
    a = tb.to_numpy(p)
    assert p.requests == [{"max_version": (1, 3)}]
    np.testing.assert_array_equal(a, np.arange(6.0))
    assert data_address(a) == data_address(p.array)


def test_legacy_producers_get_a_second_plain_request():
    p = Producer(np.arange(6.0), versioned=False)
    a = tb.to_numpy(p)
    assert p.requests == [{"max_version": (1, 3)}, {}]
    np.testing.assert_array_equal(a, np.arange(6.0))


@pytest.mark.parametrize("versioned", [True, False])
def test_capsule_is_renamed_and_deleter_runs_exactly_once(versioned, collect_garbage):
    p = Producer(np.arange(4, dtype=np.int32))
    capsule = p.capsule(versioned=versioned)
    a = import_capsule(capsule)
    assert capsule_name(capsule) == ("used_dltensor_versioned" if versioned else "used_dltensor")
    del capsule
    collect_garbage()
    assert p.deleted == 0  # the array still uses the memory
    np.testing.assert_array_equal(a, [0, 1, 2, 3])
    del a
    collect_garbage()
    assert p.deleted == 1


def test_a_used_capsule_is_refused():
    p = Producer(np.arange(3.0))
    capsule = p.capsule()
    a = import_capsule(capsule)
    with pytest.raises(BufferError, match="already consumed"):
        import_capsule(capsule)
    del a


def test_unconsumed_capsule_is_freed_by_its_producer(collect_garbage):
    p = Producer(np.arange(3.0))
    capsule = p.capsule()
    del capsule
    collect_garbage()
    assert p.deleted == 1


@pytest.mark.parametrize("consumed", [False, True])
def test_a_capsule_or_array_outliving_its_producer_in_a_cycle(consumed, collect_garbage):
    # Garbage in one reference cycle is freed in any order: here the producer
    # first, then its capsule (and the array viewing it). Their callbacks must
    # not die with the producer (they did: a crash in a later gc, on 3.13).
    released = []

    class Counted(Producer):
        def _on_delete(self, managed):
            released.append(managed)

    class Cycle:
        pass

    cycle = Cycle()
    cycle.producer = Counted(np.arange(4.0))  # cleared first: inserted first
    cycle.capsule = cycle.producer.capsule()
    if consumed:
        cycle.array = import_capsule(cycle.capsule)
    cycle.itself = cycle
    del cycle
    collect_garbage()
    assert released == [None]  # the deleter (or the unconsumed capsule's destructor), once


@pytest.mark.parametrize("major", [0, 2, 99])
def test_major_version_mismatch_is_refused_and_deleted_once(major, collect_garbage):
    p = Producer(np.arange(3.0), version=(major, 0))
    capsule = p.capsule()
    with pytest.raises(BufferError, match=f"major version is {major}"):
        import_capsule(capsule)
    assert p.deleted == 1
    del capsule
    collect_garbage()
    assert p.deleted == 1


def test_newer_minor_version_is_accepted():
    p = Producer(np.arange(3.0), version=(1, 99))
    np.testing.assert_array_equal(tb.to_numpy(p), [0, 1, 2])


def test_read_only_flag_gives_a_read_only_array():
    p = Producer(np.arange(3.0), flags=READ_ONLY)
    a = tb.to_numpy(p)
    assert not a.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        a[0] = 1
    assert tb.to_numpy(Producer(np.arange(3.0))).flags.writeable
    # An empty tensor without memory too (NumPy allocates its placeholder).
    empty = Producer(np.arange(0.0), flags=READ_ONLY, data=None)
    assert not tb.to_numpy(empty).flags.writeable


@pytest.mark.parametrize("flags", [0, READ_ONLY])
def test_an_exchange_api_producer_is_viewed_in_c_with_its_flags(path, flags, collect_garbage):
    # A producer other than torch that publishes the C exchange API: the native
    # core views it (the managed tensor it hands out is the view's base, and
    # its READ_ONLY flag counts); with the exchange API off, its capsule does.
    x = np.arange(6.0)
    p = ExchangeProducer(x, flags=flags)
    a = tb.to_numpy(p)
    np.testing.assert_array_equal(a, x)
    assert np.shares_memory(a, x) and a.flags.writeable == (flags == 0)
    assert p.producer.requests == ([] if path == "exchange" else [{"max_version": (1, 3)}])
    assert p.producer.deleted == 0
    del a
    collect_garbage()
    assert p.producer.deleted == 1  # exactly once, when the view died


@pytest.mark.parametrize("version", [(1, 1), (0, 9), (2, 3)], ids=str)
def test_an_exchange_table_of_another_layout_is_not_called(version, collect_garbage):
    # The table's layout is DLPack 1.2's and later 1.x's; an older minor (a
    # pre-standard table) or another major version may hold other slots:
    # the producer is read through its __dlpack__ capsule instead.
    class OtherTable(ExchangeProducer):
        __dlpack_c_exchange_api__ = exchange_api_capsule(version)

    x = np.arange(6.0)
    p = OtherTable(x)
    a = tb.to_numpy(p)
    np.testing.assert_array_equal(a, x)
    assert p.producer.requests == [{"max_version": (1, 3)}]  # the capsule route
    current = ExchangeProducer(x)
    np.testing.assert_array_equal(tb.to_numpy(current), x)
    assert current.producer.requests == []  # the table read in C


def test_null_strides_mean_row_major():
    base = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    a = tb.to_numpy(Producer(base, strides=None))
    assert a.strides == base.strides
    np.testing.assert_array_equal(a, base)


def test_byte_offset_is_honoured():
    base = np.arange(10, dtype=np.float32)
    p = Producer(base, shape=(4,), byte_offset=3 * 4)
    np.testing.assert_array_equal(tb.to_numpy(p), [3, 4, 5, 6])


def test_explicit_and_negative_strides():
    base = np.arange(24, dtype=np.float64).reshape(4, 6)
    view = base[::-1, ::2]
    np.testing.assert_array_equal(tb.to_numpy(Producer(view)), view)


def test_zero_strides_and_empty_tensors():
    base = np.arange(3.0)
    a = tb.to_numpy(Producer(base, ndim=2, shape=(4, 3), strides=(0, 1)))
    np.testing.assert_array_equal(a, np.broadcast_to(base, (4, 3)))
    empty = tb.to_numpy(Producer(np.empty((0, 5), np.float32), data=None))
    assert empty.shape == (0, 5)


def test_zero_dimensional_tensor():
    a = tb.to_numpy(Producer(np.array(7.5)))
    assert a.shape == () and a[()] == 7.5


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"ndim": -1}, BufferError, "ndim=-1"),
        ({"ndim": 100000}, BufferError, "ndim=100000"),
        ({"data": None}, BufferError, "data is NULL"),
        ({"shape": (-2,)}, BufferError, r"shape\[0\]=-2"),
        ({"dtype": (99, 32, 1)}, TypeError, "type code 99"),
        ({"dtype": (2, 32, 4)}, TypeError, "float32x4"),
        ({"dtype": (5, 32, 1)}, TypeError, "complex32"),
        ({"dtype": (17, 4, 1)}, TypeError, "float4_e2m1fn"),
        ({"dtype": (0, 4, 1)}, TypeError, "int4"),
        ({"device": (2, 0)}, BufferError, "CPU cannot read"),
    ],
    ids=lambda v: str(v) if not isinstance(v, dict) else next(iter(v)),
)
def test_malformed_tensors_are_refused_and_deleted(overrides, error, message, collect_garbage):
    p = Producer(np.arange(4, dtype=np.float32), **overrides)
    capsule = p.capsule()
    with pytest.raises(error, match=message):
        import_capsule(capsule)
    del capsule
    collect_garbage()
    assert p.deleted == 1


def test_objects_that_are_not_capsules():
    with pytest.raises(TypeError, match="expected a DLPack capsule, got int"):
        import_capsule(3)
    import ctypes

    ctypes.pythonapi.PyCapsule_New.restype = ctypes.py_object
    ctypes.pythonapi.PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    other = ctypes.pythonapi.PyCapsule_New(1, b"something_else", None)
    with pytest.raises(BufferError, match="'something_else'"):
        import_capsule(other)


def test_device_memory_is_requested_as_a_host_copy():
    # A producer on a device the engine does not drive (here ROCm) is asked
    # for a host copy (DLPack 1.0's dl_device/copy); one that hands back
    # device memory anyway is refused rather than read.
    p = Producer(np.arange(3.0), device=(10, 0))
    with pytest.raises(BufferError, match="device type 10, which the CPU cannot read"):
        tb.to_numpy(p)
    assert p.requests[-1] == {"max_version": (1, 3), "dl_device": (1, 0), "copy": True}
    with pytest.raises(BufferError, match="copy=False, but"):
        tb.to_numpy(p, copy=False)


def test_producer_that_cannot_copy_to_the_host_is_reported():
    class NoHostCopy(Producer):
        def __dlpack__(self, **kwargs):
            if "dl_device" in kwargs:
                raise BufferError("no route to host")
            return super().__dlpack__(**kwargs)

    with pytest.raises(BufferError, match=r"cannot copy it to the CPU \(no route to host\)"):
        tb.to_numpy(NoHostCopy(np.arange(3.0), device=(10, 0)))


@pytest.mark.parametrize("dtype", ["bool", "int8", "uint64", "float16", "complex128"])
def test_numpy_as_a_dlpack_producer(dtype):
    base = np.ones((3, 4), dtype)[:, 1:]
    a = tb.to_numpy(OnlyDLPack(base))
    np.testing.assert_array_equal(a, base)
    assert np.shares_memory(a, base) and a.strides == base.strides
    readonly = base.copy()
    readonly.flags.writeable = False
    assert not tb.to_numpy(OnlyDLPack(readonly)).flags.writeable


# (overrides, what the message names): tensors whose byte offsets do not fit
# int64, on the CPU and in device memory alike.
OVERFLOWING = {
    "stride-in-bytes": ({"shape": (2,), "strides": (2**61,)}, "stride 2305843009213693952 of "
                                                              "dimension 0, scaled by 8 bytes"),
    "reach": ({"shape": (3,), "strides": (2**59,)}, "byte offset that dimension 0 reaches"),
    "negative-reach": ({"shape": (4, 3), "strides": (-(2**59), 1)}, "dimension 0 reaches"),
    "element-count": ({"ndim": 2, "shape": (2**40, 2**40), "strides": None}, "element count"),
    "bytes": ({"shape": (2**61,), "strides": None}, "2305843009213693952 elements of 8 bytes"),
    "byte-offset": ({"byte_offset": 2**63}, "past the address space"),
}


@pytest.mark.parametrize("device", [(1, 0), (2, 0)], ids=["cpu", "cuda"])
@pytest.mark.parametrize("case", list(OVERFLOWING))
def test_byte_offsets_that_overflow_int64_are_refused(case, device, collect_garbage):
    overrides, names = OVERFLOWING[case]
    p = Producer(np.arange(6.0), device=device, **overrides)
    describe = import_capsule if device == (1, 0) else tb._core.describe_capsule
    capsule = p.capsule()  # held here: its destructor must not run with the error pending
    with pytest.raises(BufferError, match=r"^to_numpy: cannot import this DLPack tensor: .*"
                                          + names + r".*ask the producer for a compact copy"):
        describe(capsule)
    del capsule
    collect_garbage()
    assert p.deleted == 1

"""The DLPack consumer rules, driven by a producer that can break each one; then
torch and NumPy as the producers, with the checks of their own DLPack suites
(PyTorch's test/test_dlpack.py, NumPy's numpy/_core/tests/test_dlpack.py)
ported. Tests that need torch say so; the rest run without it."""

import sys
import warnings
import weakref

import numpy as np
import pytest
from dlpack_producer import (
    READ_ONLY,
    ExchangeProducer,
    Producer,
    capsule_name,
    exchange_api_capsule,
)
from helpers import (
    EXTENDED_DTYPES,
    VIEWED_DTYPES,
    OnlyDLPack,
    assert_same_values,
    data_address,
    fast_sample,
    is_view_of,
    needs_torch,
    numpy_dtype,
    reference_numpy,
    sample,
    torch,
)

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


class TorchProducer:
    """A torch tensor seen only through DLPack: to_numpy cannot recognise it as
    a tensor and must consume the capsules torch makes. Records the keywords
    each request carried and every capsule handed out; `forced` keywords
    replace the consumer's own (to make torch hand out a given capsule kind)."""

    def __init__(self, tensor, **forced):
        self.tensor = tensor
        self.forced = forced
        self.requests = []
        self.capsules = []

    def __dlpack__(self, **kwargs):
        self.requests.append(dict(kwargs))
        kwargs.update(self.forced)
        capsule = self.tensor.__dlpack__(**kwargs)
        self.capsules.append(capsule)
        return capsule

    def __dlpack_device__(self):
        return self.tensor.__dlpack_device__()


class LegacyNumpyProducer:
    """A NumPy array behind a pre-1.0 ``__dlpack__(stream=None)``, which
    refuses max_version: the consumer must retry with a plain request."""

    def __init__(self, array):
        self.array = array

    def __dlpack__(self, stream=None):
        return self.array.__dlpack__(stream=stream)

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()


NUMPY_PRODUCERS = {"versioned": OnlyDLPack, "legacy": LegacyNumpyProducer}


# -- ported: PyTorch's test/test_dlpack.py: torch produces, tensorbridge consumes ----------
# In our own words; where docs/guide/views.rst promises other than upstream, the test
# checks the promise and says so.

DLPACK_DTYPES = list(VIEWED_DTYPES)  # torch exports every dtype to_numpy views


@needs_torch
@pytest.mark.parametrize("dtype", fast_sample(DLPACK_DTYPES, keep=2), ids=str)
def test_a_torch_capsule_of_every_dtype(dtype, collect_garbage):
    t = sample((5,), dtype)
    capsule = torch.utils.dlpack.to_dlpack(t)
    a = import_capsule(capsule)
    assert capsule_name(capsule) == "used_dltensor"
    assert a.dtype == numpy_dtype(dtype)
    assert_same_values(a, t)
    assert is_view_of(a, t)
    del capsule, t
    collect_garbage()
    assert a.shape == (5,)  # the array, not the capsule, holds the memory now


@needs_torch
def test_a_bare_capsule_is_not_an_array():
    # np.from_dlpack takes producers, not capsules; so does to_numpy (docs/guide/views.rst:
    # anything else is a TypeError naming the type).
    with pytest.raises(TypeError, match="'PyCapsule'.*__dlpack__"):
        tb.to_numpy(torch.utils.dlpack.to_dlpack(torch.ones(2)))


@needs_torch
@pytest.mark.parametrize("dtype", fast_sample(DLPACK_DTYPES, keep=2), ids=str)
def test_torch_through_the_protocol_for_every_dtype(dtype):
    t = sample((5,), dtype)
    producer = TorchProducer(t)
    a = tb.to_numpy(producer)
    assert a.dtype == numpy_dtype(dtype)
    assert_same_values(a, t)
    assert is_view_of(a, t) and a.flags.writeable
    assert [capsule_name(c) for c in producer.capsules] == ["used_dltensor_versioned"]


@needs_torch
def test_storage_is_shared_through_the_protocol():
    t = sample((5,), torch.float64)
    a = tb.to_numpy(TorchProducer(t))
    a[0] = a[0] + 20.0
    assert t[0].item() == a[0]
    t[1] = -7.0
    assert a[1] == -7.0


NONCONTIGUOUS = {
    "row": lambda x: x[0],
    "column": lambda x: x[:, 0],
    "row-slice": lambda x: x[1, :],
    "second-row": lambda x: x[1],
    "transposed": lambda x: x.T,
    "diagonal": lambda x: x.diagonal(),
}


@needs_torch
@pytest.mark.parametrize("pick", NONCONTIGUOUS)
@pytest.mark.parametrize("dtype", fast_sample(DLPACK_DTYPES), ids=str)
def test_torch_views_through_the_protocol_keep_their_strides(dtype, pick):
    t = NONCONTIGUOUS[pick](sample((25,), dtype).reshape(5, 5))
    a = tb.to_numpy(TorchProducer(t))
    expected = reference_numpy(t)
    assert (a.shape, a.dtype, a.strides) == (expected.shape, expected.dtype, expected.strides)
    assert_same_values(a, t)
    assert is_view_of(a, t)


def _inference_tensor():
    with torch.inference_mode():
        return torch.arange(4.0)


PROTOCOL_LAYOUTS = {
    "0-d": lambda: torch.tensor(3.5),
    "empty": lambda: torch.empty(0, 3),
    "empty-transposed": lambda: torch.empty(3, 0).t(),
    "zero-stride": lambda: torch.tensor([1.0, 2.0]).expand(3, 2),
    "all-zero-strides": lambda: torch.tensor(2.0).expand(2, 2),
    "rank-41": lambda: torch.zeros((1,) * 40 + (2,)),
    "odd-length-one-stride": lambda: torch.empty_strided((10, 5, 1), (1, 10, 7)).fill_(1.5),
    "inference": _inference_tensor,
    "bfloat16-offset": lambda: sample((6,), torch.bfloat16)[2:],
    "float8-stepped": lambda: sample((6,), torch.float8_e5m2)[::2],
}


@needs_torch
@pytest.mark.parametrize("forced", [{}, {"max_version": None}], ids=["versioned", "legacy"])
@pytest.mark.parametrize("layout", PROTOCOL_LAYOUTS)
def test_torch_layouts_through_either_capsule_kind(layout, forced):
    # Upstream's capsule and protocol round trips, over the layouts
    # tests/test_views.py takes through the exchange API: through DLPack the
    # result must be what t.numpy() would be, on a legacy capsule as well.
    t = PROTOCOL_LAYOUTS[layout]()
    a = tb.to_numpy(TorchProducer(t, **forced))
    expected = reference_numpy(t)
    assert (a.shape, a.dtype, a.strides) == (expected.shape, expected.dtype, expected.strides)
    assert_same_values(a, t)
    assert is_view_of(a, t) and a.flags.writeable


@needs_torch
def test_strides_of_a_length_one_dimension_are_kept(path):
    # Upstream: DLPack import no longer normalises the stride of a size-1
    # dimension. t.numpy() keeps it too, so to_numpy must, on both routes.
    t = torch.rand(16)[::3][:1]
    assert (t.shape, t.stride()) == ((1,), (3,))
    assert tb.to_numpy(t).strides == (12,)
    assert tb.to_numpy(TorchProducer(t)).strides == (12,)


@needs_torch
@pytest.mark.parametrize(("forced", "name"), [
    ({"max_version": None}, "dltensor"),
    ({"max_version": (0, 8)}, "dltensor"),
    ({"max_version": (1, 0)}, "dltensor_versioned"),
    ({"max_version": (2, 0)}, "dltensor_versioned"),
], ids=["none", "0.8", "1.0", "2.0"])
def test_every_capsule_kind_torch_makes(forced, name):
    t = sample((5,), torch.float32)
    producer = TorchProducer(t, **forced)
    a = tb.to_numpy(producer)
    assert [capsule_name(c) for c in producer.capsules] == ["used_" + name]
    assert_same_values(a, t)
    assert is_view_of(a, t) and a.flags.writeable


@needs_torch
@pytest.mark.parametrize("stream", [None, 0, 1, 2, -1])
def test_a_cpu_producer_is_never_given_a_stream(stream):
    # torch asserts "stream should be None on cpu" for any other value (and
    # NumPy raises ValueError); to_numpy ignores stream= for CPU memory
    # (docs/guide/views.rst), so it must not forward it.
    t = sample((5,), torch.float32)
    producer = TorchProducer(t)
    a = tb.to_numpy(producer, stream=stream)
    assert all(request.get("stream") is None for request in producer.requests)
    assert is_view_of(a, t)
    assert is_view_of(tb.to_numpy(t, stream=stream), t)
    x = np.arange(5.0)
    assert np.shares_memory(tb.to_numpy(OnlyDLPack(x), stream=stream), x)


@needs_torch
@pytest.mark.parametrize(("make", "message"), [
    (lambda: torch.zeros(10, requires_grad=True), "require gradient"),
    (lambda: torch.tensor([-1 + 1j, -2 + 2j, 3 - 3j]).conj(), "conjugate bit"),
    (lambda: torch.sparse_coo_tensor([[0]], [1.0], size=(1,), check_invariants=True),
     "strided"),
])
def test_what_torch_refuses_to_export(path, make, message):
    # Upstream: torch's __dlpack__ refuses these with BufferError. Behind a
    # DLPack-only wrapper that error reaches the caller unchanged; the tensor
    # itself converts (docs/guide/views.rst: grad is a view, conj and sparse one copy).
    t = make()
    with pytest.raises(BufferError, match=message):
        tb.to_numpy(TorchProducer(t))
    expected = t.detach().resolve_conj()
    expected = expected.to_dense() if expected.layout != torch.strided else expected
    np.testing.assert_array_equal(tb.to_numpy(t), expected.numpy())


@needs_torch
def test_quantized_tensors_behind_the_protocol():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # quantized creation is deprecated
        q = torch.quantize_per_tensor(torch.randn(()), 0.1, 10, torch.qint8)
    with pytest.raises(BufferError, match="not supported by dlpack"):
        tb.to_numpy(TorchProducer(q))


ROUND_TRIP_DTYPES = [d for d in VIEWED_DTYPES if d not in EXTENDED_DTYPES]


@needs_torch
@pytest.mark.parametrize("dtype", fast_sample(ROUND_TRIP_DTYPES, keep=2), ids=str)
def test_the_array_goes_back_to_torch_without_a_copy(path, dtype):
    # Upstream sends t.numpy() back through torch.from_dlpack (np.from_dlpack's
    # read-only result could not go). to_numpy's result is writeable, so it
    # goes back too, onto the same memory. (NumPy exports no ml_dtypes.)
    t = sample((5,), dtype)
    a = tb.to_numpy(t)
    back = torch.from_dlpack(a)
    assert back.dtype == dtype and back.data_ptr() == t.data_ptr()
    assert torch.equal(back, t)
    assert a.__dlpack_device__() == (1, 0)


@needs_torch
@pytest.mark.parametrize("copy", [None, False, True])
def test_copy_keyword_through_the_protocol(copy, collect_garbage):
    t = sample((5,), torch.float32)
    producer = TorchProducer(t)
    a = tb.to_numpy(producer, copy=copy)
    assert_same_values(a, t)
    if copy:
        assert a.flags.owndata and not np.shares_memory(a, t.numpy())
        a[0] += 1
        assert a[0] != t[0].item()
    else:
        assert is_view_of(a, t)


@needs_torch
def test_torch_memory_lives_as_long_as_the_array(collect_garbage):
    # The deleter of torch's capsule runs once, when the array goes, not before.
    buffer = np.arange(1000, dtype=np.float32)
    memory_alive = weakref.ref(buffer)
    t = torch.from_numpy(buffer)
    del buffer
    a = tb.to_numpy(TorchProducer(t))
    del t
    collect_garbage()
    assert memory_alive() is not None
    np.testing.assert_array_equal(a, np.arange(1000, dtype=np.float32))
    del a
    collect_garbage()
    assert memory_alive() is None


# -- ported: NumPy's numpy/_core/tests/test_dlpack.py: np.from_dlpack's consumer rules ------
# With NumPy as the producer, in our own words; where docs/guide/views.rst promises other
# than upstream, the test checks the promise and says so.

@pytest.mark.parametrize("kind", NUMPY_PRODUCERS)
def test_the_result_holds_one_reference_until_it_goes(kind, collect_garbage):
    array = np.arange(5)
    start = sys.getrefcount(array)
    a = tb.to_numpy(NUMPY_PRODUCERS[kind](array))
    assert sys.getrefcount(array) > start  # the memory's owner is held ...
    del a
    collect_garbage()
    assert sys.getrefcount(array) == start  # ... and let go, exactly once


@pytest.mark.parametrize("max_version", [(0, 0), None, (1, 0), (100, 3)], ids=str)
def test_numpy_capsules_of_each_version_release_their_array(max_version, collect_garbage):
    # Upstream asks NumPy for each capsule version and checks the reference
    # the capsule holds goes with it; here the consumer takes the capsule.
    x = np.arange(5)
    capsule = x.__dlpack__(max_version=max_version)
    versioned = max_version is not None and max_version[0] >= 1
    start = sys.getrefcount(x)
    a = import_capsule(capsule)
    assert capsule_name(capsule) == ("used_dltensor_versioned" if versioned else "used_dltensor")
    del capsule
    collect_garbage()
    assert sys.getrefcount(x) == start  # the array took over the capsule's reference
    assert np.shares_memory(a, x)
    del a
    collect_garbage()
    assert sys.getrefcount(x) == start - 1


NUMPY_DTYPES = [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                np.uint32, np.uint64, np.float16, np.float32, np.float64, np.complex64,
                np.complex128]


@pytest.mark.parametrize("dtype", fast_sample(NUMPY_DTYPES, keep=2),
                         ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("kind", NUMPY_PRODUCERS)
def test_numpy_dtypes_pass_through(kind, dtype):
    x = np.arange(5).astype(dtype)
    a = tb.to_numpy(NUMPY_PRODUCERS[kind](x))
    assert a.dtype == x.dtype
    np.testing.assert_array_equal(a, x)
    assert np.shares_memory(a, x)


class OldStyleArray(np.ndarray):
    """An ndarray subclass whose __dlpack__ predates max_version, as upstream's."""

    def __dlpack__(self, stream=None):
        return super().__dlpack__(stream=stream)


@pytest.mark.parametrize("make", [lambda: np.arange(5), lambda: np.arange(5).view(OldStyleArray)],
                         ids=["ndarray", "old-style-subclass"])
def test_upstream_inputs_themselves_are_returned_as_they_are(path, make):
    # Upstream feeds ndarrays to np.from_dlpack, which makes a new view (and a
    # read-only one for the old-style subclass); docs/guide/views.rst: to_numpy returns
    # NumPy arrays as they are, and copy=True gives a copy.
    x = make()
    assert tb.to_numpy(x) is x and x.flags.writeable
    copied = tb.to_numpy(x, copy=True)
    assert type(copied) is type(x) and not np.shares_memory(copied, x)
    np.testing.assert_array_equal(copied, x)


def _structured_field():
    return np.zeros(5, np.dtype([("int", np.int32), ("char", np.int8)]))["int"]


@pytest.mark.parametrize("make", [
    _structured_field,  # strides that are no multiple of the itemsize
    lambda: np.asarray(np.datetime64("2021-05-27")),
    lambda: np.arange(5, dtype=np.dtype("=i8").newbyteorder()),
], ids=["stride-not-multiple-of-itemsize", "datetime64", "byte-swapped"])
def test_what_numpy_refuses_to_export_is_a_buffer_error(make, collect_garbage):
    x = make()
    producer = OnlyDLPack(x)
    before = sys.getrefcount(x)
    for _ in range(100):
        with pytest.raises(BufferError, match="DLPack only supports"):
            tb.to_numpy(producer)
    collect_garbage()
    assert sys.getrefcount(x) == before
    assert tb.to_numpy(x) is x  # the array itself is returned as it is (docs/guide/views.rst)


@pytest.mark.parametrize("pick", NONCONTIGUOUS)
def test_numpy_views_through_the_protocol(pick):
    x = NONCONTIGUOUS[pick](np.arange(25).reshape(5, 5))
    if pick == "diagonal":
        x = x.copy()  # NumPy's diagonal is read-only; upstream copies it
    a = tb.to_numpy(OnlyDLPack(x))
    np.testing.assert_array_equal(a, x)
    assert a.strides == x.strides and np.shares_memory(a, x)


@pytest.mark.parametrize("ndim", fast_sample([0, 32, 64] + list(range(1, 32)), keep=3))
def test_every_rank_numpy_holds(ndim):
    shape = (1,) * ndim
    a = tb.to_numpy(OnlyDLPack(np.zeros(shape)))
    assert a.shape == shape and a.dtype == np.float64


@needs_torch
def test_more_dimensions_than_numpy_holds_is_a_clear_error(path):
    # An extension of upstream's rank check, past NumPy's limit of 64: the
    # refusal must name the function and the offending rank on every route.
    t = torch.zeros((1,) * 65)
    with pytest.raises(BufferError, match=r"ndim=65 is outside \[0, 64\]"):
        tb.to_numpy(TorchProducer(t))
    with pytest.raises(ValueError, match=r"^to_numpy: x has ndim=65, outside \[0, 64\], the "
                                         "dimensions a NumPy array can have; reshape it"):
        tb.to_numpy(t)


class RaisesAfterExporting(Producer):
    """Makes its capsule, then raises: the capsule dies during the unwinding."""

    def __dlpack__(self, **kwargs):
        capsule = super().__dlpack__(**kwargs)  # noqa: F841 - freed as the error propagates
        raise RuntimeError("producer failed after exporting")


def test_a_capsule_freed_while_an_error_propagates(collect_garbage):
    p = RaisesAfterExporting(np.arange(5.0))
    with pytest.raises(RuntimeError, match="producer failed after exporting"):
        tb.to_numpy(p)
    collect_garbage()
    assert p.deleted == 1


def test_a_read_only_array_cannot_go_through_a_legacy_capsule():
    # Legacy capsules cannot say "read-only", so NumPy refuses to export; the
    # consumer passes that refusal on rather than hand out a writeable view.
    x = np.arange(5)
    x.flags.writeable = False
    with pytest.raises(BufferError, match="readonly"):
        tb.to_numpy(LegacyNumpyProducer(x))


@pytest.mark.parametrize("kind", NUMPY_PRODUCERS)
def test_writeable_memory_gives_a_writeable_view(kind):
    # np.from_dlpack makes legacy (unversioned) capsules read-only "for
    # backwards compatibility"; docs/guide/views.rst: views of writeable memory are
    # writeable, and only the READ_ONLY flag makes them read-only.
    x = np.arange(5)
    a = tb.to_numpy(NUMPY_PRODUCERS[kind](x))
    assert a.flags.writeable
    a[0] = 10
    assert x[0] == 10


def test_an_oddly_strided_length_one_dimension():
    # F-ordered (10, 5, 1) doubles whose last stride (4 bytes) is no multiple
    # of the itemsize: harmless on a length-1 dimension.
    x = np.ndarray(dtype="f8", shape=(10, 5, 1), strides=(8, 80, 4),
                   buffer=np.ones(1000, dtype=np.uint8), order="F")
    a = tb.to_numpy(OnlyDLPack(x))
    assert a.shape == x.shape
    np.testing.assert_array_equal(a, x)
    assert np.shares_memory(a, x)


@pytest.mark.parametrize("copy", [None, False, True])
def test_copy_keyword_with_a_numpy_producer(copy):
    x = np.arange(5)
    a = tb.to_numpy(OnlyDLPack(x), copy=copy)
    np.testing.assert_array_equal(a, x)
    assert np.may_share_memory(a, x) == (not copy)


def test_the_result_is_a_cpu_dlpack_producer_itself():
    a = tb.to_numpy(OnlyDLPack(np.arange(5)))
    assert a.__dlpack_device__() == (1, 0)
    assert a[::2].__dlpack_device__() == (1, 0)


@pytest.mark.parametrize("kind", NUMPY_PRODUCERS)
def test_numpy_capsules_are_renamed_and_released_once(kind, collect_garbage):
    capsules = []

    class Recording(NUMPY_PRODUCERS[kind]):
        def __dlpack__(self, **kwargs):
            capsules.append(super().__dlpack__(**kwargs))
            return capsules[-1]

    x = np.arange(5.0)
    memory_alive = weakref.ref(x)
    a = tb.to_numpy(Recording(x))
    expected = "used_dltensor_versioned" if kind == "versioned" else "used_dltensor"
    assert [capsule_name(c) for c in capsules] == [expected]
    del x, capsules[:]
    collect_garbage()
    assert memory_alive() is not None  # the view holds it
    del a
    collect_garbage()
    assert memory_alive() is None


SCALAR_TYPES = [np.bool_, np.uint8, np.int32, np.int64, np.float16, np.float32, np.float64,
                np.complex128]


@pytest.mark.parametrize("scalar_type", SCALAR_TYPES, ids=lambda d: np.dtype(d).name)
def test_numpy_scalars(path, scalar_type):
    x = scalar_type(2)
    for copy in (None, True):
        a = tb.to_numpy(x, copy=copy)
        assert (type(a), a.dtype, a.shape) == (np.ndarray, x.dtype, ())
        assert a == x
    a[()] = 0  # the copy=True result is private
    assert x == scalar_type(2) and a == 0
    if hasattr(x, "__dlpack__"):  # NumPy >= 2.5: a read-only view
        view = tb.to_numpy(x, copy=False)
        assert view == x and not view.flags.writeable
    else:  # no view of a NumPy scalar exists
        with pytest.raises(BufferError, match="copy=False"):
            tb.to_numpy(x, copy=False)


@pytest.mark.parametrize("x", [np.str_("2021-05-27"), np.datetime64("2021-05-27")],
                         ids=["str", "datetime64"])
def test_numpy_scalars_dlpack_cannot_hold(path, x):
    # np.from_dlpack refuses these (BufferError); to_numpy accepts objects
    # with __array__ (docs/guide/views.rst), so it gives what np.asarray gives.
    a = tb.to_numpy(x)
    expected = np.asarray(x)
    assert (type(a), a.dtype, a.shape) == (np.ndarray, expected.dtype, ())
    assert a == expected


"""Other projects' interop tests, re-expressed for tensorbridge.

Three upstream files check the conversions tensorbridge replaces; their checks
are ported here in our own words, one section per file:

- PyTorch ``test/test_numpy_interop.py``: ``Tensor.numpy()``, for which
  ``tb.to_numpy(t)`` is a drop-in;
- PyTorch ``test/test_dlpack.py``: torch as the DLPack producer, tensorbridge
  as the consumer;
- NumPy ``numpy/_core/tests/test_dlpack.py``: ``np.from_dlpack``'s consumer
  rules, with NumPy as the producer.

Where the manual (docs/guide/views.rst, "Where t.numpy() and np.from_dlpack
differ") promises something other than the upstream behaviour (grad,
conj bits, sparse, bfloat16, legacy capsules ...), the test checks the promise
and says so. Checks that tests/test_views.py, tests/test_dlpack_consumer.py,
tests/test_copies.py or tests/test_lifetime.py already make on the same input
are not repeated here.
"""

import sys
import warnings
import weakref

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from dlpack_producer import Producer, capsule_name
from helpers import (
    EXTENDED_DTYPES,
    VIEWED_DTYPES,
    OnlyDLPack,
    array_bytes,
    is_view_of,
    logical_bytes,
    numpy_dtype,
    reference_numpy,
    sample,
)
from torch.utils.dlpack import to_dlpack

import tensorbridge as tb

import_capsule = tb._core.array_from_capsule


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


def wide_values(shape, dtype, seed=0):
    """Values spread over most of `dtype`'s range (capped at 1e10 so that the
    draw itself stays finite), where layout or width bugs would show."""
    g = torch.Generator().manual_seed(seed)
    shape = (shape,) if isinstance(shape, int) else shape
    if dtype.is_floating_point:
        info = torch.finfo(dtype)
        low, high = max(info.min, -1e10), min(info.max, 1e10)
        t = torch.empty(shape, dtype=torch.float64).uniform_(low, high, generator=g)
    else:
        info = torch.iinfo(dtype)
        low, high = max(info.min, -10**10), min(info.max, 10**10)
        t = torch.randint(low, high, shape, generator=g, dtype=torch.int64)
    return t.to(dtype)


def assert_same_values(a, t):
    """Element by element, against torch's own reading of `t`."""
    assert a.shape == tuple(t.shape)
    np.testing.assert_array_equal(array_bytes(a), logical_bytes(t))


# =============================================================================
# PyTorch test/test_numpy_interop.py: Tensor.numpy()
# =============================================================================

NUMERIC_DTYPES = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                  torch.float16, torch.float32, torch.float64]

# name -> (builder over a value source, whether the result is C-contiguous);
# "offset" layouts and "holes" start past the start of their storage.
NARROWED = {
    "1-d": (lambda v: v(10), True),
    "1-d-offset": (lambda v: v(20).narrow(0, 9, 10), True),
    "empty": (lambda v: v(0), True),
    "2-d": (lambda v: v((3, 5)), True),
    "2-d-offset": (lambda v: v((6, 5)).narrow(0, 2, 3), True),
    "transposed": (lambda v: v((5, 3)).t(), False),
    "transposed-offset": (lambda v: v((10, 3)).narrow(0, 4, 5).t(), False),
    "holes": (lambda v: v((10, 6)).narrow(0, 4, 5).narrow(1, 2, 3).t(), False),
}


@pytest.mark.parametrize("layout", NARROWED)
@pytest.mark.parametrize("dtype", NUMERIC_DTYPES, ids=str)
def test_narrowed_and_transposed_tensors_keep_their_values(path, dtype, layout):
    build, c_contiguous = NARROWED[layout]
    t = build(lambda shape: wide_values(shape, dtype))
    if "offset" in layout or layout == "holes":
        assert t.storage_offset() > 0
    a = tb.to_numpy(t)
    assert_same_values(a, t)
    assert a.tolist() == t.tolist()
    assert a.flags.c_contiguous == c_contiguous
    assert a.strides == t.numpy().strides
    assert is_view_of(a, t)


@pytest.mark.parametrize("dtype", NUMERIC_DTYPES + [torch.bool, torch.complex64], ids=str)
def test_writes_through_the_array_reach_the_tensor(path, dtype):
    # Upstream leaves float16 out (a limitation of its element access); the
    # view holds for float16 too, so it is checked here.
    t = torch.zeros((3, 4), dtype=dtype)
    one = torch.ones((), dtype=dtype).item()
    a = tb.to_numpy(t)
    assert a.flags.writeable
    a[0][1] = one
    assert t[0][1].item() == one
    transposed = tb.to_numpy(t.t())
    assert transposed.flags.writeable
    transposed[2][1] = one
    assert t[1][2].item() == one
    assert t.count_nonzero().item() == 2


def test_bool_tensors(path):
    for values in ([True, False], [True]):
        t = torch.tensor(values, dtype=torch.bool)
        a = tb.to_numpy(t)
        assert a.dtype == np.bool_
        assert a.tolist() == values
        assert is_view_of(a, t)


FORCE_CASES = [(grad, sparse, conj) for grad in (False, True) for sparse in (False, True)
               for conj in (False, True)]


@pytest.mark.parametrize(("grad", "sparse", "conj"), FORCE_CASES,
                         ids=[f"grad{g:d}-sparse{s:d}-conj{c:d}" for g, s, c in FORCE_CASES])
def test_what_numpy_needs_force_for_converts_without_it(path, grad, sparse, conj):
    # Upstream: .numpy() refuses tensors needing grad, conj views and sparse
    # tensors unless force=True (and refuses sparse even then). docs/guide/views.rst:
    # to_numpy takes all of them as they are: a view for grad, one copy with
    # the bit resolved for conj, the dense values for sparse. Upstream skips
    # sparse + grad (to_sparse has no complex autograd); here it is a sparse leaf.
    x = torch.tensor([[1 + 2j, -2 + 3j], [-1 - 2j, 3 - 2j]])
    expected = x.numpy().copy()
    if sparse:
        x = x.to_sparse()
    x.requires_grad_(grad)
    if conj:
        x = x.conj()
        expected = expected.conj()
    a = tb.to_numpy(x)
    assert a.dtype == np.complex64
    np.testing.assert_array_equal(a, expected)
    if not sparse and not conj:
        assert is_view_of(a, x)
        assert np.array_equal(a, x.numpy(force=True))
    else:
        assert a.flags.owndata  # the one copy those need


@pytest.mark.parametrize("make", [
    lambda: torch.arange(6.0).reshape(2, 3).conj(),  # real: conj sets no bit
    lambda: torch.tensor([1 + 2j, 3 - 1j]).conj().conj(),
    lambda: torch.tensor([1 + 2j, 3 - 1j]).conj().resolve_conj(),
    lambda: torch.tensor([1 + 2j, 3 - 1j]).conj().real,
], ids=["real-conj", "conj-conj", "resolved", "real-part-of-conj"])
def test_tensors_without_a_conj_or_neg_bit_stay_views(path, make):
    # The bits are what .numpy() refuses; where torch sets none, to_numpy must
    # not copy (docs/guide/views.rst: a copy only where unavoidable).
    t = make()
    assert not t.is_conj() and not t.is_neg()
    a = tb.to_numpy(t)
    assert is_view_of(a, t)
    assert_same_values(a, t)


def test_the_result_cannot_be_resized(path):
    # Upstream also checks that t.resize_() is refused after t.numpy(); for
    # to_numpy that is the documented hazard (tests/test_resize_hazard.py).
    t = torch.randn(5, 5)
    a = tb.to_numpy(t)
    with pytest.raises(ValueError, match="does not own its data"):
        a.resize((10, 10))
    assert a.shape == (5, 5) and is_view_of(a, t)


LEGACY_TENSOR_TYPES = {
    "DoubleTensor": np.float64,
    "FloatTensor": np.float32,
    "HalfTensor": np.float16,
    "LongTensor": np.int64,
    "IntTensor": np.int32,
    "ShortTensor": np.int16,
    "ByteTensor": np.uint8,
}


@pytest.mark.parametrize("type_name", LEGACY_TENSOR_TYPES)
def test_agrees_with_np_asarray(path, type_name):
    # Upstream's __array__ check (the dtype= form does not apply: to_numpy
    # takes no dtype, tests/test_errors.py); np.asarray(t) is the oracle.
    values = [1, 2, 3, 4] if type_name == "ByteTensor" else [1, -2, 3, -4]
    t = torch.tensor(values).type(getattr(torch, type_name))
    for x in (t, t[::2], t.flip(0)):
        a = tb.to_numpy(x)
        expected = np.asarray(x)
        assert type(a) is np.ndarray
        assert (a.dtype, a.shape, a.strides) == (np.dtype(LEGACY_TENSOR_TYPES[type_name]),
                                                 expected.shape, expected.strides)
        assert np.shares_memory(a, expected)
        assert a.tolist() == x.tolist()


SCALAR_DTYPES = [d for d in VIEWED_DTYPES if d not in (torch.uint16, torch.uint32,
                                                       torch.uint64)]


@pytest.mark.parametrize("dtype", SCALAR_DTYPES, ids=str)
def test_first_element_matches_the_tensor_item(path, dtype):
    # Upstream expects .numpy() to refuse bfloat16 (TypeError); docs/guide/views.rst
    # gives an ml_dtypes view instead, and float8 likewise.
    if dtype.is_complex:
        tensors = [torch.tensor(1 + 3j), torch.tensor([1 + 3j, 0, 2j]),
                   torch.tensor([[3 + 1j, 0], [-1j, 5]])]
    else:
        tensors = [torch.tensor(3), torch.tensor([1, 0, -3]), torch.tensor([[3, 0, -1], [3, 5, 4]])]
    for t in tensors:
        t = t.to(dtype)
        a = tb.to_numpy(t)
        assert a.shape == tuple(t.shape) and a.dtype == numpy_dtype(dtype)
        element = a.flatten()[0]
        value = float(element) if dtype in EXTENDED_DTYPES else element.item()
        assert value == t.flatten()[0].item()
        assert_same_values(a, t)


@pytest.mark.parametrize("dtype", NUMERIC_DTYPES + [torch.bool, torch.complex128], ids=str)
def test_writes_to_the_tensor_show_in_the_array(path, dtype):
    # Upstream compares a tensor with the .numpy() of its clone while it
    # changes the clone in place: the array must see every change.
    a = sample((5, 7), dtype, seed=1)
    b = a.clone()
    b_np = tb.to_numpy(b)

    def changed(mask):
        if dtype == torch.bool:
            b[mask] = b[mask].logical_not()
        else:
            b[mask] += 1

    np.testing.assert_array_equal(b_np == tb.to_numpy(a), np.ones((5, 7), bool))
    one = torch.zeros((5, 7), dtype=torch.bool)
    one[1, 3] = True
    changed(one)
    np.testing.assert_array_equal(b_np == tb.to_numpy(a), ~one.numpy())
    b.copy_(a)
    some = torch.rand((5, 7), generator=torch.Generator().manual_seed(2)) > 0.5
    changed(some)
    np.testing.assert_array_equal(b_np == tb.to_numpy(a), ~some.numpy())
    b.copy_(a.logical_not() if dtype == torch.bool else a + 1)
    assert not (b_np == tb.to_numpy(a)).any()


@pytest.mark.parametrize("make", [
    lambda: torch.empty_strided((0,), (0,), dtype=torch.float16),
    lambda: torch.tensor(np.random.default_rng(0).random(0), dtype=torch.float16),
    lambda: torch.rand((), dtype=torch.float16),
    lambda: torch.tensor(2.5).expand(3, 4),  # every stride 0
    lambda: torch.arange(10.0)[10:],  # empty, past its storage's end
], ids=["empty-zero-stride", "empty-from-numpy", "0-d-half", "all-zero-strides", "empty-at-end"])
def test_empty_0d_and_all_zero_stride_tensors_match_numpy(path, make):
    t = make()
    a = tb.to_numpy(t)
    expected = t.numpy()
    assert (a.shape, a.dtype, a.strides) == (expected.shape, expected.dtype, expected.strides)
    np.testing.assert_array_equal(a, expected)


@pytest.mark.parametrize("make", [
    lambda: torch.empty(4, dtype=torch.float4_e2m1fn_x2),
    lambda: torch.empty(4, dtype=torch.uint4),
], ids=["float4_e2m1fn_x2", "uint4"])
def test_refusing_a_dtype_keeps_no_reference(path, make):
    # Upstream's leak check for from_numpy of a dtype it refuses, turned
    # round: a tensor to_numpy refuses is not kept alive by the refusal.
    t = make()
    before = sys.getrefcount(t)
    for _ in range(1000):
        with pytest.raises(TypeError, match="has no NumPy dtype"):
            tb.to_numpy(t)
    assert sys.getrefcount(t) == before


# =============================================================================
# PyTorch test/test_dlpack.py: torch produces, tensorbridge consumes
# =============================================================================

DLPACK_DTYPES = list(VIEWED_DTYPES)  # torch exports every dtype to_numpy views


@pytest.mark.parametrize("dtype", DLPACK_DTYPES, ids=str)
def test_a_torch_capsule_of_every_dtype(dtype, collect_garbage):
    t = sample((5,), dtype)
    capsule = to_dlpack(t)
    a = import_capsule(capsule)
    assert capsule_name(capsule) == "used_dltensor"
    assert a.dtype == numpy_dtype(dtype)
    assert_same_values(a, t)
    assert is_view_of(a, t)
    del capsule, t
    collect_garbage()
    assert a.shape == (5,)  # the array, not the capsule, holds the memory now


def test_a_bare_capsule_is_not_an_array():
    # np.from_dlpack takes producers, not capsules; so does to_numpy (docs/guide/views.rst:
    # anything else is a TypeError naming the type).
    with pytest.raises(TypeError, match="'PyCapsule'.*__dlpack__"):
        tb.to_numpy(to_dlpack(torch.ones(2)))


@pytest.mark.parametrize("dtype", DLPACK_DTYPES, ids=str)
def test_torch_through_the_protocol_for_every_dtype(dtype):
    t = sample((5,), dtype)
    producer = TorchProducer(t)
    a = tb.to_numpy(producer)
    assert a.dtype == numpy_dtype(dtype)
    assert_same_values(a, t)
    assert is_view_of(a, t) and a.flags.writeable
    assert [capsule_name(c) for c in producer.capsules] == ["used_dltensor_versioned"]


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


@pytest.mark.parametrize("pick", NONCONTIGUOUS)
@pytest.mark.parametrize("dtype", DLPACK_DTYPES, ids=str)
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


def test_strides_of_a_length_one_dimension_are_kept(path):
    # Upstream: DLPack import no longer normalises the stride of a size-1
    # dimension. t.numpy() keeps it too, so to_numpy must, on both routes.
    t = torch.rand(16)[::3][:1]
    assert (t.shape, t.stride()) == ((1,), (3,))
    assert tb.to_numpy(t).strides == (12,)
    assert tb.to_numpy(TorchProducer(t)).strides == (12,)


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


def test_quantized_tensors_behind_the_protocol():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # quantized creation is deprecated
        q = torch.quantize_per_tensor(torch.randn(()), 0.1, 10, torch.qint8)
    with pytest.raises(BufferError, match="not supported by dlpack"):
        tb.to_numpy(TorchProducer(q))


ROUND_TRIP_DTYPES = [torch.bool, torch.uint8, torch.uint16, torch.uint32, torch.uint64,
                     torch.int8, torch.int16, torch.int32, torch.int64, torch.float16,
                     torch.float32, torch.float64, torch.complex64, torch.complex128]


@pytest.mark.parametrize("dtype", ROUND_TRIP_DTYPES, ids=str)
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


# =============================================================================
# NumPy numpy/_core/tests/test_dlpack.py: the consumer rules
# =============================================================================


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


@pytest.mark.parametrize("grad", [False, True])
def test_a_view_of_a_tensor_leaves_its_refcount_alone(path, grad, collect_garbage):
    t = torch.arange(5.0, requires_grad=grad)
    start = sys.getrefcount(t)
    a = tb.to_numpy(t)
    del a
    collect_garbage()
    assert sys.getrefcount(t) == start


NUMPY_DTYPES = [np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                np.uint32, np.uint64, np.float16, np.float32, np.float64, np.complex64,
                np.complex128]


@pytest.mark.parametrize("dtype", NUMPY_DTYPES, ids=lambda d: np.dtype(d).name)
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


@pytest.mark.parametrize("ndim", list(range(33)) + [64])
def test_every_rank_numpy_holds(ndim):
    shape = (1,) * ndim
    a = tb.to_numpy(OnlyDLPack(np.zeros(shape)))
    assert a.shape == shape and a.dtype == np.float64


def test_more_dimensions_than_numpy_holds_is_a_clear_error(path):
    # An extension of upstream's rank check, past NumPy's limit of 64: the
    # refusal must name the function and the offending rank on every route.
    t = torch.zeros((1,) * 65)
    with pytest.raises(BufferError, match=r"ndim=65 is outside \[0, 64\]"):
        tb.to_numpy(TorchProducer(t))
    with pytest.raises((BufferError, TypeError, ValueError), match=r"^to_numpy: .*65"):
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


def test_an_oddly_strided_length_one_dimension_of_a_tensor(path):
    t = torch.empty_strided((10, 5, 1), (1, 10, 7)).copy_(torch.rand(10, 5, 1))
    a = tb.to_numpy(t)
    assert a.strides == t.numpy().strides
    assert_same_values(a, t)


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

"""CPU tensors become zero-copy views, for every dtype, layout, grad state and
subclass, on every route through to_numpy."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from helpers import (
    EXTENDED_DTYPES,
    VIEWED_DTYPES,
    array_bytes,
    assert_same_values,
    data_address,
    fast_sample,
    is_view_of,
    logical_bytes,
    numpy_dtype,
    reference_numpy,
    sample,
    wide_values,
)

import tensorbridge as tb

LAYOUTS = {
    "contiguous": lambda base: base((3, 4)),
    "transposed": lambda base: base((4, 3)).t(),
    "stepped": lambda base: base((6, 8))[::2, 1::3],
    "storage-offset": lambda base: base((20,))[5:12],
    "zero-stride": lambda base: base((1, 4)).expand(3, 4),
    "permuted": lambda base: base((2, 3, 4)).permute(2, 0, 1),
    "0-d": lambda base: base(()),
    "empty": lambda base: base((0, 3)),
    "high-rank": lambda base: base((1,) * 30 + (2, 3)),
}


class PlainSubclass(torch.Tensor):
    pass


def build(dtype, layout, grad="none"):
    def base(shape):
        t = sample(shape, dtype)
        if grad == "non-leaf":
            t.requires_grad_()
        return t

    t = LAYOUTS[layout](base)
    if grad == "non-leaf":
        t = t.view_as(t)  # through the graph: has a grad_fn
        assert t.grad_fn is not None
    elif grad == "leaf":
        t = t.detach().requires_grad_()
    elif grad == "parameter":
        t = torch.nn.Parameter(t.detach())
    elif grad == "subclass":
        t = t.as_subclass(PlainSubclass)
    return t


def assert_view_like_numpy(a, t):
    expected = reference_numpy(t)
    assert type(a) is np.ndarray
    assert (a.shape, a.dtype, a.strides) == (expected.shape, expected.dtype, expected.strides)
    np.testing.assert_array_equal(array_bytes(a), logical_bytes(t))
    assert is_view_of(a, t)
    assert a.flags.writeable


# The fast tier (-m "not slow") takes one dtype of each kind.
ONE_OF_EACH_KIND = [torch.bool, torch.uint8, torch.int64, torch.float32, torch.complex64,
                    torch.bfloat16, torch.float8_e4m3fn]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", fast_sample(
    ONE_OF_EACH_KIND + [d for d in VIEWED_DTYPES if d not in ONE_OF_EACH_KIND],
    keep=len(ONE_OF_EACH_KIND)), ids=str)
def test_every_dtype_and_layout_is_a_view(path, dtype, layout):
    t = build(dtype, layout)
    assert_view_like_numpy(tb.to_numpy(t), t)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("grad", ["leaf", "non-leaf", "parameter", "subclass"])
@pytest.mark.parametrize("dtype", fast_sample([torch.float32, torch.bfloat16, torch.complex64,
                                               torch.float8_e4m3fn], keep=2), ids=str)
def test_grad_and_subclasses_are_views(path, dtype, layout, grad):
    t = build(dtype, layout, grad)
    a = tb.to_numpy(t)
    assert_view_like_numpy(a, t)
    if t.requires_grad:
        # the view holds the memory (the storage, or a detached alias), not
        # the tensor and its graph
        owner = a.base
        while isinstance(owner, np.ndarray):
            owner = owner.base
        assert owner is not t
        if path == "exchange":  # the exchange API hands over the storage
            assert isinstance(owner, torch.UntypedStorage), type(owner)
        else:  # the other routes view a detached alias
            assert isinstance(owner, torch.Tensor) and not owner.requires_grad, type(owner)


@pytest.mark.parametrize("grad_mode", [True, False])
def test_grad_mode_does_not_matter(path, grad_mode):
    t = torch.ones(3, requires_grad=True) * 2
    with torch.set_grad_enabled(grad_mode):
        a = tb.to_numpy(t)
    assert is_view_of(a, t)


@pytest.mark.parametrize("dtype", [torch.float32, torch.int16, torch.bfloat16,
                                   torch.float8_e5m2], ids=str)
def test_writes_reach_the_tensor(path, dtype):
    t = sample((4, 5), dtype)
    a = tb.to_numpy(t)
    assert not np.array_equal(logical_bytes(t[3]), logical_bytes(t[2]))
    a[3] = a[2]
    np.testing.assert_array_equal(logical_bytes(t[3]), logical_bytes(t[2]))
    np.testing.assert_array_equal(array_bytes(a), logical_bytes(t))


def test_inference_mode_tensors_are_views(path):
    with torch.inference_mode():
        t = torch.arange(6.0).reshape(2, 3)
    a = tb.to_numpy(t)
    assert is_view_of(a, t)
    np.testing.assert_array_equal(a, [[0, 1, 2], [3, 4, 5]])


def test_numpy_arrays_come_back_as_they_are(path):
    a = np.arange(6).reshape(2, 3)[:, ::2]
    assert tb.to_numpy(a) is a
    assert tb.to_numpy(a, copy=False) is a
    m = np.ma.masked_array([1, 2, 3], mask=[0, 1, 0])
    assert tb.to_numpy(m) is m


def test_plain_cpu_tensors_never_reach_python(monkeypatch):
    from tensorbridge import _convert, _core

    def fallback(*args, **kwargs):
        raise AssertionError("the fast path handed a plain tensor to Python")

    _core.set_fallback(fallback)
    try:
        for dtype in VIEWED_DTYPES:
            t = sample((2, 3), dtype)
            assert is_view_of(tb.to_numpy(t), t)
            assert is_view_of(tb.to_numpy(t, copy=False, out=None, stream=None), t)
        grad = torch.ones(2, requires_grad=True)
        assert is_view_of(tb.to_numpy(grad), grad)
        # A tensor type without the exchange API, as in torch < 2.10, still
        # takes the native route (over Tensor.numpy()).
        old_torch = sample((2, 3), torch.float32).as_subclass(WithoutExchangeApi)
        assert is_view_of(tb.to_numpy(old_torch), old_torch)
    finally:
        _convert.install()


class WithoutExchangeApi(torch.Tensor):
    __dlpack_c_exchange_api__ = None


def test_result_dtypes_are_the_documented_ones(path):
    for dtype, name in VIEWED_DTYPES.items():
        assert tb.to_numpy(torch.zeros(2, dtype=dtype)).dtype == numpy_dtype(dtype), name


def test_view_of_a_view_shares_one_storage(path):
    base = torch.arange(12, dtype=torch.float32)
    a = tb.to_numpy(base[2:8])
    b = tb.to_numpy(base[4:10])
    assert np.shares_memory(a, b)
    assert data_address(b) - data_address(a) == 8


class AsksInPython(torch.Tensor):
    """Overrides the questions the fast path asks: they must be asked here."""

    asked = []
    claims_negative_bit = False

    def is_neg(self):
        AsksInPython.asked.append("is_neg")
        return AsksInPython.claims_negative_bit or super().is_neg()

    @property
    def requires_grad(self):
        AsksInPython.asked.append("requires_grad")
        return super().requires_grad

    def untyped_storage(self):
        AsksInPython.asked.append("untyped_storage")
        return super().untyped_storage()


@pytest.mark.parametrize("claims_negative_bit", [False, True])
def test_questions_a_subclass_overrides_are_asked_through_python(path, claims_negative_bit):
    # torch's own is_neg() and requires_grad are called in C; a subclass's
    # Python overrides still decide.
    AsksInPython.asked.clear()
    AsksInPython.claims_negative_bit = claims_negative_bit
    t = torch.arange(4.0).as_subclass(AsksInPython)
    a = tb.to_numpy(t)
    np.testing.assert_array_equal(a, [0, 1, 2, 3])
    if path == "exchange":
        # the fast path asks is_neg(), then (for a view) for the storage the
        # view holds; a "negative bit" makes the classification ask again for
        # the reason it gives Python, which then asks requires_grad
        expected = (["is_neg", "is_neg", "requires_grad"] if claims_negative_bit
                    else ["is_neg", "untyped_storage"])
        assert AsksInPython.asked[:len(expected)] == expected
        assert is_view_of(a, t) != claims_negative_bit  # "negative bit": copied through torch


def test_more_tensor_types_than_the_native_type_cache_holds(path):
    # The fast path remembers 16 types; beyond them it inspects each call.
    base = torch.arange(6.0).reshape(2, 3)
    for i in range(40):
        cls = type(f"Subclass{i}", (torch.Tensor,), {})
        t = base.as_subclass(cls)
        for _ in range(2):
            a = tb.to_numpy(t)
            assert is_view_of(a, t)
            np.testing.assert_array_equal(a, base.numpy())
        negative = tb.to_numpy(torch._neg_view(t))  # the neg bit is still asked
        np.testing.assert_array_equal(negative, -base.numpy())


def test_bytes_give_a_read_only_uint8_view(path):
    # Like memoryview(b): the buffer itself, not a 0-d '|S4' copy.
    b = b"abcd"
    for copy in (None, False):
        a = tb.to_numpy(b, copy=copy)
        assert (a.dtype, a.shape, a.flags.writeable) == (np.uint8, (4,), False)
        np.testing.assert_array_equal(a, [97, 98, 99, 100])
        assert data_address(a) == data_address(np.frombuffer(b, np.uint8))
    c = tb.to_numpy(b, copy=True)
    assert c.dtype == np.uint8 and c.flags.owndata and c.flags.writeable
    out = np.zeros(4, np.uint8)
    assert tb.to_numpy(b, out=out) is out
    np.testing.assert_array_equal(out, [97, 98, 99, 100])
    assert tb.to_numpy(b"").shape == (0,)


def test_buffers_are_views_in_their_format(path):
    import array

    floats = array.array("d", [1.5, 2.5])
    a = tb.to_numpy(floats, copy=False)
    assert (a.dtype, a.flags.writeable) == (np.float64, True)
    a[0] = 9
    assert floats[0] == 9
    shaped = memoryview(bytearray(12)).cast("B", (3, 4))
    assert tb.to_numpy(shaped).shape == (3, 4)
    ints = tb.to_numpy(bytearray(b"xy"))
    assert (ints.dtype, ints.flags.writeable) == (np.uint8, True)


# -- ported: PyTorch's test/test_numpy_interop.py -------------------------------------------
# torch's own checks of Tensor.numpy(), for which tb.to_numpy(t) is a drop-in, in our
# own words. Where the manual (docs/guide/views.rst, "Where t.numpy() and np.from_dlpack
# differ") promises something other than upstream (grad, conj bits, sparse, bfloat16 ...),
# the test checks the promise and says so.

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
@pytest.mark.parametrize("dtype", fast_sample(NUMERIC_DTYPES, keep=2), ids=str)
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


@pytest.mark.parametrize("dtype", fast_sample(NUMERIC_DTYPES + [torch.bool, torch.complex64],
                                              keep=2), ids=str)
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


LEGACY_TENSOR_TYPES = {
    "DoubleTensor": np.float64,
    "FloatTensor": np.float32,
    "HalfTensor": np.float16,
    "LongTensor": np.int64,
    "IntTensor": np.int32,
    "ShortTensor": np.int16,
    "ByteTensor": np.uint8,
}


@pytest.mark.parametrize("type_name", fast_sample(LEGACY_TENSOR_TYPES, keep=2))
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


@pytest.mark.parametrize("dtype", fast_sample(SCALAR_DTYPES, keep=2), ids=str)
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


@pytest.mark.parametrize("dtype", fast_sample(NUMERIC_DTYPES + [torch.bool, torch.complex128],
                                              keep=2), ids=str)
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


# Ported from NumPy's numpy/_core/tests/test_dlpack.py (its NumPy twin is in
# tests/test_dlpack_consumer.py).
def test_an_oddly_strided_length_one_dimension_of_a_tensor(path):
    t = torch.empty_strided((10, 5, 1), (1, 10, 7)).copy_(torch.rand(10, 5, 1))
    a = tb.to_numpy(t)
    assert a.strides == t.numpy().strides
    assert_same_values(a, t)

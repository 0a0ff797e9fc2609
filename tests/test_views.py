"""CPU tensors become zero-copy views, for every dtype, layout, grad state and
subclass, on every route through to_numpy."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from helpers import (
    VIEWED_DTYPES,
    array_bytes,
    data_address,
    is_view_of,
    logical_bytes,
    numpy_dtype,
    reference_numpy,
    sample,
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


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", VIEWED_DTYPES, ids=str)
def test_every_dtype_and_layout_is_a_view(path, dtype, layout):
    t = build(dtype, layout)
    assert_view_like_numpy(tb.to_numpy(t), t)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("grad", ["leaf", "non-leaf", "parameter", "subclass"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64, torch.bfloat16,
                                   torch.float8_e4m3fn], ids=str)
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
        assert isinstance(owner, torch.UntypedStorage) or (
            isinstance(owner, torch.Tensor) and not owner.requires_grad), type(owner)


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

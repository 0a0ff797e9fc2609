"""Copies happen only where unavoidable, and copy= / out= keep their contract."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from helpers import SANITIZED, array_bytes, is_view_of, logical_bytes, numpy_dtype, sample

import tensorbridge as tb


def conj(dtype):
    return sample((3, 4), dtype).conj()


def neg(dtype):
    return torch._neg_view(sample((3, 4), dtype))


def conj_imag(dtype):  # the usual source of a neg bit: the imaginary part of a conj view
    return sample((3, 4), dtype).conj().imag


def sparse_coo(dtype):
    return sample((4, 5), dtype).relu().to_sparse()


def sparse_csr(dtype):
    return sample((4, 5), dtype).relu().to_sparse_csr()


def sparse_csc(dtype):
    return sample((4, 6), dtype).relu().to_sparse_csc()


def sparse_bsr(dtype):
    return sample((4, 6), dtype).relu().to_sparse_bsr((2, 3))


def sparse_hybrid(dtype):  # one sparse dimension, dense rows
    return sample((4, 3, 2), dtype).relu().to_sparse(1)


def sparse_uncoalesced(dtype):  # repeated indices: their values add up
    indices = torch.tensor([[0, 0, 3, 1], [2, 2, 0, 1]])
    return torch.sparse_coo_tensor(indices, sample((4,), dtype), (4, 3), check_invariants=True)


def complex32(dtype):
    return sample((3, 4), torch.complex64).to(torch.complex32)


def complex32_conj(dtype):
    return complex32(dtype).conj()


# source builder -> dtypes it applies to
NEEDS_COPY = {
    "conj": (conj, [torch.complex64, torch.complex128]),
    "neg": (neg, [torch.float32, torch.int16, torch.bfloat16, torch.complex64]),
    "conj-imag": (conj_imag, [torch.complex64]),
    "sparse-coo": (sparse_coo, [torch.float32, torch.float64]),
    "sparse-csr": (sparse_csr, [torch.float32]),
    "sparse-csc": (sparse_csc, [torch.float64]),
    "sparse-bsr": (sparse_bsr, [torch.float32]),
    "sparse-hybrid": (sparse_hybrid, [torch.float32, torch.bfloat16]),
    "sparse-uncoalesced": (sparse_uncoalesced, [torch.float32, torch.complex64]),
    "complex32": (complex32, [torch.complex32]),
    "complex32-conj": (complex32_conj, [torch.complex32]),
}
CASES = [(name, dtype) for name, (_, dtypes) in NEEDS_COPY.items() for dtype in dtypes]
IDS = [f"{name}-{str(dtype)[6:]}" for name, dtype in CASES]


def source(name, dtype):
    return NEEDS_COPY[name][0](dtype)


def expected_values(t):
    """The values the copy must hold, computed by torch in full precision."""
    t = t.detach().resolve_conj().resolve_neg()
    if t.layout != torch.strided:
        t = t.to_dense()
    if t.dtype == torch.complex32:
        t = t.to(torch.complex64)
    return logical_bytes(t)


@pytest.mark.parametrize(("name", "dtype"), CASES, ids=IDS)
def test_unavoidable_copies_have_the_right_values(path, name, dtype):
    t = source(name, dtype)
    a = tb.to_numpy(t)
    assert a.shape == tuple(t.shape)
    if dtype != torch.complex32:
        assert a.dtype == numpy_dtype(t.dtype)
    else:
        assert a.dtype == np.complex64
    np.testing.assert_array_equal(array_bytes(a), expected_values(t))
    assert a.flags.owndata and a.flags.writeable  # one copy, owned by NumPy


@pytest.mark.parametrize(("name", "dtype"), CASES, ids=IDS)
def test_copy_false_refuses_and_says_why(path, name, dtype):
    t = source(name, dtype)
    with pytest.raises(BufferError, match=r"to_numpy: copy=False, but .*copy=None"):
        tb.to_numpy(t, copy=False)


@pytest.mark.parametrize(("name", "dtype"), CASES, ids=IDS)
def test_unavoidable_copies_go_straight_into_out(path, name, dtype):
    t = source(name, dtype)
    out = np.empty(tuple(t.shape), np.complex64 if dtype == torch.complex32
                   else numpy_dtype(t.dtype))
    assert tb.to_numpy(t, out=out) is out
    np.testing.assert_array_equal(array_bytes(out), expected_values(t))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float8_e4m3fn,
                                   torch.complex128, torch.bool], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "transposed", "zero-stride"])
def test_copy_true_returns_memory_numpy_owns(path, dtype, layout):
    t = sample((3, 4), dtype)
    t = {"contiguous": t, "transposed": t.t(), "zero-stride": t[:1].expand(3, 4)}[layout]
    a = tb.to_numpy(t, copy=True)
    assert a.flags.owndata and a.base is None and a.flags.writeable
    assert not is_view_of(a, t)
    np.testing.assert_array_equal(array_bytes(a), logical_bytes(t))
    a[...] = a[0, 0]  # the copy is private: the tensor does not change
    assert not np.array_equal(array_bytes(a), logical_bytes(t))


def test_copy_true_on_a_transposed_tensor_keeps_its_memory_order(path):
    t = sample((3, 4), torch.float32).t()
    assert tb.to_numpy(t, copy=True).flags.f_contiguous


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_copy_false_on_a_viewable_tensor_is_a_view(path, dtype):
    t = sample((3, 4), dtype).t()
    assert is_view_of(tb.to_numpy(t, copy=False), t)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64], ids=str)
@pytest.mark.parametrize("out_layout", ["c", "f", "negative-strides"])
def test_out_receives_a_copy_of_a_view(path, dtype, out_layout):
    t = sample((3, 4), dtype).t()
    ndtype = numpy_dtype(dtype)
    out = {
        "c": lambda: np.empty((4, 3), ndtype),
        "f": lambda: np.empty((4, 3), ndtype, order="F"),
        "negative-strides": lambda: np.empty((4, 3), ndtype)[::-1, ::-1],
    }[out_layout]()
    assert tb.to_numpy(t, out=out) is out
    np.testing.assert_array_equal(array_bytes(out), logical_bytes(t))
    assert not np.shares_memory(out, tb.to_numpy(t))


@pytest.mark.parametrize("name", ["conj", "neg"])
def test_out_with_negative_strides_receives_a_resolved_copy(path, name):
    t = source(name, torch.complex64)
    out = np.empty((3, 4), np.complex64)[::-1]
    tb.to_numpy(t, out=out)
    np.testing.assert_array_equal(array_bytes(out), expected_values(t))


@pytest.mark.parametrize("convert", [tb.to_numpy, tb.to_numpy_async], ids=lambda f: f.__name__)
@pytest.mark.parametrize("kind", ["view", "copy", "numpy"])
def test_out_is_checked_once_per_call(path, monkeypatch, convert, kind):
    from tensorbridge import _convert

    checked = []
    check_out_array = _convert.check_out_array

    def counted(out):
        checked.append(out)
        check_out_array(out)

    monkeypatch.setattr(_convert, "check_out_array", counted)
    x = {"view": lambda: sample((3, 4), torch.float32), "copy": lambda: conj(torch.complex64),
         "numpy": lambda: np.arange(12.0).reshape(3, 4)}[kind]()
    out = np.empty((3, 4), numpy_dtype(x.dtype) if kind != "numpy" else x.dtype)
    result = convert(x, out=out)
    assert (result if convert is tb.to_numpy else result.wait()) is out
    assert len(checked) == 1 and checked[0] is out
    np.testing.assert_array_equal(out, x if kind == "numpy" else x.resolve_conj().numpy())


def test_out_with_grad_tensor(path):
    t = torch.arange(6.0, requires_grad=True) * 2
    out = np.zeros(6, np.float32)
    tb.to_numpy(t, out=out)
    np.testing.assert_array_equal(out, np.arange(6.0) * 2)


def test_copy_true_for_other_producers(path):
    a = np.arange(6.0)
    c = tb.to_numpy(a, copy=True)
    assert c.flags.owndata and not np.shares_memory(a, c)
    np.testing.assert_array_equal(c, a)
    m = memoryview(bytearray(b"abcd"))
    c = tb.to_numpy(m, copy=True)
    assert c.flags.owndata and c.flags.writeable
    np.testing.assert_array_equal(c, [97, 98, 99, 100])


class Wrapper(torch.Tensor):
    """A wrapper subclass: its own memory is a placeholder; values live in `elem`."""

    @staticmethod
    def __new__(cls, elem):
        return torch.Tensor._make_wrapper_subclass(cls, elem.shape, dtype=elem.dtype,
                                                   device=elem.device)

    def __init__(self, elem):
        self.elem = elem

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        from torch.utils._pytree import tree_map

        def unwrap(x):
            return x.elem if isinstance(x, Wrapper) else x

        return func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs or {}))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_dispatch_subclasses_are_copied_through_torch(path, dtype):
    # The exchange API hands out the wrapper's placeholder pointer: reading it
    # would return garbage. The values must come through __torch_dispatch__.
    elem = sample((3, 4), dtype)
    a = tb.to_numpy(Wrapper(elem))
    np.testing.assert_array_equal(array_bytes(a), logical_bytes(elem))
    assert a.flags.owndata
    with pytest.raises(BufferError, match="its own __torch_dispatch__"):
        tb.to_numpy(Wrapper(elem), copy=False)


def test_fake_tensors_have_no_values(path):
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        fake = torch.ones(3)
    with pytest.raises(TypeError, match="cannot read the values of this FakeTensor"):
        tb.to_numpy(fake)


@pytest.mark.slow  # a fresh interpreter importing torch
def test_ml_dtypes_are_recognised_in_a_fresh_process():
    # No earlier conversion is needed for tensorbridge to know an ml_dtypes array.
    import subprocess
    import sys

    code = ("import ml_dtypes, numpy as np, torch\n"
            "from tensorbridge._dtypes import tensor_over\n"
            "print(tensor_over(torch, np.ones(2, ml_dtypes.bfloat16)).dtype)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "torch.bfloat16"


def zero_tensor(dtype, shape=(3, 4)):
    """A ZeroTensor, as forward-mode autograd makes them: zeros with no memory."""
    t = torch._efficientzerotensor(shape, dtype=dtype)
    assert t._is_zerotensor()
    return t


ZERO_DTYPES = [torch.float32, torch.int64, torch.bfloat16, torch.complex64]


@pytest.mark.parametrize("copy", [None, True])
@pytest.mark.parametrize("dtype", ZERO_DTYPES, ids=str)
def test_zero_tensors_give_zeros_in_one_copy(path, dtype, copy):
    # Large enough that uninitialised memory would not be zeros by chance.
    for _ in range(20):  # dirty the allocator's free lists first
        torch.full((1 << 16,), 7, dtype=dtype)
        np.full(1 << 16, 7, numpy_dtype(dtype))
    t = zero_tensor(dtype, (256, 256))
    a = tb.to_numpy(t, copy=copy)
    assert a.shape == (256, 256) and a.dtype == numpy_dtype(dtype)
    assert a.flags.owndata and a.flags.writeable
    np.testing.assert_array_equal(array_bytes(a), np.zeros(a.nbytes, np.uint8))


@pytest.mark.parametrize("dtype", ZERO_DTYPES, ids=str)
def test_zero_tensors_with_copy_false_or_out(path, dtype):
    t = zero_tensor(dtype)
    with pytest.raises(BufferError, match=r"to_numpy: copy=False, but it is a ZeroTensor.*"
                                          r"copy=None"):
        tb.to_numpy(t, copy=False)
    out = np.full((3, 4), 5, numpy_dtype(dtype))
    assert tb.to_numpy(t, out=out) is out
    np.testing.assert_array_equal(array_bytes(out), np.zeros(out.nbytes, np.uint8))
    empty = zero_tensor(dtype, (0, 4))
    assert tb.to_numpy(empty).shape == (0, 4)



@pytest.mark.slow
@pytest.mark.skipif(SANITIZED, reason="ASan's quarantine keeps freed memory resident")
def test_sparse_tensors_are_densified_straight_into_the_result():
    # One copy: the peak resident memory grows by about the result, not by a
    # dense temporary plus the result (2x). Measured in a fresh process, on
    # each route, from the kernel's peak-RSS counter (reset per conversion).
    code = textwrap.dedent("""
        import json, re, warnings, numpy as np, torch, tensorbridge as tb
        from tensorbridge import _core
        warnings.simplefilter("ignore")  # torch's beta-state notes on sparse layouts
        def status(key):
            found = re.search(key + r":\\s+(\\d+) kB", open("/proc/self/status").read())
            return int(found.group(1)) << 10
        indices = torch.tensor([[0, 2047, 17, 17], [0, 8191, 5, 5]])
        coo = torch.sparse_coo_tensor(indices, torch.ones(4), (2048, 8192))  # 64 MiB dense
        figures = {}
        for route in ("exchange", "numpy-method", "python"):
            _core.set_fast_path(route != "python")
            _core.set_exchange_api(route == "exchange")
            for layout, t in (("coo", coo), ("csr", coo.to_sparse_csr())):
                open("/proc/self/clear_refs", "w").write("5")  # peak RSS := current RSS
                before = status("VmRSS")
                a = tb.to_numpy(t)
                figures[route + " " + layout] = (status("VmHWM") - before) / a.nbytes
                assert a[17, 5] == 2 and a[2047, 8191] == 1 and a.sum() == 4
                del a
        print(json.dumps(figures))
    """)
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs /proc/self/clear_refs to reset the peak-RSS counter")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    figures = json.loads(out.stdout)
    assert max(figures.values()) < 1.3, figures

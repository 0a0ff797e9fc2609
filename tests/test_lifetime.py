"""Views keep their source alive, never the autograd graph, and nothing leaks."""

import sys
import weakref

import numpy as np
import psutil
import pytest

torch = pytest.importorskip("torch")
from dlpack_producer import Producer
from helpers import SANITIZED, array_bytes, data_address, fast_sample, logical_bytes, sample

import tensorbridge as tb


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.int64], ids=str)
@pytest.mark.parametrize("grad", [False, True])
def test_view_outlives_its_deleted_source(path, dtype, grad, collect_garbage):
    t = sample((64, 64), dtype)
    if grad and dtype.is_floating_point:
        t.requires_grad_()
    expected = logical_bytes(t)
    a = tb.to_numpy(t[3:])
    del t
    collect_garbage()
    churn = [torch.full((64, 64), 7, dtype=dtype) for _ in range(50)]  # reuse freed memory
    np.testing.assert_array_equal(array_bytes(a), expected[expected.size // 64 * 3:])
    del churn


@pytest.mark.parametrize("grad", [False, True])
def test_array_releases_its_source(path, grad, collect_garbage):
    # The tensor's memory belongs to a NumPy buffer we can watch with a weakref.
    buffer = np.ones(1000, np.float32)
    memory_alive = weakref.ref(buffer)
    t = torch.from_numpy(buffer).requires_grad_(grad)
    del buffer
    a = tb.to_numpy(t * 1 if grad else t)
    del t
    collect_garbage()
    if not grad:
        assert memory_alive() is not None  # the array keeps the memory alive
    del a
    collect_garbage()
    assert memory_alive() is None


class _GraphSentinel:
    pass


class _HoldInGraph(torch.autograd.Function):
    """Doubles its input and keeps `sentinel` alive for as long as the graph is."""

    @staticmethod
    def forward(ctx, x, sentinel):
        ctx.sentinel = sentinel
        return x * 2

    @staticmethod
    def backward(ctx, grad):
        return grad * 2, None


def test_view_of_a_non_leaf_does_not_keep_the_graph_alive(path, collect_garbage):
    sentinel = _GraphSentinel()
    graph_alive = weakref.ref(sentinel)
    y = _HoldInGraph.apply(torch.arange(4.0, requires_grad=True), sentinel)
    del sentinel
    assert y.grad_fn is not None and graph_alive() is not None
    a = tb.to_numpy(y)
    del y
    collect_garbage()
    assert graph_alive() is None
    np.testing.assert_array_equal(a, [0, 2, 4, 6])


def _rss() -> int:
    return psutil.Process().memory_info().rss


def _leak_sources():
    neg = torch._neg_view(torch.ones(64))
    return {
        "float32": torch.ones(256),
        "requires-grad": torch.ones(256, requires_grad=True),
        "bfloat16": torch.ones(256, dtype=torch.bfloat16),
        "int4-error": torch.empty(8, dtype=torch.int4),
        "conj-copy": torch.ones(64, dtype=torch.complex64).conj(),
        "neg-copy": neg,
        "numpy": np.ones(256),
        "list-error": [1.0, 2.0],
    }


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(_leak_sources()))
def test_no_leak_over_100k_conversions(path, kind, collect_garbage):
    x = _leak_sources()[kind]
    is_error = kind.endswith("-error")

    def convert_many(n):
        for _ in range(n):
            try:
                tb.to_numpy(x)
            except TypeError:
                if not is_error:
                    raise

    convert_many(10_000)  # warm caches and allocator pools
    collect_garbage()
    refs, rss = sys.getrefcount(x), _rss()
    convert_many(100_000)
    collect_garbage()
    assert sys.getrefcount(x) == refs
    grown = _rss() - rss
    if not SANITIZED:  # ASan's quarantine holds freed memory: RSS says nothing there
        assert grown < 4 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB over 100k conversions"


def test_every_dlpack_capsule_is_released(collect_garbage):
    p = Producer(np.arange(16.0))
    for _ in range(2000):
        tb.to_numpy(p)
    collect_garbage()
    assert p.deleted == 2000


_REPLACE_MEMORY = {
    "data": lambda t: setattr(t, "data", torch.zeros(1, dtype=t.dtype)),
    "set_": lambda t: _set_under_no_grad(t, torch.zeros(1, dtype=t.dtype)),
}


def _set_under_no_grad(t, source):
    with torch.no_grad():  # a leaf that requires grad takes set_ only there
        t.set_(source)


@pytest.mark.parametrize("how", list(_REPLACE_MEMORY))
@pytest.mark.parametrize("dtype", fast_sample([torch.float32, torch.bfloat16, torch.int64]),
                         ids=str)
@pytest.mark.parametrize("grad", fast_sample([False, True]))
def test_view_keeps_its_memory_when_the_tensor_gets_other_memory(path, how, dtype, grad,
                                                                  collect_garbage):
    # The view holds the memory it points into, not only the Python object:
    # `t.data = ...` and `t.set_(...)` free the tensor's old storage otherwise.
    # The storage's memory is a NumPy buffer here, watched through a weakref.
    buffer = logical_bytes(sample((4096,), dtype))
    memory_alive = weakref.ref(buffer)
    t = torch.frombuffer(buffer, dtype=dtype)  # not a view: no _base holds the storage
    del buffer
    if grad and dtype.is_floating_point:
        t.requires_grad_()
    expected = logical_bytes(t)
    a = tb.to_numpy(t)
    _REPLACE_MEMORY[how](t)
    assert t.numel() == 1
    collect_garbage()
    assert memory_alive() is not None  # the view still holds the old storage
    churn = [torch.full((64, 64), 7, dtype=dtype) for _ in range(50)]  # reuse freed memory
    np.testing.assert_array_equal(array_bytes(a), expected)
    del churn, a
    collect_garbage()
    assert memory_alive() is None  # and lets it go with the view


@pytest.mark.slow
def test_a_large_view_survives_its_tensor_getting_other_memory():
    # Large storages are unmapped when freed: reading a dangling view
    # crashes, so this runs in a child process, once per route.
    import subprocess
    import textwrap

    code = textwrap.dedent("""
        import gc, numpy as np, torch, tensorbridge as tb
        from tensorbridge import _core
        for route in ("exchange", "numpy-method", "python"):
            _core.set_fast_path(route != "python")
            _core.set_exchange_api(route == "exchange")
            for how in ("data", "set_"):
                t = torch.arange(1 << 22, dtype=torch.float32)
                a = tb.to_numpy(t)
                if how == "data":
                    t.data = torch.zeros(1)
                else:
                    t.set_(torch.zeros(1))
                gc.collect()
                assert a[-1] == (1 << 22) - 1 and a[12345] == 12345, (route, how)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", (out.returncode, out.stderr[-2000:])


class NumpyBasedOnItself(torch.Tensor):
    """Tensor.numpy() as older torch may write it: the view's base is the
    tensor itself, not an alias of its storage (and no exchange API, so the
    native route is the one over Tensor.numpy())."""

    __dlpack_c_exchange_api__ = None

    @property
    def __array_interface__(self):
        return {"shape": tuple(self.shape), "typestr": "<f4", "version": 3,
                "data": (self.data_ptr(), False),
                "strides": tuple(s * 4 for s in self.stride())}

    def numpy(self):
        view = np.asarray(self)
        assert view.base is self
        return view


@pytest.mark.parametrize("how", list(_REPLACE_MEMORY))
def test_a_view_through_tensor_numpy_based_on_the_tensor_keeps_its_memory(how,
                                                                          collect_garbage):
    buffer = np.arange(4096, dtype=np.float32)
    memory_alive = weakref.ref(buffer)
    plain = torch.frombuffer(buffer, dtype=torch.float32)
    t = torch.Tensor._make_subclass(NumpyBasedOnItself, plain)  # not a view of `plain`
    del plain
    del buffer
    a = tb.to_numpy(t)
    assert data_address(a) == t.data_ptr() and a.flags.writeable
    _REPLACE_MEMORY[how](t)
    collect_garbage()
    assert memory_alive() is not None
    np.testing.assert_array_equal(a, np.arange(4096, dtype=np.float32))
    del a
    collect_garbage()
    assert memory_alive() is None


# Ported from PyTorch's test/test_numpy_interop.py.
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


# Ported from NumPy's numpy/_core/tests/test_dlpack.py.
@pytest.mark.parametrize("grad", [False, True])
def test_a_view_of_a_tensor_leaves_its_refcount_alone(path, grad, collect_garbage):
    t = torch.arange(5.0, requires_grad=grad)
    start = sys.getrefcount(t)
    a = tb.to_numpy(t)
    del a
    collect_garbage()
    assert sys.getrefcount(t) == start

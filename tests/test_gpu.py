"""On a real GPU (TENSORBRIDGE_TEST_DRIVER=real, run by scripts/gpu_check.sh):
torch CUDA tensors and CuPy arrays through the engine, checked against
torch's own `.cpu()`. Skipped, with the reason, everywhere else."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from helpers import array_bytes, logical_bytes

import tensorbridge as tb

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def clean_pool():
    yield
    torch.cuda.synchronize()
    from tensorbridge import _core

    _core.wait_for_all_transfers()
    assert tb.pinned_memory_stats()["in_use_bytes"] == 0


def cuda_sample(shape, dtype, device="cuda"):
    g = torch.Generator(device="cpu").manual_seed(0)
    t = torch.randn(shape, generator=g, dtype=torch.float64) * 4
    return t.to(dtype).to(device)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64,
                                   torch.float8_e4m3fn, torch.complex64], ids=str)
@pytest.mark.parametrize("shape", [(0,), (7,), (1000, 1000), (64 << 20,)])
def test_cuda_tensors_match_cpu(dtype, shape):
    t = cuda_sample(shape, dtype) if not dtype.is_complex else torch.randn(
        shape, dtype=dtype, device="cuda")
    a = tb.to_numpy(t)
    assert a.shape == tuple(t.shape) and a.flags.owndata
    np.testing.assert_array_equal(array_bytes(a), logical_bytes(t.cpu()))


@pytest.mark.parametrize("kind", ["transposed", "requires-grad", "conj", "neg", "complex32",
                                  "sparse"])
def test_cuda_tensors_needing_preparation(kind):
    base = cuda_sample((300, 200), torch.float32)
    t = {
        "transposed": lambda: base.t(),
        "requires-grad": lambda: base.clone().requires_grad_() * 2,
        "conj": lambda: torch.randn(50, dtype=torch.complex64, device="cuda").conj(),
        "neg": lambda: torch._neg_view(base),
        "complex32": lambda: torch.randn(50, dtype=torch.complex64, device="cuda").to(
            torch.complex32),
        "sparse": lambda: base.relu().to_sparse(),
    }[kind]()
    expected = t.detach().resolve_conj().resolve_neg()
    expected = expected.to_dense() if expected.layout != torch.strided else expected
    if expected.dtype == torch.complex32:
        expected = expected.to(torch.complex64)
    np.testing.assert_array_equal(tb.to_numpy(t), expected.cpu().numpy())


def test_copy_is_ordered_after_queued_kernels():
    t = torch.zeros(1 << 24, device="cuda")
    torch.cuda._sleep(50_000_000)  # keeps the stream busy for tens of ms
    t.fill_(3)
    assert (tb.to_numpy(t) == 3).all()
    torch.cuda._sleep(50_000_000)
    t.fill_(4)
    transfer = tb.to_numpy_async(t)
    t.fill_(5)  # queued after the copy on the same stream: must not leak into it
    assert (transfer.wait() == 4).all()


def test_given_stream_orders_the_copy():
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        t = torch.zeros(1 << 20, device="cuda")
        torch.cuda._sleep(20_000_000)
        t.fill_(2)
    assert (tb.to_numpy(t, stream=s) == 2).all()


def test_given_stream_is_ordered_after_the_current_one_and_guards_the_source():
    # The copy runs on `side`, behind a sleep: it must still see fill_(4),
    # queued on the current stream, and fill_(5), queued after the call on
    # the current stream, must wait for it.
    side = torch.cuda.Stream()
    t = torch.zeros(1 << 22, device="cuda")
    torch.cuda._sleep(20_000_000)
    t.fill_(4)
    with torch.cuda.stream(side):
        torch.cuda._sleep(50_000_000)
    transfer = tb.to_numpy_async(t, stream=side)
    t.fill_(5)
    assert (transfer.wait() == 4).all()
    # a strided tensor is made contiguous on `side`, after fill_(5) on the current stream
    assert (tb.to_numpy(t[::2], stream=side) == 5).all()


def test_plain_cuda_tensors_take_the_native_route():
    # torch >= 2.10 publishes the DLPack C exchange API: no Python-level step.
    if not hasattr(torch.Tensor, "__dlpack_c_exchange_api__"):
        pytest.skip("this torch has no DLPack C exchange API")
    from tensorbridge import _convert, _core

    t = cuda_sample((64,), torch.float32)
    calls = []

    def fallback(*args, **kwargs):
        calls.append(args)
        return _convert.convert(*args, **kwargs)

    _core.set_fallback(fallback)
    try:
        np.testing.assert_array_equal(tb.to_numpy(t), t.cpu().numpy())
        np.testing.assert_array_equal(tb.to_numpy(t, copy=True), t.cpu().numpy())
        assert calls == []
        tb.to_numpy(t[::2])  # strided: the Python route makes it contiguous on the device
        assert len(calls) == 1
    finally:
        _convert.install()


def test_pinned_out_and_async():
    t = cuda_sample((4096, 1024), torch.float32)
    out = tb.empty_pinned(t.shape, np.float32)
    assert tb.to_numpy_async(t, out=out).wait() is out
    np.testing.assert_array_equal(out, t.cpu().numpy())


def test_collect_gpu_batches():
    batches = [torch.full((1, 16), i, device="cuda", dtype=torch.float32) for i in range(1000)]
    a = tb.collect(batches)
    np.testing.assert_array_equal(a[:, 0], np.arange(1000))


@pytest.mark.parametrize("dtype", [None, torch.float16])
def test_to_device_roundtrip(dtype):
    a = np.random.default_rng(0).standard_normal((2048, 1024)).astype(np.float32)
    t = tb.to_device(a, "cuda", dtype=dtype)
    assert t.is_cuda and t.dtype == (dtype or torch.float32)
    expected = torch.from_numpy(a).to(dtype) if dtype else torch.from_numpy(a)
    assert torch.equal(t.cpu(), expected)


def test_cupy_arrays():
    cupy = pytest.importorskip("cupy")
    x = cupy.arange(1_000_000, dtype=cupy.float32)
    np.testing.assert_array_equal(tb.to_numpy(x), cupy.asnumpy(x))
    np.testing.assert_array_equal(tb.to_numpy_async(x).wait(), cupy.asnumpy(x))


def test_every_device():
    for index in range(torch.cuda.device_count()):
        t = cuda_sample((1000,), torch.float32, device=f"cuda:{index}")
        np.testing.assert_array_equal(tb.to_numpy(t), t.cpu().numpy())


def test_torch_transformer_on_the_gpu_matches_the_cpu():
    from tensorbridge.sklearn import TorchTransformer

    X = np.random.default_rng(0).standard_normal((5000, 32)).astype(np.float32)
    module = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))
    on_gpu = TorchTransformer(module, batch_size=512, device="cuda").fit(X)
    on_cpu = TorchTransformer(module, batch_size=512, device="cpu").fit(X)
    np.testing.assert_allclose(on_gpu.transform(X), on_cpu.transform(X), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(on_gpu.transform(torch.from_numpy(X).cuda()), on_cpu.transform(X),
                               rtol=1e-4, atol=1e-5)

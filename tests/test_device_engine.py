"""The CUDA engine against the stand-in driver: device memory here is host
memory mapped PROT_NONE, so any host read of a device pointer crashes, copies
run on stream threads with delays, and every driver call is counted."""

import ctypes
import gc
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from device_producers import CURRENT_STREAMS, DeviceArray, ExchangeDeviceArray

import tensorbridge as tb
from tensorbridge import _core

SIZES = {"empty": (0, 3), "64 bytes": (4, 4), "1 row": (1, 1000), "5 MB": (1250, 1000)}


def values(shape, dtype="float32", seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# The two routes of to_numpy for device memory: any DLPack producer through
# the Python route, and a producer publishing the C exchange API (as torch
# CUDA tensors do) copied by the native fast path.
@pytest.fixture(params=["dlpack", "exchange"])
def Device(request):
    return DeviceArray if request.param == "dlpack" else ExchangeDeviceArray


def test_driver_is_resolved_through_cuGetProcAddress_with_explicit_versions(standin):
    assert tb.cuda_available()
    assert _core.device_count() == 2
    assert _core.device_name(1) == "tensorbridge stand-in GPU 1"
    assert standin.version_asked("cuMemcpyDtoHAsync") == 12000
    assert standin.version_asked("cuMemcpyBatchAsync") == 12080


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", ["float32", "int8", "float64", "complex64"])
def test_device_memory_to_numpy(standin, Device, size, dtype):
    _core.set_staging_chunk_bytes(1 << 20)  # 5 MB takes five chunks through three slots
    expected = values(SIZES[size], dtype)
    a = tb.to_numpy(Device(standin, expected))
    assert a.dtype == expected.dtype and a.shape == expected.shape
    np.testing.assert_array_equal(a, expected)
    assert a.flags.owndata and a.flags.writeable


@pytest.mark.parametrize("device", [0, 1])
def test_each_device_through_its_primary_context(standin, Device, device):
    expected = values((3, 5))
    np.testing.assert_array_equal(tb.to_numpy(Device(standin, expected, device)), expected)


def test_copy_sees_the_work_queued_before_the_call(standin, Device):
    # A fake kernel queued on the producer's stream fills the memory 30 ms
    # later; the copy is ordered after it, so the result holds the fill.
    x = Device(standin, np.zeros(1 << 16, np.uint8))
    x.fill_later(7, delay_us=30_000)
    assert (tb.to_numpy(x) == 7).all()
    x.fill_later(9, delay_us=30_000)
    assert (tb.to_numpy_async(x).wait() == 9).all()


def test_results_are_never_half_written(standin, Device):
    standin.set_delay_us(0, 3000)
    _core.set_staging_chunk_bytes(64 << 10)
    for seed in range(10):
        expected = values((300, 700), seed=seed)
        np.testing.assert_array_equal(tb.to_numpy(Device(standin, expected)), expected)


def test_reading_before_the_copy_completes_sees_stale_data(standin):
    # The control for the test above: the delays are real, and an async
    # destination read early does not hold the values yet.
    standin.set_delay_us(100_000, 100_000)
    expected = values((64, 64)) + 1
    out = np.zeros_like(expected)
    transfer = tb.to_numpy_async(DeviceArray(standin, expected), out=out)
    assert not transfer.done()
    assert not np.array_equal(out, expected)
    assert transfer.wait() is out
    np.testing.assert_array_equal(out, expected)


def test_waits_release_the_gil(standin, Device):
    # The copy can only complete after another Python thread has run: it is
    # queued behind a gate that thread opens. Holding the GIL would hang.
    gate = ctypes.c_int(0)
    x = Device(standin, values((100, 100)))
    standin.enqueue_gate(None, ctypes.byref(gate))
    opener = threading.Thread(target=lambda: setattr(gate, "value", 1))
    result = {}
    worker = threading.Thread(target=lambda: result.setdefault("a", tb.to_numpy(x)))
    worker.start()
    opener.start()
    worker.join(timeout=20)
    assert not worker.is_alive(), "to_numpy held the GIL while waiting for the device"
    np.testing.assert_array_equal(result["a"], x.read())


def test_async_transfer_contract(standin):
    standin.set_delay_us(50_000, 50_000)
    expected = values((256, 256))
    transfer = tb.to_numpy_async(DeviceArray(standin, expected))
    assert isinstance(transfer, tb.Transfer)
    assert not transfer.done()  # returns at once, while the copy waits 50 ms
    with pytest.raises(TimeoutError, match="did not finish within 0.001 s"):
        transfer.wait(timeout=0.001)
    np.testing.assert_array_equal(transfer.result(), expected)
    assert transfer.done()
    np.testing.assert_array_equal(transfer.wait(timeout=0), expected)


def test_cpu_input_gives_a_finished_transfer():
    a = np.arange(4.0)
    transfer = tb.to_numpy_async(a)
    assert transfer.done() and transfer.wait() is a


def test_pinned_out_is_one_direct_copy(standin):
    expected = values((512, 512))
    out = tb.empty_pinned(expected.shape, expected.dtype)
    before = standin.calls("cuMemHostAlloc") + tb.pinned_memory_stats()["hit_count"]
    assert tb.to_numpy(DeviceArray(standin, expected), out=out) is out
    np.testing.assert_array_equal(out, expected)
    assert standin.calls("cuMemcpyDtoHAsync") == 1
    assert standin.calls("cuMemHostAlloc") + tb.pinned_memory_stats()["hit_count"] == before


def test_ordinary_out_and_non_contiguous_out(standin):
    expected = values((40, 30))
    out = np.empty((40, 30), np.float32)
    assert tb.to_numpy(DeviceArray(standin, expected), out=out) is out
    np.testing.assert_array_equal(out, expected)
    strided = np.empty((40, 60), np.float32)[:, ::2]
    tb.to_numpy(DeviceArray(standin, expected), out=strided)
    np.testing.assert_array_equal(strided, expected)
    with pytest.raises(ValueError, match="out has shape"):
        tb.to_numpy(DeviceArray(standin, expected), out=np.empty((30, 40), np.float32))


def test_copy_false_and_bad_streams_are_refused(standin, Device):
    x = Device(standin, values((3,)))
    with pytest.raises(BufferError, match="copy=False, but .* device type 2"):
        tb.to_numpy(x, copy=False)
    with pytest.raises(TypeError, match="stream must be a torch or CuPy stream"):
        tb.to_numpy(x, stream="default")
    with pytest.raises(ValueError, match="stream handle must be >= 0"):
        tb.to_numpy(x, stream=-1)


def test_stream_argument_orders_the_copy_on_that_stream(standin, Device):
    stream = standin.stream_create()
    x = Device(standin, values((10,)))
    a = tb.to_numpy(x, stream=stream)
    np.testing.assert_array_equal(a, x.read())
    assert x.requests[-1]["stream"] == stream  # the producer was told the consumer's stream


def test_exchange_producers_are_copied_in_c_on_their_current_stream(standin):
    # No Python-level DLPack call: the type's C exchange API describes the
    # memory and names the current stream, where a fake kernel is queued.
    stream = standin.stream_create()
    CURRENT_STREAMS[1] = stream
    try:
        x = ExchangeDeviceArray(standin, np.zeros(1 << 16, np.uint8), device=1)
        standin.enqueue_fill(stream, x.address, 5, x.array.nbytes, 30_000)
        a = tb.to_numpy(x)
        assert (a == 5).all() and a.flags.owndata and a.flags.writeable
        assert x.requests == [] and x.exchange_calls == 1
        copied = tb.to_numpy(x, copy=True)
        assert copied.flags.owndata and x.requests == []
        standin.enqueue_fill(stream, x.address, 6, x.array.nbytes, 30_000)
        assert (tb.to_numpy_async(x).wait() == 6).all() and x.requests == []
    finally:
        del CURRENT_STREAMS[1]


@pytest.mark.parametrize("case", ["strided", "refused by the API", "stream=", "out=", "empty"])
def test_exchange_route_leaves_the_rest_to_the_python_route(standin, case):
    expected = values((6, 4))
    if case == "strided":  # columns 0 and 2 of a (6, 4) array: not one compact copy
        x = ExchangeDeviceArray(standin, expected, shape=(6, 2), strides=(4, 2))
        expected = expected[:, ::2]
    elif case == "refused by the API":
        x = ExchangeDeviceArray(standin, expected, refuse_exchange=True)
    elif case == "empty":
        expected = values((0, 4))
        x = ExchangeDeviceArray(standin, expected)
    else:
        x = ExchangeDeviceArray(standin, expected)
    kwargs = {"stream=": {"stream": 0}, "out=": {"out": np.empty_like(expected)}}.get(case, {})
    a = tb.to_numpy(x, **kwargs)
    np.testing.assert_array_equal(a, expected)
    assert a.shape == expected.shape and a.dtype == expected.dtype
    # out= copies the memory the native core described: no __dlpack__ call
    # (nor for an empty one); the others ask the producer once.
    assert len(x.requests) == (0 if case in ("empty", "out=") else 1)


def test_both_routes_raise_the_same_driver_error(standin):
    for Device in (DeviceArray, ExchangeDeviceArray):
        standin.fail("cuMemcpyDtoHAsync", result=2)
        with pytest.raises(_core.DriverError, match=r"cuMemcpyDtoHAsync failed: "
                                                    r"CUDA_ERROR_OUT_OF_MEMORY"):
            tb.to_numpy(Device(standin, values((3, 3))))


@pytest.mark.parametrize(("shape", "strides", "view"), [
    ((4, 3), (6, 2), lambda a: a[:, ::2]),            # every other column: runs of 1 element
    ((4, 5), (6, 1), lambda a: a[:, :5]),             # padded rows: runs of 5
    ((2, 3, 2), (12, 4, 1), lambda a: a.reshape(2, 3, 4)[:, :, :2]),
])
def test_strided_device_memory_is_copied_as_its_runs(standin, shape, strides, view):
    base = values((4, 6))
    expected = view(base)
    assert expected.shape == shape
    x = DeviceArray(standin, base, ndim=len(shape), shape=shape, strides=strides)
    np.testing.assert_array_equal(tb.to_numpy(x), expected)
    np.testing.assert_array_equal(tb.to_numpy_async(x).wait(), expected)
    assert standin.calls("cuMemcpyBatchAsync") == 2


def test_collect_takes_strided_device_batches(standin):
    base = values((4, 6))
    strided = DeviceArray(standin, base, shape=(4, 3), strides=(6, 2))
    plain = DeviceArray(standin, base[:2, :3])
    np.testing.assert_array_equal(tb.collect([strided, plain]),
                                  np.concatenate([base[:, ::2], base[:2, :3]]))


def test_too_fragmented_device_memory_is_refused_with_the_fix(standin):
    x = DeviceArray(standin, values((300, 300)), shape=(300, 300), strides=(1, 300))  # transposed
    with pytest.raises(BufferError, match="90000 separate pieces; make it contiguous"):
        tb.to_numpy(x)


@pytest.mark.parametrize("given_as", ["list", "generator"])
def test_thousand_small_batches_are_packed(standin, Device, given_as, monkeypatch):
    from tensorbridge import _collect

    batches = [Device(standin, np.full((1, 16), i, np.float32)) for i in range(1000)]
    if Device is ExchangeDeviceArray and given_as == "list":  # the bulk path, all in one go
        monkeypatch.setattr(_collect, "_Writer", None)
    a = tb.collect(batches if given_as == "list" else iter(batches))
    np.testing.assert_array_equal(a[:, 0], np.arange(1000))
    assert standin.calls("cuMemcpyBatchAsync") == 1
    assert standin.calls("cuMemcpyDtoHAsync") == 0
    # Their current stream is the legacy one, where cuda.h forbids the batch
    # copy: it runs on a stream of ours, ordered both ways by an event each.
    assert standin.calls("cuEventRecord") == 3
    if Device is ExchangeDeviceArray:  # described in C: no Python-level DLPack call
        assert all(b.requests == [] for b in batches)


def test_the_route_describes_only_plain_compact_exchange_memory(standin):
    import torch

    plain = ExchangeDeviceArray(standin, values((3, 4)), device=1)
    route = _core.route(plain)
    assert route.kind == "device" and route.torch_device is None
    assert tuple(route.memory) == (1, 0, plain.address, (3, 4), np.dtype(np.float32))
    assert (route.memory.device, route.memory.address) == (1, plain.address)
    strided = ExchangeDeviceArray(standin, values((3, 4)), shape=(3, 2), strides=(4, 2))
    for other in (np.ones(3), torch.ones(3), DeviceArray(standin, values((3,))), strided,
                  ExchangeDeviceArray(standin, values((3,)), refuse_exchange=True), "text"):
        assert _core.route(other).memory is None


def test_collect_of_exchange_sequences_that_need_the_general_path(standin):
    small = [values((2, 3), seed=i) for i in range(4)]
    exchange = [ExchangeDeviceArray(standin, p) for p in small]
    mixed = exchange[:2] + [DeviceArray(standin, small[2]), small[3]]
    np.testing.assert_array_equal(tb.collect(mixed), np.concatenate(small))
    big = values((200, 200))  # 160 KB: too large to wait for packing
    np.testing.assert_array_equal(tb.collect(exchange + [ExchangeDeviceArray(standin, big[:, :3])]),
                                  np.concatenate(small + [big[:, :3]]))
    two_devices = [ExchangeDeviceArray(standin, p, device=i % 2) for i, p in enumerate(small)]
    np.testing.assert_array_equal(tb.collect(two_devices), np.concatenate(small))
    out = np.empty((8, 3), np.float32)
    assert tb.collect(exchange, out=out) is out
    np.testing.assert_array_equal(out, np.concatenate(small))
    with pytest.raises(ValueError, match="out has 7 rows, but the batches bring at least 8"):
        tb.collect(exchange, out=np.empty((7, 3), np.float32))
    with pytest.raises(ValueError, match=r"batch 1 has shape \(2, 2\), but batch 0 has trailing"):
        tb.collect([exchange[0], ExchangeDeviceArray(standin, values((2, 2)))])
    with pytest.raises(ValueError, match="batch 1 has dtype float64, but batch 0 has float32"):
        tb.collect([exchange[0], ExchangeDeviceArray(standin, values((2, 3), "float64"))])


def test_without_the_batch_api_small_batches_still_share_one_event():
    code = textwrap.dedent("""
        import numpy as np, tensorbridge as tb
        from standin.build import StandIn
        from device_producers import DeviceArray
        import os
        s = StandIn(os.environ["TENSORBRIDGE_LIBCUDA"])
        a = tb.collect(DeviceArray(s, np.full((1, 4), i, np.float32)) for i in range(100))
        assert (a[:, 0] == np.arange(100)).all()
        print(s.calls("cuMemcpyBatchAsync"), s.calls("cuMemcpyDtoHAsync"), s.calls("cuEventRecord"))
    """)
    env = dict(os.environ, STANDIN_NO_BATCH_COPY="1")
    out = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(__file__), env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "100", "1"]


def test_collect_mixes_host_and_device_batches(standin):
    parts = [values((3, 4), seed=i) for i in range(6)]
    batches = [DeviceArray(standin, p) if i % 2 else p for i, p in enumerate(parts)]
    np.testing.assert_array_equal(tb.collect(batches), np.concatenate(parts))
    big = values((2000, 1000))
    np.testing.assert_array_equal(tb.collect([DeviceArray(standin, big), big[:10]]),
                                  np.concatenate([big, big[:10]]))


@pytest.mark.parametrize("Device", [DeviceArray, ExchangeDeviceArray])
def test_collect_into_a_non_contiguous_out(standin, Device):
    # Packed small batches, a large one and host rows between them: device
    # rows reach every other column of `out` through staging, and the staging
    # never writes back over the host rows.
    parts = [values((3, 4), seed=i) for i in range(5)] + [values((3000, 4), seed=9)]
    batches = [p if i == 2 else Device(standin, p) for i, p in enumerate(parts)]
    out = np.full((3015, 8), -1.0, np.float32)[:, ::2]
    assert tb.collect(iter(batches), out=out) is out
    np.testing.assert_array_equal(out, np.concatenate(parts))


_CALLS = ["cuMemcpyDtoHAsync", "cuEventCreate", "cuEventRecord", "cuEventQuery",
          "cuEventSynchronize", "cuCtxSetCurrent", "cuCtxGetCurrent"]


# An asynchronous copy is only ever waited for, never queried.
@pytest.mark.parametrize("call, route", [(call, route) for route in ("sync", "async", "staged")
                                         for call in _CALLS
                                         if (call, route) != ("cuEventQuery", "async")])
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
                          "limit_bytes", "alloc_count", "hit_count"}


def test_empty_pinned_shapes_and_dtypes(standin):
    import ml_dtypes

    for shape, dtype in [((2, 3), np.float64), (5, np.int8), ((0, 4), np.float32),
                         ((3,), ml_dtypes.bfloat16)]:
        a = tb.empty_pinned(shape, dtype)
        assert a.shape == ((shape,) if isinstance(shape, int) else shape)
        assert a.dtype == np.dtype(dtype) and a.flags.writeable and a.flags.c_contiguous
    with pytest.raises(ValueError, match="shape must hold non-negative ints"):
        tb.empty_pinned((-1, 2), np.float32)


def test_sources_deleted_while_their_copy_runs(standin):
    standin.set_delay_us(50_000, 50_000)
    expected = values((128, 128))
    x = DeviceArray(standin, expected)
    transfer = tb.to_numpy_async(x)
    del x  # the producer frees its memory when the DLPack deleter runs
    gc.collect()
    np.testing.assert_array_equal(transfer.wait(), expected)


def test_transfers_dropped_unawaited_are_safe(standin):
    standin.set_delay_us(20_000, 40_000)
    producers = [DeviceArray(standin, values((64, 64), seed=i)) for i in range(20)]
    for p in producers:
        tb.to_numpy_async(p)  # dropped at once
    gc.collect()
    _core.wait_for_all_transfers()
    from tensorbridge import _transfer

    _transfer.release_finished()
    gc.collect()
    assert all(p.deleted == 1 for p in producers)


def test_threads_convert_concurrently(standin, Device):
    standin.set_delay_us(0, 2000)
    _core.set_staging_chunk_bytes(256 << 10)
    errors = []

    def work(seed):
        try:
            for i in range(10):
                expected = values((200, 300), seed=seed * 100 + i)
                x = Device(standin, expected, device=seed % 2)
                got = tb.to_numpy_async(x).wait() if i % 2 else tb.to_numpy(x)
                np.testing.assert_array_equal(got, expected)
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_fork_child_starts_with_an_empty_pool_and_no_driver(standin):
    keep = tb.empty_pinned((1000,), np.float32)  # the parent holds pinned memory
    assert tb.pinned_memory_stats()["in_use_bytes"] > 0
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave without running any cleanup
        try:
            report = (f"{tb.cuda_available()} {tb.pinned_memory_stats()['in_use_bytes']} "
                      f"{tb.pinned_memory_stats()['reserved_bytes']}")
            try:
                tb.empty_pinned((10,), np.float32)
            except RuntimeError as error:
                report += " refused:" + str(error).split(":")[0]
            os.write(write, report.encode())
        finally:
            os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    report = os.read(read, 1000).decode()
    assert status == 0
    assert report == "False 0 0 refused:empty_pinned"
    keep[:] = 1  # the parent's pool is untouched
    del keep


def test_interpreter_exit_with_copies_in_flight():
    code = textwrap.dedent("""
        import os, numpy as np, tensorbridge as tb
        from standin.build import StandIn
        from device_producers import DeviceArray
        s = StandIn(os.environ["TENSORBRIDGE_LIBCUDA"])
        s.set_delay_us(100000, 200000)
        keep = [tb.to_numpy_async(DeviceArray(s, np.ones((256, 256), np.float32)))
                for _ in range(5)]
        dropped = [tb.to_numpy_async(DeviceArray(s, np.ones((64, 64)))) for _ in range(5)]
        del dropped
        print("exiting")
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(__file__),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "exiting"


@pytest.mark.parametrize("nbytes", [0, 100, 3 << 20])
@pytest.mark.parametrize("pinned_source", [False, True])
def test_host_to_device_through_staging(standin, nbytes, pinned_source):
    _core.set_staging_chunk_bytes(1 << 20)
    source = np.random.default_rng(1).integers(0, 255, nbytes, dtype=np.uint8)
    if pinned_source:
        pinned = tb.empty_pinned(source.shape, source.dtype)
        pinned[...] = source
        source = pinned
    address = standin.malloc(0, max(nbytes, 1))
    transfer = _core.copy_to_device(source, pinned_source, 0, address, nbytes, 1)
    assert transfer.wait(10.0) and transfer.error() == ""
    back = np.empty(nbytes, np.uint8)
    standin.read(back.ctypes.data, address, nbytes)
    np.testing.assert_array_equal(back, source)
    standin.free(address)
    del source


def test_cuda_available_never_raises_without_a_driver():
    code = ("import tensorbridge as tb; print(tb.cuda_available(), tb.pinned_memory_stats()); "
            "tb.empty_pinned((1,), 'f4')")
    env = dict(os.environ, TENSORBRIDGE_LIBCUDA="/nonexistent/libcuda.so.1")
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert result.stdout.startswith("False {'reserved_bytes': 0")
    assert ("RuntimeError: empty_pinned: pinned memory needs a usable CUDA driver: cannot load "
            "the CUDA driver /nonexistent/libcuda.so.1") in result.stderr


def test_device_memory_is_unreadable_from_the_host(standin):
    # What makes every test here a check that nothing reads device memory on
    # the host: the stand-in maps it with no access rights at all.
    x = DeviceArray(standin, values((4,)))
    with open("/proc/self/maps") as maps:
        for line in maps:
            span, permissions = line.split()[:2]
            low, high = (int(v, 16) for v in span.split("-"))
            if low <= x.address < high:
                assert permissions.startswith("---")
                return
    pytest.fail("the device allocation is not mapped")

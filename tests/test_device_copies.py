"""Device -> host copies against the stand-in driver, on both routes (any DLPack
producer through Python; the C exchange API copied in C): results, stream
order, never half-written, out=, streams, and what the host cannot read.

The stand-in's device memory is host memory mapped PROT_NONE, so any host
read of a device pointer crashes; copies run on stream threads with delays,
and every driver call is counted."""

import ctypes
import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from device_producers import CURRENT_STREAMS, DeviceArray, ExchangeDeviceArray, values
from helpers import fast_sample

import tensorbridge as tb
from tensorbridge import _core

SIZES = {"empty": (0, 3), "64 bytes": (4, 4), "1 row": (1, 1000), "5 MB": (1250, 1000)}


def test_driver_is_resolved_through_cuGetProcAddress_with_explicit_versions(standin):
    assert tb.cuda_available()
    assert _core.device_count() == 2
    assert _core.device_name(1) == "tensorbridge stand-in GPU 1"
    assert standin.version_asked("cuMemcpyDtoHAsync") == 12000
    assert standin.version_asked("cuMemcpyBatchAsync") == 12080


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dtype", fast_sample(["float32", "int8", "float64", "complex64"]))
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


@pytest.mark.parametrize("device", [False, True])
@pytest.mark.parametrize(("timeout", "error", "message"), [
    (-1, ValueError, r"timeout must be >= 0 or None, got -1"),
    (float("nan"), ValueError, r"timeout must be >= 0 or None, got nan"),
    ("1", TypeError, r"timeout must be a number of seconds or None, got '1'"),
    (True, TypeError, r"timeout must be a number of seconds or None, got True"),
])
def test_a_bad_timeout_is_refused_finished_or_not(standin, device, timeout, error, message):
    source = DeviceArray(standin, values((4,))) if device else np.arange(4.0)
    transfer = tb.to_numpy_async(source)
    with pytest.raises(error, match=r"^Transfer\.wait: " + message):
        transfer.wait(timeout=timeout)
    transfer.wait()


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

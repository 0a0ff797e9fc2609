"""The engine keeps the rules NVIDIA's cuda.h documents for each driver call,
and says what happened when the driver is unusable. Run against the
stand-in driver, which refuses what the real one refuses (and counts every
such call: the `standin` fixture fails a test that made one)."""

import ctypes
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from device_producers import CURRENT_STREAMS, DeviceArray, ExchangeDeviceArray
from helpers import fast_sample

import tensorbridge as tb
from tensorbridge import _core

HERE = os.path.dirname(__file__)
INVALID_VALUE = 1


def run_python(code, prelude=True, **env):
    """`code` in a fresh interpreter against the stand-in (with `env` set),
    after PRELUDE's imports and control panel `s` when `prelude`."""
    code = (PRELUDE if prelude else "") + textwrap.dedent(code)
    result = subprocess.run([sys.executable, "-c", code], cwd=HERE,
                            env=dict(os.environ, **env), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result


PRELUDE = """
import os, numpy as np, tensorbridge as tb
from tensorbridge import _core
from standin.build import StandIn
from device_producers import DeviceArray
s = StandIn(os.environ["TENSORBRIDGE_LIBCUDA"])
"""


# -- cuMemcpyBatchAsync: "Must not be legacy NULL stream" -----------------------

def small_batches(standin, n, Device=DeviceArray, device=0):
    return [Device(standin, np.full((1, 4), i, np.float32), device) for i in range(n)]


def test_batch_copies_on_the_legacy_stream_run_on_a_stream_of_ours(standin):
    # DeviceArray's current stream is the legacy one (handle 1).
    a = tb.collect(small_batches(standin, 300))
    np.testing.assert_array_equal(a[:, 0], np.arange(300))
    assert standin.calls("cuMemcpyBatchAsync") == 1
    assert standin.calls("cuMemcpyDtoHAsync") == 0
    assert standin.calls("cuStreamWaitEvent") == 2  # ours after the producer's, and back
    assert standin.misuses() == {}


def test_batch_copies_on_a_producers_own_stream_stay_there(standin):
    stream = standin.stream_create()
    CURRENT_STREAMS[0] = stream
    try:
        a = tb.collect(small_batches(standin, 300, ExchangeDeviceArray))
    finally:
        del CURRENT_STREAMS[0]
    np.testing.assert_array_equal(a[:, 0], np.arange(300))
    assert standin.calls("cuMemcpyBatchAsync") == 1
    assert standin.calls("cuStreamWaitEvent") == 0


def test_the_stand_in_refuses_a_batch_copy_on_the_legacy_stream(standin):
    # What makes the tests above worth something: the stand-in says no, as a
    # real driver (seen on 580.x) does.
    lib = ctypes.CDLL(os.environ["TENSORBRIDGE_LIBCUDA"])
    batch = lib.cuMemcpyBatchAsync
    batch.restype = ctypes.c_int
    size_t = ctypes.c_size_t
    dst, src, size, fail = size_t(0), size_t(0), size_t(4), size_t(0)
    attributes = (ctypes.c_int * 6)(1, 1, 0, 2, 0, 0)
    first = size_t(0)
    x = DeviceArray(standin, np.ones(1, np.float32))
    out = tb.empty_pinned(1, np.float32)
    dst, src = size_t(out.ctypes.data), size_t(x.address)
    for legacy in (0, 1):
        result = batch(ctypes.byref(dst), ctypes.byref(src), ctypes.byref(size), size_t(1),
                       attributes, ctypes.byref(first), size_t(1), ctypes.byref(fail),
                       ctypes.c_void_p(legacy))
        assert result == INVALID_VALUE
        assert fail.value == 2**64 - 1  # SIZE_MAX: the error is not one copy's
    assert standin.misuses() == {"misuse: cuMemcpyBatchAsync on the legacy stream": 2}
    standin.reset()  # those refusals were on purpose
    del out


# -- cuMemHostRegister / cuMemHostUnregister: what cuda.h refuses ------------------

HOST_MEMORY_ALREADY_REGISTERED, HOST_MEMORY_NOT_REGISTERED = 712, 713
NOT_SUPPORTED, INVALID_CONTEXT = 801, 201


def test_the_stand_in_refuses_what_cuda_h_refuses_of_host_registration(standin):
    # What makes the pin tests worth something: each refusal cuda.h documents.
    lib = ctypes.CDLL(os.environ["TENSORBRIDGE_LIBCUDA"])
    register, unregister = lib.cuMemHostRegister, lib.cuMemHostUnregister
    register.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint]
    unregister.argtypes = [ctypes.c_void_p]
    a = np.zeros(4096, np.uint8)
    base = a.ctypes.data
    assert tb.cuda_available()  # the driver loaded and initialised
    # (a test that made an unregistration fail on purpose leaves its bytes behind)
    registered_before = standin.registered_bytes()
    with _current_context():
        assert register(base, 0, 1) == INVALID_VALUE  # no bytes
        assert register(None, 16, 1) == INVALID_VALUE
        assert register(base, 16, 0x10) == INVALID_VALUE  # a flag cuda.h does not define
        assert register(base, 16, 0x4) == NOT_SUPPORTED  # I/O memory
        assert register(base, 16, 0x8) == NOT_SUPPORTED  # read-only: no device supports it
        assert register(base + 100, 100, 1) == 0  # any alignment: cuda.h asks for none
        for overlapping in ((base + 100, 100), (base + 50, 51), (base + 199, 1), (base, 4096)):
            assert register(*overlapping, 1) == HOST_MEMORY_ALREADY_REGISTERED
        pool = tb.empty_pinned(16, np.uint8)  # cuMemHostAlloc's memory is registered too
        assert register(pool.ctypes.data, 16, 1) == HOST_MEMORY_ALREADY_REGISTERED
        assert unregister(pool.ctypes.data) == HOST_MEMORY_NOT_REGISTERED
        assert unregister(base + 150) == HOST_MEMORY_NOT_REGISTERED  # not the base address
        assert unregister(None) == INVALID_VALUE
        assert unregister(base + 100) == 0
        assert unregister(base + 100) == HOST_MEMORY_NOT_REGISTERED  # twice
    assert register(base, 16, 1) == INVALID_CONTEXT  # no context current
    assert standin.registered_bytes() == registered_before
    assert standin.misuses() == {
        "misuse: cuMemHostRegister of no bytes": 2, "misuse: cuMemHostRegister flags": 1,
        "misuse: cuMemHostRegister of I/O memory": 1, "misuse: cuMemHostRegister read-only": 1,
        "misuse: cuMemHostRegister of memory already registered": 5,
        "misuse: cuMemHostUnregister of memory not registered": 3,
        "misuse: cuMemHostUnregister of NULL": 1, "misuse: no current context": 1}
    standin.reset()  # those refusals were on purpose
    del pool


def test_the_stand_in_sees_an_unregistration_under_a_copy_in_flight(standin):
    # What makes the pin lifetime tests worth something.
    lib = ctypes.CDLL(os.environ["TENSORBRIDGE_LIBCUDA"])
    lib.cuMemHostRegister.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint]
    lib.cuMemHostUnregister.argtypes = [ctypes.c_void_p]
    x = DeviceArray(standin, np.ones(1024, np.float32))
    a = np.zeros(1024, np.float32)
    gate = ctypes.c_int(0)
    with _current_context():
        assert lib.cuMemHostRegister(a.ctypes.data, a.nbytes, 1) == 0
        standin.enqueue_gate(None, ctypes.byref(gate))
        copy = lib.cuMemcpyDtoHAsync
        copy.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_void_p]
        assert copy(a.ctypes.data, x.address, a.nbytes, None) == 0  # queued behind the gate
        assert lib.cuMemHostUnregister(a.ctypes.data) == 0
        gate.value = 1
        standin.synchronize(None)
    assert standin.misuses() == {"misuse: cuMemHostUnregister with a copy in flight": 1}
    standin.reset()


class _current_context:
    """Device 0's primary context current on this thread, as the engine's
    DeviceGuard makes it, for calls made straight into the stand-in."""

    def __enter__(self):
        lib = ctypes.CDLL(os.environ["TENSORBRIDGE_LIBCUDA"])
        self.set = lib.cuCtxSetCurrent
        self.set.argtypes = [ctypes.c_void_p]
        context = ctypes.c_void_p()
        assert lib.cuDevicePrimaryCtxRetain(ctypes.byref(context), 0) == 0
        assert self.set(context) == 0

    def __exit__(self, *exc):
        self.set(None)


def test_batches_are_bounded(standin):
    n = 5000  # strided memory of 5000 separate runs: one packed copy of 5000 pieces
    expected = np.arange(4 * n, dtype=np.float32).reshape(n, 4)
    x = DeviceArray(standin, expected, shape=(n, 2), strides=(4, 1))
    _core.reset_packed_copy_counts()
    np.testing.assert_array_equal(tb.to_numpy(x), expected[:, :2])
    assert standin.largest_batch() <= _core.MAX_BATCH_COPIES
    assert standin.calls("cuMemcpyBatchAsync") == -(-n // _core.MAX_BATCH_COPIES)
    # the engine's own counters (read by the GPU one-shot's smoke stage) agree
    assert _core.packed_copy_counts() == {"batch_submissions": -(-n // _core.MAX_BATCH_COPIES),
                                          "batch_refusals": 0, "single_copies": 0}


def test_a_refused_batch_is_copied_one_by_one(standin):
    standin.fail("cuMemcpyBatchAsync", result=INVALID_VALUE)
    batches = small_batches(standin, 50)
    _core.reset_packed_copy_counts()
    a = tb.collect(batches)
    np.testing.assert_array_equal(a[:, 0], np.arange(50))
    assert standin.calls("cuMemcpyDtoHAsync") == 50
    assert _core.packed_copy_counts() == {"batch_submissions": 0, "batch_refusals": 1,
                                          "single_copies": 50}


def test_strided_device_memory_on_the_legacy_stream(standin):
    expected = np.arange(60, dtype=np.float32).reshape(6, 10)
    x = DeviceArray(standin, expected, shape=(6, 5), strides=(10, 2))
    np.testing.assert_array_equal(tb.to_numpy(x), expected[:, ::2])
    assert standin.calls("cuMemcpyBatchAsync") == 1


# -- entry points: only what is called is required -------------------------------

OPTIONAL = ["cuMemcpyBatchAsync", "cuStreamCreate", "cuStreamWaitEvent", "cuMemHostRegister",
            "cuMemHostUnregister"]


def test_entry_points_are_listed_with_the_versions_asked(standin):
    entries = {e["name"]: e for e in _core.driver_entry_points()}
    assert {name for name, e in entries.items() if e["optional"]} == set(OPTIONAL)
    assert all(e["resolved"] for e in entries.values())
    assert entries["cuMemcpyBatchAsync"]["version"] == 12080
    assert {e["version"] for name, e in entries.items() if name != "cuMemcpyBatchAsync"} == {12000}
    # Entry points that are never called are not asked for at all.
    for unused in ("cuStreamDestroy", "cuDevicePrimaryCtxRelease"):
        assert standin.version_asked(unused) == -1


def test_a_driver_without_the_optional_entry_points_still_copies():
    out = run_python("""
        print(tb.cuda_available())
        a = tb.collect(DeviceArray(s, np.full((1, 4), i, np.float32)) for i in range(100))
        assert (a[:, 0] == np.arange(100)).all()
        strided = DeviceArray(s, np.arange(20, dtype=np.float32).reshape(4, 5), shape=(4, 2),
                              strides=(5, 2))
        assert (tb.to_numpy(strided) == np.arange(20).reshape(4, 5)[:, :4:2]).all()
        print(s.calls("cuMemcpyBatchAsync"), s.calls("cuMemcpyDtoHAsync"), s.misuses())
    """, STANDIN_MISSING=",".join(OPTIONAL)).stdout.split("\n")
    assert out[0] == "True"
    assert out[1] == "0 108 {}"


def test_a_legacy_stream_without_our_own_stream_copies_one_by_one():
    out = run_python("""
        a = tb.collect([DeviceArray(s, np.full((1, 4), i, np.float32)) for i in range(40)])
        assert (a[:, 0] == np.arange(40)).all()
        print(s.calls("cuMemcpyBatchAsync"), s.calls("cuMemcpyDtoHAsync"), s.misuses())
    """, STANDIN_MISSING="cuStreamCreate").stdout.strip()
    assert out == "0 40 {}"


def test_a_driver_lacking_a_required_entry_point_is_unusable_and_says_which():
    out = run_python("""
        import json, tensorbridge as tb
        print(json.dumps(tb.cuda_status()))
    """, STANDIN_MISSING="cuMemcpyDtoHAsync,cuEventQuery").stdout
    import json

    status = json.loads(out)
    assert status["available"] is False
    assert "lacks cuMemcpyDtoHAsync, cuEventQuery for CUDA 12.0" in status["reason"]
    assert "update the NVIDIA driver" in status["reason"]


# -- cuda_status() and what users read without a usable driver -------------------

NO_DEVICE = dict(STANDIN_INIT_RESULT="100", STANDIN_DRIVER_VERSION="12020")


def test_cuda_status_of_a_driver_without_a_device():
    library = os.environ["TENSORBRIDGE_LIBCUDA"]
    out = run_python("""
        import json, tensorbridge as tb
        print(json.dumps(tb.cuda_status()), tb.cuda_available())
    """, **NO_DEVICE).stdout
    import json

    status, available = out.rsplit(" ", 1)
    assert available.strip() == "False"
    assert json.loads(status) == {
        "available": False, "library": library, "driver_version": "12.2", "device_count": 0,
        "reason": f"driver 12.2 loaded from {library}, but cuInit says CUDA_ERROR_NO_DEVICE "
                  "(no CUDA-capable device is detected)"}


def test_cuda_status_without_a_library():
    out = run_python("""
        import json, tensorbridge as tb
        print(json.dumps(tb.cuda_status()))
    """, prelude=False, TENSORBRIDGE_LIBCUDA="/nonexistent/libcuda.so.1").stdout
    import json

    status = json.loads(out)
    assert status["available"] is False and status["library"] is None
    assert status["driver_version"] is None and status["device_count"] == 0
    assert status["reason"].startswith("cannot load the CUDA driver /nonexistent/libcuda.so.1: ")


def test_cuda_status_when_available(standin):
    status = tb.cuda_status()
    assert status == {"available": True, "library": os.environ["TENSORBRIDGE_LIBCUDA"],
                      "driver_version": "12.8", "device_count": 2, "reason": ""}


def test_every_message_says_why_cuda_is_unusable():
    reason = "cuInit says CUDA_ERROR_NO_DEVICE (no CUDA-capable device is detected)"
    out = run_python("""
        def attempt(call):
            try:
                call()
            except Exception as error:
                print(type(error).__name__, "|", error)
        attempt(lambda: tb.empty_pinned(4, "f4"))
        x = DeviceArray(s, np.ones(3, np.float32))
        attempt(lambda: tb.to_numpy(x))
        attempt(lambda: tb.to_numpy_async(x))
        attempt(lambda: tb.collect([x]))
        print(tb.pinned_memory_stats())
    """, **NO_DEVICE).stdout.strip().split("\n")
    assert out[0].startswith("RuntimeError | empty_pinned: pinned memory needs a usable CUDA "
                             "driver: driver 12.2 loaded from ")
    for line, caller in zip(out[1:4], ["to_numpy", "to_numpy", "collect: batch 0"]):
        kind, message = line.split(" | ")
        assert kind == "BufferError", line
        assert message.startswith(f"{caller}: this DeviceArray holds CUDA memory (device 0), but "
                                  "CUDA is unusable here: driver 12.2 loaded from "), line
        assert message.endswith(reason), line
    assert out[4] == str(dict.fromkeys(["reserved_bytes", "in_use_bytes", "cached_bytes",
                                        "peak_bytes", "limit_bytes", "alloc_count",
                                        "hit_count", "registered_bytes"], 0))


# -- pinned memory: the copying device's context, allocation outside the lock ----

def test_copies_on_one_device_never_touch_another_devices_context():
    out = run_python("""
        x = DeviceArray(s, np.ones((300, 300), np.float32), device=1)
        assert (tb.to_numpy(x) == 1).all()
        assert (tb.to_numpy_async(x).wait() == 1).all()
        assert (tb.collect([x, x]) == 1).all()
        print(s.calls("cuDevicePrimaryCtxRetain on device 0"),
              s.calls("cuMemHostAlloc on device 0"), s.calls("cuMemHostAlloc on device 1") > 0)
    """).stdout.strip()
    assert out == "0 0 True"


def test_slow_pinned_allocations_do_not_hold_the_pool(standin):
    tb.empty_pinned_cache()
    gate = ctypes.c_int(0)
    standin.gate_allocations(ctypes.byref(gate))
    made = []
    allocating = threading.Thread(target=lambda: made.append(tb.empty_pinned(1 << 20, np.uint8)))
    allocating.start()
    try:
        while standin.allocating() == 0:
            time.sleep(0.001)
        # Another thread's look at the pool goes ahead while the allocation
        # is under way (it waited for the allocation when the pool's lock
        # was held across cuMemHostAlloc).
        looking = threading.Thread(target=tb.pinned_memory_stats)
        looking.start()
        looking.join(30)
        stuck = looking.is_alive()
        still_allocating = standin.allocating() == 1
    finally:
        gate.value = 1
        allocating.join()
        standin.gate_allocations(None)
    assert not stuck and still_allocating
    assert made[0].nbytes == 1 << 20
    assert tb.pinned_memory_stats()["in_use_bytes"] >= 1 << 20
    del made[:]


def test_concurrent_allocations_respect_the_limit(standin):
    tb.empty_pinned_cache()
    tb.set_pinned_memory_limit(3 << 20)
    gate = ctypes.c_int(0)
    standin.gate_allocations(ctypes.byref(gate))
    results = []

    def allocate():
        try:
            results.append(tb.empty_pinned(2 << 20, np.uint8))
        except MemoryError as error:
            results.append(error)

    threads = [threading.Thread(target=allocate) for _ in range(2)]
    for thread in threads:
        thread.start()
    while len(results) + standin.allocating() < 2:
        time.sleep(0.001)
    gate.value = 1
    for thread in threads:
        thread.join()
    standin.gate_allocations(None)
    assert sorted(type(r).__name__ for r in results) == ["MemoryError", "ndarray"]
    del results[:]


# -- waits: sleeping, interruptible, and nothing left behind ---------------------

def test_waits_sleep_on_blocking_sync_events(standin):
    standin.set_delay_us(20000, 20000)
    x = DeviceArray(standin, np.ones((256, 256), np.float32))
    tb.to_numpy(x)
    tb.to_numpy_async(x).wait()
    assert standin.calls("cuEventSynchronize") > 0
    assert standin.calls("spinning cuEventSynchronize") == 0
    # Polls for 20 us, then sleeps: a spin through the 20 ms copies would
    # query tens of thousands of times.
    assert standin.calls("cuEventQuery") < 2000


@pytest.mark.parametrize("how", fast_sample(["Transfer.wait", "to_numpy", "to_numpy exchange",
                                             "collect", "collect small", "to_numpy strided"],
                                            keep=2))
def test_ctrl_c_interrupts_a_wait_and_the_copy_completes_behind_it(how):
    out = run_python(f"""
        import ctypes, gc, threading, _thread
        from device_producers import ExchangeDeviceArray
        how = {how!r}
        Device = ExchangeDeviceArray if how == "to_numpy exchange" else DeviceArray
        expected = np.arange(300_000, dtype=np.float32)
        if how == "collect small":  # packed copies of many small batches
            x = [Device(s, expected[i * 1000:(i + 1) * 1000]) for i in range(50)]
        elif how == "to_numpy strided":  # packed copies of the runs
            x = Device(s, expected.reshape(1000, 300), shape=(1000, 150), strides=(300, 1))
        else:
            x = Device(s, expected)
        gate = ctypes.c_int(0)
        s.enqueue_gate(None, ctypes.byref(gate))  # the stream stops here until the gate opens
        threading.Timer(0.3, _thread.interrupt_main).start()
        queries = s.calls("cuEventQuery")
        try:
            if how == "Transfer.wait":
                transfer = tb.to_numpy_async(x)
                transfer.wait()
            elif how == "collect":
                tb.collect([x, x, x])
            elif how == "collect small":
                tb.collect(x)
            else:
                tb.to_numpy(x)
            print("not interrupted")
        except KeyboardInterrupt:
            print("interrupted")
        print(s.calls("cuEventQuery") - queries < 2000, s.calls("spinning cuEventSynchronize"))
        if how != "to_numpy exchange":
            del x  # the copy in flight keeps its source alive (freed at once otherwise)
            gc.collect()
        gate.value = 1
        if how == "Transfer.wait":
            assert (transfer.wait() == expected).all()
        _core.wait_for_all_transfers()
        tb._transfer.release_finished()
        print(tb.pinned_memory_stats()["in_use_bytes"], s.misuses())
    """).stdout.split("\n")
    assert out[:3] == ["interrupted", "True 0", "0 {}"]


def test_a_transfer_dropped_inside_a_garbage_collection_of_a_sweep_is_kept():
    # Transfer.__del__ may run inside any allocation, a sweep of the dropped
    # transfers included: it must neither deadlock nor lose the entry.
    out = run_python("""
        import ctypes, gc
        from tensorbridge import _transfer
        gate = ctypes.c_int(0)
        x = DeviceArray(s, np.ones(1000, np.float32))
        s.enqueue_gate(None, ctypes.byref(gate))
        cycle = [tb.to_numpy_async(x)]
        cycle.append(cycle)
        del cycle

        class CollectsWhenAsked:
            def done(self):
                gc.collect()  # runs the cycle's Transfer.__del__ inside the sweep
                return True

        _transfer.keep_alive_until_done(CollectsWhenAsked(), None)
        gc.disable()
        _transfer.release_finished()
        print(len(_transfer._in_flight))
        gate.value = 1
        _core.wait_for_all_transfers()
        _transfer.release_finished()
        print(len(_transfer._in_flight))
    """).stdout.split()
    assert out == ["1", "0"]


def test_a_failing_device_guard_in_the_completion_thread_releases_its_block(standin):
    first, second = (DeviceArray(standin, np.ones((64, 64), np.float32)) for _ in range(2))
    gate = ctypes.c_int(0)
    other = standin.stream_create()
    standin.enqueue_gate(other, ctypes.byref(gate))
    # Every completion thread waits on the gated stream, so the next job queues.
    held = [tb.to_numpy_async(first, stream=other) for _ in range(4)]
    while standin.calls("cuEventSynchronize") < 4:
        time.sleep(0.001)
    late = tb.to_numpy_async(second)
    standin.fail("cuCtxGetCurrent")  # the next device guard, a completion thread's, fails
    gate.value = 1
    with pytest.raises(RuntimeError, match="cuCtxGetCurrent failed"):
        late.wait()
    for transfer in held:
        transfer.wait()
    _core.wait_for_all_transfers()
    assert tb.pinned_memory_stats()["in_use_bytes"] == 0


def test_calls_after_a_sticky_error_fail_cleanly(standin):
    x = DeviceArray(standin, np.ones((100, 100), np.float32))
    standin.set_sticky(700)
    # The probe fails too: each call says CUDA is unusable, with the driver's error.
    for attempt, error, message in (
            (lambda: tb.to_numpy(x), BufferError, "to_numpy: .+ CUDA is unusable here"),
            (lambda: tb.to_numpy_async(x).wait(), BufferError, "to_numpy: .+ CUDA is unusable"),
            (lambda: tb.collect([x, x]), BufferError, "collect: batch 0: .+ CUDA is unusable"),
            (lambda: tb.empty_pinned(10, "f4"), RuntimeError,
             "empty_pinned: pinned memory needs a usable CUDA driver")):
        with pytest.raises(error, match=f"{message}.+CUDA_ERROR_ILLEGAL_ADDRESS"):
            attempt()
    assert "CUDA_ERROR_ILLEGAL_ADDRESS" in tb.cuda_status()["reason"]
    standin.set_sticky(0)
    assert tb.pinned_memory_stats()["in_use_bytes"] == 0


@pytest.mark.slow  # a fresh interpreter
def test_the_interpreter_waits_for_copies_in_flight_at_exit():
    result = run_python("""
        s.set_delay_us(300000, 300000)
        kept = tb.to_numpy_async(DeviceArray(s, np.ones((256, 256), np.float32)))
        print("exiting")
    """, STANDIN_REPORT_EXIT="1")
    assert result.stdout.strip() == "exiting"
    assert "standin: 0 stream tasks in flight at exit" in result.stderr


def test_a_refused_request_keeps_the_cache(standin):
    tb.empty_pinned_cache()
    del_me = tb.empty_pinned(1 << 20, np.uint8)
    del del_me  # its block is cached now
    cached = tb.pinned_memory_stats()["cached_bytes"]
    assert cached >= 1 << 20
    tb.set_pinned_memory_limit(cached + (1 << 20))
    frees = standin.calls("cuMemFreeHost")
    with pytest.raises(MemoryError, match="pinned memory limit reached"):
        tb.empty_pinned(8 << 20, np.uint8)  # dropping the cache would not make room
    assert tb.pinned_memory_stats()["cached_bytes"] == cached
    assert standin.calls("cuMemFreeHost") == frees


def test_pool_events_are_destroyed_in_their_own_context(standin):
    # A block cached from a copy on device 1 is reused for one on device 0,
    # and goes back with device 0's event.
    x = DeviceArray(standin, np.ones((256, 256), np.float32), device=1)
    tb.to_numpy(x)
    nbytes = 1 << 20
    address = standin.malloc(0, nbytes)
    transfer = _core.copy_to_device(np.ones(nbytes, np.uint8), False, 0, address, nbytes, 1)
    assert transfer.wait(30.0) and transfer.error() == ""
    tb.pinned_memory_stats()  # collects the completed events
    assert standin.calls("cuEventDestroy") > 0
    standin.free(address)


class ForeignStream:
    """A CuPy-like stream of device 1."""
    device_id = 1
    ptr = 0


def test_a_stream_of_another_device_is_refused(standin):
    x = DeviceArray(standin, np.ones(4, np.float32), device=0)
    for call in (tb.to_numpy, tb.to_numpy_async):
        with pytest.raises(ValueError, match="stream is on cuda:1, but the memory is on cuda:0"):
            call(x, stream=ForeignStream())


@pytest.mark.slow  # a fresh interpreter
def test_ctrl_c_works_when_tensorbridge_was_imported_in_a_thread():
    out = run_python("""
        import ctypes, threading, _thread
        imported = threading.Thread(target=lambda: __import__("tensorbridge"))
        imported.start(); imported.join()
        import numpy as np, tensorbridge as tb, os
        from standin.build import StandIn
        from device_producers import DeviceArray
        s = StandIn(os.environ["TENSORBRIDGE_LIBCUDA"])
        x = DeviceArray(s, np.ones(300_000, np.float32))
        gate = ctypes.c_int(0)
        s.enqueue_gate(None, ctypes.byref(gate))
        threading.Timer(0.3, _thread.interrupt_main).start()
        try:
            tb.to_numpy(x)
            print("not interrupted")
        except KeyboardInterrupt:
            print("interrupted")
        gate.value = 1
    """, prelude=False).stdout.split()
    assert out == ["interrupted"]


"""tb.pin: arrays page-locked in place (against the stand-in driver). Copies
into and out of them go direct, with no staging; their registration outlives
every copy in flight that uses it, whoever drops what first; a forked child
never unregisters its parent's pins; every refusal says why."""

import ctypes
import gc
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
from device_producers import DeviceArray, values
from helpers import refusal, report_from_a_forked_child

import tensorbridge as tb
from tensorbridge import _core

HERE = os.path.dirname(__file__)


def registered():
    return tb.pinned_memory_stats()["registered_bytes"]


def staged(standin):
    """Pool blocks taken so far (allocated or reused): staging, which a
    copy into a pinned array never needs."""
    return standin.calls("cuMemHostAlloc") + tb.pinned_memory_stats()["hit_count"]


class Gate:
    """Holds the legacy stream (the DeviceArrays' stream) until opened: the
    copies queued behind it stay in flight."""

    def __init__(self, standin, stream=None):
        self.flag = ctypes.c_int(0)
        standin.enqueue_gate(stream, ctypes.byref(self.flag))

    def open(self):
        self.flag.value = 1


@pytest.fixture
def gate(standin):
    """Closes a Gate on a stream (default: the legacy one); every gate is
    opened at the end, so that a failed test leaves no copy stuck."""
    gates = []

    def close(stream=None):
        gates.append(Gate(standin, stream))
        return gates[-1]

    yield close
    for made in gates:
        made.open()


def run_python(code, **env):
    """`code` in a fresh interpreter against the stand-in, with control panel `s`."""
    prelude = textwrap.dedent("""
        import gc, os, numpy as np, tensorbridge as tb
        from tensorbridge import _core
        from standin.build import StandIn
        from device_producers import DeviceArray
        s = StandIn(os.environ["TENSORBRIDGE_LIBCUDA"])
    """)
    result = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], cwd=HERE,
                            env=dict(os.environ, **env), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.split("\n")


# -- the direct path -------------------------------------------------------------

def test_a_copy_into_a_pinned_array_goes_direct_and_unpinning_ends_it(standin, Device):
    expected = values((300, 200))
    a = np.zeros(expected.shape, expected.dtype)
    handle = tb.pin(a)
    assert registered() == a.nbytes == handle.nbytes == standin.registered_bytes()
    assert standin.calls("cuMemHostRegister portable") == 1
    before = staged(standin)
    assert tb.to_numpy(Device(standin, expected), out=a) is a
    np.testing.assert_array_equal(a, expected)
    assert staged(standin) == before
    assert standin.calls("cuMemcpyDtoHAsync") == 1
    handle.close()
    assert handle.closed and registered() == 0 == standin.registered_bytes()
    assert standin.calls("cuMemHostUnregister") == 1
    handle.close()  # harmless
    assert standin.calls("cuMemHostUnregister") == 1
    # Unpinned, the same array is pageable again: staged, and still right.
    a[...] = 0
    tb.to_numpy(Device(standin, expected), out=a)
    np.testing.assert_array_equal(a, expected)
    assert staged(standin) > before


def test_any_view_inside_a_pinned_array_counts(standin):
    expected = values((100, 64))
    a = np.zeros((1000, 64), expected.dtype)
    with tb.pin(a):
        before = staged(standin)
        tb.to_numpy(DeviceArray(standin, expected), out=a[500:600])
        np.testing.assert_array_equal(a[500:600], expected)
        assert not a[:500].any() and not a[600:].any()
        # a view made from the raw address counts just the same
        raw = np.ctypeslib.as_array((ctypes.c_float * 6400).from_address(a[200:].ctypes.data))
        tb.to_numpy(DeviceArray(standin, expected.ravel()), out=raw)
        np.testing.assert_array_equal(a[200:300], expected)
        assert staged(standin) == before
        # a non-contiguous view goes through a contiguous temporary, as for any array
        tb.to_numpy(DeviceArray(standin, expected[:, :32]), out=a[:100, ::2])
        np.testing.assert_array_equal(a[:100, ::2], expected[:, :32])


def test_a_fortran_ordered_array_is_pinned_whole(standin):
    a = np.zeros((50, 40), np.float32, order="F")
    with tb.pin(a) as handle:
        assert handle.nbytes == a.nbytes == registered()
        before = staged(standin)
        expected = values((40, 50))
        tb.to_numpy(DeviceArray(standin, expected), out=a.T)  # C-ordered: straight in
        np.testing.assert_array_equal(a.T, expected)
        assert staged(standin) == before


def test_an_asynchronous_copy_into_a_pinned_array_returns_before_it_completes(standin, gate):
    expected = values((256, 256))
    a = np.zeros(expected.shape, expected.dtype)
    with tb.pin(a):
        held = gate()
        transfer = tb.to_numpy_async(DeviceArray(standin, expected), out=a)
        assert not transfer.done()
        assert tb.pinned_memory_stats()["in_use_bytes"] == 0  # no staging block
        held.open()
        assert transfer.wait() is a
    np.testing.assert_array_equal(a, expected)


@pytest.mark.parametrize("rows", [1, 100])  # packed batches of 256 B, separate ones of 25.6 KB
def test_collect_into_a_pinned_out_goes_direct(standin, Device, rows):
    batches = [Device(standin, np.full((rows, 64), i, np.float32)) for i in range(300)]
    out = np.zeros((300 * rows, 64), np.float32)
    with tb.pin(out):
        before = staged(standin)
        assert tb.collect(batches, out=out) is out
        assert staged(standin) == before
    np.testing.assert_array_equal(out[::rows, 0], np.arange(300))
    np.testing.assert_array_equal(out[:, 63], np.repeat(np.arange(300), rows))


def test_collect_of_small_batches_into_empty_pinned_goes_direct_too(standin):
    out = tb.empty_pinned((500, 16), np.float32)
    before = standin.calls("cuMemHostAlloc") + tb.pinned_memory_stats()["hit_count"]
    tb.collect([DeviceArray(standin, np.full((1, 16), i, np.float32)) for i in range(500)],
               out=out)
    np.testing.assert_array_equal(out[:, 0], np.arange(500))
    assert standin.calls("cuMemHostAlloc") + tb.pinned_memory_stats()["hit_count"] == before
    del out


def test_a_copy_to_the_device_from_a_pinned_array_goes_direct(standin, gate):
    # What to_device does once torch has made the tensor (torch has no CUDA here).
    a = values((512, 128))
    address = standin.malloc(0, a.nbytes)
    try:
        with tb.pin(a):
            before = staged(standin)
            held = gate()
            transfer = _core.copy_to_device(a.reshape(-1).view(np.uint8), False, 0, address,
                                            a.nbytes, 0)
            assert not transfer.done()  # enqueued, not staged: the source must stay pinned
            assert staged(standin) == before
            held.open()
            assert transfer.wait(30.0) and transfer.error() == ""
        back = np.empty_like(a)
        standin.read(back.ctypes.data, address, a.nbytes)
        np.testing.assert_array_equal(back, a)
    finally:
        standin.free(address)


# -- lifetimes: never unregistered under a copy in flight ---------------------------
#
# The stand-in counts an unregistration while a copy that uses the memory is
# queued as a misuse, which the `standin` fixture fails the test on.

@pytest.mark.parametrize("how", ["close", "with", "collected"])
def test_a_pin_ended_while_its_copy_is_in_flight_is_unpinned_after_it(standin, gate, how):
    expected = values((256, 256))
    a = np.zeros(expected.shape, expected.dtype)
    handle = tb.pin(a)
    held = gate()
    transfer = tb.to_numpy_async(DeviceArray(standin, expected), out=a)
    if how == "close":
        handle.close()
        assert handle.closed
    elif how == "with":
        with handle:
            pass
    else:
        del handle
        gc.collect()
    assert not transfer.done()
    assert standin.calls("cuMemHostUnregister") == 0
    assert registered() == a.nbytes  # still registered: the copy uses it
    # A closed pin takes no new copy: this one stages (behind the gate too).
    second = tb.to_numpy_async(DeviceArray(standin, expected), out=np.empty_like(a))
    assert tb.pinned_memory_stats()["in_use_bytes"] > 0
    with pytest.raises(ValueError, match="closed but still in use by copies in flight"):
        tb.pin(a)
    held.open()
    np.testing.assert_array_equal(transfer.wait(), expected)
    np.testing.assert_array_equal(second.wait(), expected)
    _core.wait_for_all_transfers()
    assert standin.calls("cuMemHostUnregister") == 1
    assert registered() == 0 == standin.registered_bytes()
    with tb.pin(a):  # free to be pinned again
        pass


def test_a_transfer_dropped_with_its_pin_keeps_both_until_it_completes(standin, gate):
    expected = values((128, 128))
    handle = tb.pin(np.zeros(expected.shape, expected.dtype))
    held = gate()
    tb.to_numpy_async(DeviceArray(standin, expected), out=handle.array)  # dropped at once
    del handle
    gc.collect()
    assert registered() > 0 and standin.calls("cuMemHostUnregister") == 0
    held.open()
    _core.wait_for_all_transfers()
    assert registered() == 0 and standin.calls("cuMemHostUnregister") == 1


def test_the_handle_keeps_its_array_alive(standin):
    handle = tb.pin(np.zeros((64, 64), np.float32))  # no other reference to the array
    gc.collect()
    expected = values((64, 64))
    tb.to_numpy(DeviceArray(standin, expected), out=handle.array)
    np.testing.assert_array_equal(handle.array, expected)
    assert registered() == handle.nbytes
    handle.close()


def test_a_copy_out_of_a_pinned_array_keeps_it_registered_until_done(standin, gate):
    a = values((256, 64))
    address = standin.malloc(0, a.nbytes)
    try:
        handle = tb.pin(a)
        held = gate()
        transfer = _core.copy_to_device(a.reshape(-1).view(np.uint8), False, 0, address,
                                        a.nbytes, 0)
        handle.close()
        assert registered() == a.nbytes and standin.calls("cuMemHostUnregister") == 0
        held.open()
        assert transfer.wait(30.0)
        _core.wait_for_all_transfers()
        assert registered() == 0
    finally:
        standin.free(address)


def test_an_interrupted_copy_keeps_the_pin_until_it_completes():
    out = run_python("""
        import ctypes, threading, _thread
        expected = np.arange(300_000, dtype=np.float32)
        a = np.zeros_like(expected)
        handle = tb.pin(a)
        gate = ctypes.c_int(0)
        s.enqueue_gate(None, ctypes.byref(gate))
        threading.Timer(0.3, _thread.interrupt_main).start()
        try:
            tb.to_numpy(DeviceArray(s, expected), out=a)
            print("not interrupted")
        except KeyboardInterrupt:
            print("interrupted")
        handle.close()
        del handle, a
        gc.collect()
        print(tb.pinned_memory_stats()["registered_bytes"], s.calls("cuMemHostUnregister"))
        gate.value = 1
        _core.wait_for_all_transfers()
        tb._transfer.release_finished()
        print(tb.pinned_memory_stats()["registered_bytes"], s.calls("cuMemHostUnregister"),
              s.misuses())
    """)
    assert out[:3] == ["interrupted", "1200000 0", "0 1 {}"]


# -- fork ----------------------------------------------------------------------------

def test_a_forked_child_never_unregisters_its_parents_pins(standin):
    a = np.zeros((256, 256), np.float32)
    handle = tb.pin(a)
    def child():  # its copy of the handle is inert
        nonlocal handle
        report = f"{registered()} {handle.closed}"
        handle.close()
        del handle
        gc.collect()
        report += f" {standin.register_calls_after_fork()}"
        return report + refusal(lambda: tb.pin(np.zeros(10)))

    assert report_from_a_forked_child(child) == "0 False 0 refused:pin"
    # The parent's pin is whole: registered, copies go direct, and it unpins.
    assert registered() == a.nbytes == standin.registered_bytes()
    before = staged(standin)
    expected = values((256, 256))
    tb.to_numpy(DeviceArray(standin, expected), out=a)
    np.testing.assert_array_equal(a, expected)
    assert staged(standin) == before
    handle.close()
    assert registered() == 0 and standin.calls("cuMemHostUnregister") == 1


# -- refusals -----------------------------------------------------------------------

@pytest.mark.parametrize(("make", "kind", "message"), [
    (lambda: [1.0, 2.0], TypeError, r"^pin: array must be a numpy.ndarray, got list"),
    (lambda: np.array([object()]), TypeError, r"^pin: array has dtype object, which holds Python"),
    (lambda: np.frombuffer(bytes(80)), ValueError,
     r"^pin: array is read-only; pin a writeable array \(copies write into it\)"),
    (lambda: np.zeros((10, 10))[:, ::2], ValueError,
     r"^pin: array of shape \(10, 5\) and strides \(80, 16\) is not contiguous; pin the "
     r"contiguous array it is a view of"),
    (lambda: np.zeros((0, 4)), ValueError, r"^pin: array of shape \(0, 4\) is empty"),
])
def test_arrays_that_cannot_be_pinned_are_refused_before_the_driver(standin, make, kind, message):
    with pytest.raises(kind, match=message):
        tb.pin(make())
    assert standin.calls("cuMemHostRegister") == 0 and registered() == 0


def test_memory_already_pinned_is_refused_naming_both_ranges(standin):
    a = np.zeros(4096, np.uint8)
    with tb.pin(a[1024:3072]):
        start = a[1024:].ctypes.data
        for overlapping in (a[1024:3072], a[2000:2100], a[:1025], a[3071:], a):
            with pytest.raises(ValueError, match=rf"^pin: the memory 0x{overlapping.ctypes.data:x} "
                               rf"\({overlapping.nbytes} bytes\) overlaps memory already pinned "
                               rf"in place, 0x{start:x} \(2048 bytes\); close that pin first"):
                tb.pin(overlapping)
        with tb.pin(a[:1024]), tb.pin(a[3072:]):  # the bytes either side are free
            assert registered() == 4096
        assert registered() == 2048
    pool = tb.empty_pinned(100, np.float32)
    with pytest.raises(ValueError, match=r"^pin: array is in memory of tensorbridge's pinned "
                                         r"pool \(from empty_pinned\), which is pinned already"):
        tb.pin(pool[10:])
    del pool
    assert standin.calls("cuMemHostRegister") == 3 and registered() == 0


def test_threads_pinning_one_array_at_once_pin_it_once(standin):
    a = np.zeros(1 << 20, np.uint8)
    results = []
    start = threading.Barrier(4)

    def attempt():
        start.wait()
        try:
            results.append(tb.pin(a))
        except ValueError as error:
            results.append(error)

    threads = [threading.Thread(target=attempt) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    handles = [r for r in results if isinstance(r, tb.PinHandle)]
    assert len(results) == 4 and len(handles) == 1, results
    assert all("overlaps memory already pinned in place" in str(r) for r in results
               if r is not handles[0])
    assert standin.calls("cuMemHostRegister") == 1 and registered() == a.nbytes
    handles[0].close()


def test_driver_failures_are_reported_and_leave_nothing_registered(standin):
    a = np.zeros(1000, np.float32)
    standin.fail("cuMemHostRegister", result=2)
    with pytest.raises(RuntimeError, match=r"^pin: cuMemHostRegister failed: "
                                           r"CUDA_ERROR_OUT_OF_MEMORY \(out of memory\)$"):
        tb.pin(a)
    assert registered() == 0
    handle = tb.pin(a)  # the range was not left taken
    standin.fail("cuMemHostUnregister", result=999)
    with pytest.raises(RuntimeError, match=r"^PinHandle.close: cuMemHostUnregister failed: "
                                           r"CUDA_ERROR_UNKNOWN"):
        handle.close()
    assert handle.closed and registered() == 0  # forgotten: there is nothing more to do


NO_DEVICE = dict(STANDIN_INIT_RESULT="100", STANDIN_DRIVER_VERSION="12020")


def test_pin_without_a_usable_driver_says_cuda_and_why():
    out = run_python("""
        try:
            tb.pin(np.zeros(10))
        except RuntimeError as error:
            print(error)
        print(tb.pinned_memory_stats()["registered_bytes"])
    """, **NO_DEVICE)
    assert out[0].startswith("pin: pinning memory needs a usable CUDA driver: driver 12.2 "
                             "loaded from ")
    assert "but cuInit says CUDA_ERROR_NO_DEVICE (no CUDA-capable device is detected)" in out[0]
    assert out[1] == "0"


def test_a_driver_without_the_entry_points_refuses_pin_and_nothing_else():
    out = run_python("""
        a = np.zeros((100, 100), np.float32)
        try:
            tb.pin(a)
        except RuntimeError as error:
            print(error)
        print(tb.cuda_available(), tb.pinned_memory_stats()["registered_bytes"])
        expected = np.arange(10_000, dtype=np.float32).reshape(100, 100)
        assert (tb.to_numpy(DeviceArray(s, expected), out=a) == expected).all()
        assert (tb.collect([DeviceArray(s, expected[:1])] * 3) == expected[0]).all()
        print(s.calls("cuMemHostRegister"), s.misuses())
    """, STANDIN_MISSING="cuMemHostUnregister")
    library = os.environ["TENSORBRIDGE_LIBCUDA"]
    assert out[0] == (f"pin: the CUDA driver loaded from {library} lacks cuMemHostUnregister, "
                      "which pinning in place needs; update the NVIDIA driver, or copy into "
                      "tensorbridge.empty_pinned memory instead")
    assert out[1:3] == ["True 0", "0 {}"]


def test_pinning_for_copies_on_one_device_never_touches_another_devices_context():
    out = run_python("""
        expected = np.ones((300, 300), np.float32)
        x = DeviceArray(s, expected, device=1)
        assert (tb.to_numpy(x) == 1).all()  # device 1's context is the one retained
        a = np.zeros_like(expected)
        with tb.pin(a):
            assert (tb.to_numpy(x, out=a) == 1).all()
        print(s.calls("cuDevicePrimaryCtxRetain on device 0"), s.calls("cuMemHostUnregister"))
    """)
    assert out[0] == "0 1"


def test_repr_and_stats_keys(standin):
    a = np.zeros((4, 8), np.float64)
    handle = tb.pin(a)
    assert repr(handle) == "<tensorbridge.PinHandle of (4, 8) float64, 256 bytes, pinned>"
    assert handle.array is a
    handle.close()
    assert repr(handle).endswith("256 bytes, closed>")
    assert set(tb.pinned_memory_stats()) == {
        "reserved_bytes", "in_use_bytes", "cached_bytes", "peak_bytes", "limit_bytes",
        "alloc_count", "hit_count", "registered_bytes"}

"""Transfer as a concurrent.futures.Future and an awaitable, against the
stand-in driver: copies held behind a gate on their stream until the test
opens it, so that "not yet" and "then" are both seen, with no timing."""

import asyncio
import concurrent.futures
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
from helpers import report_from_a_forked_child

import tensorbridge as tb
from tensorbridge import _core, _transfer

PATIENCE = 30  # seconds: a bound on waits that end at once when the code is right


@pytest.fixture
def gate(standin):
    """gate(stream=None): stop `stream` (the legacy one by default) until the
    returned gate's value is set to 1; every gate opens when the test ends."""
    gates = []

    def close(stream=None):
        gates.append(ctypes.c_int(0))
        standin.enqueue_gate(stream, ctypes.byref(gates[-1]))
        return gates[-1]

    yield close
    for g in gates:
        g.value = 1


def gated_copy(standin, gate, shape=(64, 64), seed=0):
    """(transfer, expected, gate): a copy held until the gate opens."""
    expected = values(shape, seed=seed)
    x = DeviceArray(standin, expected)
    opened = gate()
    return tb.to_numpy_async(x), expected, opened


def test_a_transfer_is_a_future_that_is_never_cancelled(standin, gate):
    transfer, expected, opened = gated_copy(standin, gate)
    assert isinstance(transfer, concurrent.futures.Future)
    assert not transfer.done() and transfer.running()
    assert transfer.cancel() is False and not transfer.cancelled()
    opened.value = 1
    np.testing.assert_array_equal(transfer.result(timeout=PATIENCE), expected)
    assert transfer.done() and not transfer.running() and not transfer.cancelled()
    assert transfer.exception() is None
    with pytest.raises(RuntimeError, match="completed by its copy only"):
        transfer.set_result(np.zeros(1))


def test_timeouts_are_the_builtin_timeout_error_and_the_futures_one(standin, gate):
    transfer, _, opened = gated_copy(standin, gate)
    for wait in (transfer.result, transfer.wait, transfer.exception):
        with pytest.raises(TimeoutError, match="did not finish within 0.01 s") as caught:
            wait(timeout=0.01)
        # one class on Python >= 3.11; on 3.10 an instance of both
        assert isinstance(caught.value, concurrent.futures.TimeoutError)
    opened.value = 1
    assert transfer.exception(timeout=PATIENCE) is None


def test_callbacks_run_on_another_thread_once_the_copy_has_completed(standin, gate):
    transfer, expected, opened = gated_copy(standin, gate)
    calls, called = [], threading.Event()

    def callback(t):
        calls.append((t, threading.current_thread(), t.result(timeout=0)))
        if len(calls) == 2:
            called.set()

    # added from another thread than the one that will run it, and this one
    adder = threading.Thread(target=transfer.add_done_callback, args=(callback,))
    adder.start()
    adder.join()
    transfer.add_done_callback(callback)
    assert not called.wait(0.05) and calls == []  # held behind the gate
    opened.value = 1
    assert called.wait(PATIENCE)
    for t, thread, array in calls:
        assert t is transfer and thread not in (threading.main_thread(), adder)
        np.testing.assert_array_equal(array, expected)
    # Complete: a new callback runs at once, in the caller's thread.
    later = []
    transfer.add_done_callback(lambda t: later.append(threading.current_thread()))
    assert later == [threading.current_thread()]


def test_a_dropped_transfer_still_runs_its_callbacks(standin, gate):
    expected = values((32, 32))
    got, called = [], threading.Event()
    x = DeviceArray(standin, expected)
    opened = gate()
    tb.to_numpy_async(x).add_done_callback(lambda t: (got.append(t.result()), called.set()))
    del x
    gc.collect()
    opened.value = 1
    assert called.wait(PATIENCE)
    np.testing.assert_array_equal(got[0], expected)


def test_an_already_finished_transfer_is_a_complete_future():
    a = np.arange(5.0)
    transfer = tb.to_numpy_async(a)
    assert transfer.done() and not transfer.running() and transfer.exception() is None
    assert transfer.result(timeout=0) is a
    seen = []
    transfer.add_done_callback(lambda t: seen.append((threading.current_thread(), t.result())))
    assert seen == [(threading.current_thread(), a)]  # at once, in this thread
    assert concurrent.futures.wait([transfer], timeout=0).done == {transfer}
    assert list(concurrent.futures.as_completed([transfer], timeout=0)) == [transfer]
    assert asyncio.run(_awaited(transfer)) is a


async def _awaited(transfer):
    return await transfer


def test_futures_wait_and_as_completed_follow_the_copies(standin, gate):
    held_stream = standin.stream_create()
    opened = gate(held_stream)
    slow_values, fast_values = values((64, 64), seed=1), values((64, 64), seed=2)
    slow = tb.to_numpy_async(DeviceArray(standin, slow_values), stream=held_stream)
    fast = tb.to_numpy_async(DeviceArray(standin, fast_values))  # the legacy stream, open
    done, not_done = concurrent.futures.wait(
        [slow, fast], timeout=PATIENCE, return_when=concurrent.futures.FIRST_COMPLETED)
    assert done == {fast} and not_done == {slow}
    order = concurrent.futures.as_completed([slow, fast], timeout=PATIENCE)
    assert next(order) is fast
    opened.value = 1
    assert next(order) is slow
    done, not_done = concurrent.futures.wait([slow, fast], timeout=PATIENCE)
    assert done == {slow, fast} and not not_done
    np.testing.assert_array_equal(slow.result(), slow_values)
    np.testing.assert_array_equal(fast.result(), fast_values)


def test_a_failed_copy_is_the_futures_exception(standin):
    x = DeviceArray(standin, values((64, 64)))
    standin.fail("cuEventSynchronize", result=999)  # the completion thread's wait fails
    transfer = tb.to_numpy_async(x)
    done, _ = concurrent.futures.wait([transfer], timeout=PATIENCE,
                                      return_when=concurrent.futures.FIRST_EXCEPTION)
    assert done == {transfer}
    error = transfer.exception()
    assert isinstance(error, RuntimeError)
    assert str(error).startswith("Transfer.wait: the device copy failed: cuEventSynchronize")
    with pytest.raises(RuntimeError) as raised:
        transfer.result()
    assert raised.value is error  # one error, as concurrent.futures gives
    with pytest.raises(RuntimeError, match="device copy failed"):
        asyncio.run(_awaited(transfer))
    standin.reset()  # the staging block the failure retired is not a misuse


def test_await_never_blocks_the_event_loop(standin, gate):
    # The copy completes only once another task on the same loop has run and
    # opened its gate: an await that blocked the loop would never return
    # (the timer opens it after PATIENCE, and the ticks show who did).
    transfer, expected, opened = gated_copy(standin, gate, (256, 256))
    fallback = threading.Timer(PATIENCE, lambda: setattr(opened, "value", 1))
    fallback.start()

    async def ticker(ticks):
        while len(ticks) < 20:
            ticks.append(transfer.done())
            await asyncio.sleep(0.001)
        opened.value = 1

    async def main():
        ticks = []
        other = asyncio.create_task(ticker(ticks))
        array = await transfer
        await other
        return array, ticks

    try:
        array, ticks = asyncio.run(main())
    finally:
        fallback.cancel()
    assert ticks == [False] * 20  # the loop ran the ticker while the copy was held
    np.testing.assert_array_equal(array, expected)


def test_a_cancelled_await_leaves_the_copy_to_finish_in_the_background(standin, gate):
    expected = values((128, 128))
    x = DeviceArray(standin, expected)
    out = np.zeros_like(expected)
    opened = gate()

    async def main():
        task = asyncio.create_task(_awaited(tb.to_numpy_async(x, out=out)))
        await asyncio.sleep(0.01)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())  # and the loop closes, the copy still held
    gc.collect()
    assert x.exported == 1  # the Transfer nobody holds keeps the source's capsule
    opened.value = 1
    _core.wait_for_all_transfers()
    np.testing.assert_array_equal(out, expected)
    for _ in range(1000):  # let go of once the notifier has seen the copy complete
        gc.collect()
        if x.exported == 0:
            break
        threading.Event().wait(PATIENCE / 1000)
    assert x.exported == 0


def test_a_forked_child_leaves_the_parents_notifier_alone(standin, gate):
    transfer, _, opened = gated_copy(standin, gate)  # the parent's notifier is running
    assert _transfer._notifier is not None and _transfer._watched
    def child():
        finished = tb.to_numpy_async(np.ones(2))
        seen = []
        finished.add_done_callback(seen.append)
        return (f"{_transfer._notifier} {len(_transfer._watched)} {seen == [finished]} "
                f"{asyncio.run(_awaited(finished)).tolist()}")

    assert report_from_a_forked_child(child) == "None 0 True [1.0, 1.0]"
    opened.value = 1
    transfer.wait()


@pytest.mark.slow  # a fresh interpreter
def test_callbacks_due_at_interpreter_exit_run_before_it():
    code = textwrap.dedent("""
        import os, numpy as np, tensorbridge as tb
        from standin.build import StandIn
        from device_producers import DeviceArray
        s = StandIn(os.environ["TENSORBRIDGE_LIBCUDA"])
        s.set_delay_us(100000, 200000)
        for i in range(3):
            tb.to_numpy_async(DeviceArray(s, np.full((64, 64), i, np.float32))).add_done_callback(
                lambda t: print("copied", t.result()[0, 0]))
        print("exiting")
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(__file__),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.splitlines()) == [
        "copied 0.0", "copied 1.0", "copied 2.0", "exiting"], result.stdout + result.stderr


@pytest.mark.gpu
def test_on_a_gpu_a_transfer_is_awaited_waited_for_and_called_back():
    torch = pytest.importorskip("torch")
    x = torch.arange(1 << 22, dtype=torch.float32, device="cuda")
    expected = np.arange(1 << 22, dtype=np.float32)
    called = threading.Event()
    transfer = tb.to_numpy_async(x)
    transfer.add_done_callback(lambda t: called.set())
    np.testing.assert_array_equal(asyncio.run(_awaited(transfer)), expected)
    assert called.wait(PATIENCE)
    others = [tb.to_numpy_async(x) for _ in range(3)]
    assert set(concurrent.futures.as_completed(others, timeout=PATIENCE)) == set(others)

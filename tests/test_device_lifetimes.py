"""What outlives a call (against the stand-in driver): sources deleted while
their copy runs, transfers dropped unawaited, threads, fork, interpreter exit."""

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
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
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
    def child():
        stats = tb.pinned_memory_stats()
        return (f"{tb.cuda_available()} {stats['in_use_bytes']} {stats['reserved_bytes']}"
                + refusal(lambda: tb.empty_pinned((10,), np.float32)))

    assert report_from_a_forked_child(child) == "False 0 0 refused:empty_pinned"
    keep[:] = 1  # the parent's pool is untouched
    del keep


@pytest.mark.slow  # a fresh interpreter
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

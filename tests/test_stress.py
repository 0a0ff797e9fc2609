"""Threads converting, collecting and dropping transfers at once, for a bounded
time, against the stand-in driver with random delays. Run under
ThreadSanitizer by .ci/run (TENSORBRIDGE_STRESS_SECONDS sets the duration)."""

import gc
import os
import random
import threading
import time

import numpy as np
import pytest
from device_producers import DeviceArray, ExchangeDeviceArray

import tensorbridge as tb
from tensorbridge import _core

SECONDS = float(os.environ.get("TENSORBRIDGE_STRESS_SECONDS", "4"))


# The fast tier (-m "not slow") runs a second of it.
@pytest.mark.parametrize("seconds", [
    pytest.param(min(1.0, SECONDS), id="sample"),
    pytest.param(SECONDS, id="full", marks=pytest.mark.slow)])
def test_threads_convert_collect_and_drop_transfers(standin, seconds):
    standin.set_delay_us(0, 1500)
    _core.set_staging_chunk_bytes(128 << 10)
    tb.set_pinned_memory_limit(8 << 20)  # small: forces staging in chunks and fallbacks
    deadline = time.monotonic() + seconds
    errors, counts = [], {"sync": 0, "async": 0, "dropped": 0, "collect": 0, "pinned": 0}
    producers = []
    lock = threading.Lock()

    def work(seed):
        rng = random.Random(seed)
        try:
            while time.monotonic() < deadline:
                rows = rng.choice([1, 7, 300, 3000])
                expected = np.full((rows, 64), seed, np.float32)
                # half through the C exchange route, half through DLPack in Python
                Device = rng.choice([DeviceArray, ExchangeDeviceArray])
                x = Device(standin, expected, device=rng.randrange(2))
                with lock:
                    producers.append(x)
                action = rng.choice(list(counts))
                if action == "sync":
                    np.testing.assert_array_equal(tb.to_numpy(x), expected)
                elif action == "async":
                    np.testing.assert_array_equal(tb.to_numpy_async(x).wait(), expected)
                elif action == "dropped":
                    tb.to_numpy_async(x)
                elif action == "collect":
                    parts = [x, expected[:3], DeviceArray(standin, expected[:5])]
                    np.testing.assert_array_equal(tb.collect(parts), np.concatenate(
                        [expected, expected[:3], expected[:5]]))
                else:
                    try:
                        out = tb.empty_pinned(expected.shape, np.float32)
                    except MemoryError:  # the small limit: allowed to refuse
                        continue
                    assert tb.to_numpy(x, out=out) is out
                    np.testing.assert_array_equal(out, expected)
                with lock:
                    counts[action] += 1
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert all(counts.values()), counts
    _core.wait_for_all_transfers()
    from tensorbridge import _transfer

    _transfer.release_finished()
    gc.collect()
    assert tb.pinned_memory_stats()["in_use_bytes"] == 0
    assert all(p.deleted == len(p.requests) for p in producers)  # every capsule released

"""Strided device memory copied as its runs, and collect's device batches:
packed submissions, mixed host and device batches, non-contiguous out=
(against the stand-in driver)."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from device_producers import DeviceArray, ExchangeDeviceArray, values
from helpers import needs_torch

import tensorbridge as tb
from tensorbridge import _core


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


@needs_torch
def test_the_route_describes_only_plain_compact_exchange_memory(standin):
    import torch

    plain = ExchangeDeviceArray(standin, values((3, 4)), device=1)
    from tensorbridge._convert import Route

    route = _core.route(plain)
    assert route.route == Route.DEVICE and route.torch_device is None
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


# -- downloads overlapped with the making of the next batch --------------------------


def _observed_batches(standin, parts, out, seen):
    """Device batches of `parts`; before making each next one, records whether
    the previous one's rows of `out` already hold its values."""
    for index, part in enumerate(parts):
        if index and out is not None:
            seen.append(np.array_equal(out[64 * (index - 1):64 * index], parts[index - 1]))
        yield DeviceArray(standin, part)


def test_collect_into_out_downloads_while_the_next_batch_is_made(standin):
    standin.set_delay_us(50_000, 50_000)  # each copy completes 50 ms after it is enqueued
    parts = [values((64, 512), seed=i) for i in range(4)]  # 128 KiB each: not packed
    out, seen = np.zeros((256, 512), np.float32), []
    assert tb.collect(_observed_batches(standin, parts, out, seen), out=out) is out
    assert seen == [False, False, False]  # asked for the next batch before the copy ended
    np.testing.assert_array_equal(out, np.concatenate(parts))


def test_collect_into_a_strided_out_writes_each_batch_before_the_next(standin):
    # The control: rows that cannot take the copy directly (a strided out=)
    # are written through staging before the next batch is asked for.
    standin.set_delay_us(50_000, 50_000)
    parts = [values((64, 512), seed=i) for i in range(4)]
    out, seen = np.zeros((256, 1024), np.float32)[:, ::2], []
    tb.collect(_observed_batches(standin, parts, out, seen), out=out)
    assert seen == [True, True, True]
    np.testing.assert_array_equal(out, np.concatenate(parts))


def test_collect_into_out_finishes_every_download_before_raising(standin):
    standin.set_delay_us(50_000, 50_000)
    parts = [values((64, 512), seed=i) for i in range(2)]
    out = np.zeros((192, 512), np.float32)

    def batches():
        yield from (DeviceArray(standin, part) for part in parts)
        raise RuntimeError("the producer broke")

    with pytest.raises(RuntimeError, match="the producer broke"):
        tb.collect(batches(), out=out)
    # rows already written into out= stay written: both downloads had completed
    np.testing.assert_array_equal(out[:128], np.concatenate(parts))


def test_collect_into_out_orders_each_download_before_the_producers_next_write(standin):
    # A producer that refills one buffer in place for every batch (a kernel on
    # its stream) still gets each batch's own values: the asynchronous
    # download is ordered on that stream, between the two writes.
    buffer = DeviceArray(standin, np.zeros((64, 2048), np.uint8))  # 128 KiB: not packed

    def refilled():
        for value in range(1, 5):
            buffer.fill_later(value, 20_000)
            yield buffer

    out = np.zeros((256, 2048), np.uint8)
    tb.collect(refilled(), out=out)
    np.testing.assert_array_equal(out[::64, 0], [1, 2, 3, 4])
    assert all(np.all(out[64 * i:64 * (i + 1)] == i + 1) for i in range(4))


def test_a_list_of_large_device_batches_downloads_into_the_reserved_result(standin):
    # A list tells its rows: the result (6 MB, a mapping) is reserved at once,
    # the downloads run asynchronously into it, and it is shrunk to fit only
    # after every one completed.
    standin.set_delay_us(20_000, 20_000)
    parts = [values((300, 1000), seed=i) for i in range(5)]  # 1.2 MB each
    batches = [DeviceArray(standin, part) for part in parts]
    for _ in range(3):  # the kept mapping of the last result is reused
        np.testing.assert_array_equal(tb.collect(batches), np.concatenate(parts))

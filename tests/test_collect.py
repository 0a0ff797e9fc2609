"""collect: batches written straight into one result, in place, nothing half-returned."""

import gc
import json
import subprocess
import sys
import textwrap
import weakref

import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from helpers import SANITIZED

import tensorbridge as tb


def test_arrays_tensors_and_buffers_of_any_leading_size():
    parts = [np.arange(12.0).reshape(4, 3), torch.ones(2, 3, dtype=torch.float64),
             np.zeros((0, 3)), torch.full((1, 3), 7.0, dtype=torch.float64)]
    expected = np.concatenate([np.asarray(p) for p in parts])
    result = tb.collect(parts)
    np.testing.assert_array_equal(result, expected)
    assert result.dtype == np.float64 and result.flags.c_contiguous and result.flags.writeable


def test_extended_dtypes_and_high_rank():
    parts = [torch.randn(3, 2, 5).to(torch.bfloat16) for _ in range(4)]
    result = tb.collect(parts)
    assert result.dtype == ml_dtypes.bfloat16 and result.shape == (12, 2, 5)
    np.testing.assert_array_equal(result.view(np.uint16),
                                  torch.cat(parts).view(torch.int16).numpy().view(np.uint16))


def test_large_batches_use_the_threaded_copy():
    parts = [np.random.default_rng(i).standard_normal((1 << 18, 4)) for i in range(3)]
    np.testing.assert_array_equal(tb.collect(iter(parts)), np.concatenate(parts))


@pytest.mark.slow
def test_the_iterable_is_never_materialised():
    refs, still_alive = [], []

    def batches():
        for i in range(50):
            gc.collect()
            still_alive.append(sum(r() is not None for r in refs))
            batch = np.full((10, 4), i, np.int32)
            refs.append(weakref.ref(batch))
            yield batch
            del batch

    result = tb.collect(batches())
    assert max(still_alive) == 0  # collect kept no earlier batch
    np.testing.assert_array_equal(result[::10, 0], np.arange(50))


def test_out_receives_every_row():
    out = np.full((7, 2), -1.0)
    assert tb.collect([np.ones((3, 2)), torch.zeros(4, 2, dtype=torch.float64)], out=out) is out
    np.testing.assert_array_equal(out, np.r_[np.ones((3, 2)), np.zeros((4, 2))])


@pytest.mark.parametrize(("batches", "message"), [
    ([], "batches is empty"),
    ([np.ones((2, 3)), np.ones((2, 4))], r"batch 1 has shape \(2, 4\), but batch 0 has "
                                         r"trailing shape \(3,\)"),
    ([np.ones((2, 3)), np.ones((2, 3), np.float32)], "batch 1 has dtype float32, but batch 0 "
                                                     "has float64"),
    ([np.ones((2, 3)), np.float64(1.0)], "batch 1 is 0-d"),
])
def test_bad_batches(batches, message):
    with pytest.raises(ValueError, match=f"^collect: {message}"):
        tb.collect(batches)


def test_out_too_small_too_large_or_mismatched():
    with pytest.raises(ValueError, match="out has 3 rows, but the batches bring at least 4"):
        tb.collect([np.ones((2, 2)), np.ones((2, 2))], out=np.empty((3, 2)))
    with pytest.raises(ValueError, match="the batches bring 4 rows, but out has 5"):
        tb.collect([np.ones((2, 2)), np.ones((2, 2))], out=np.empty((5, 2)))
    with pytest.raises(ValueError, match=r"out has shape \(4, 3\)"):
        tb.collect([np.ones((2, 2))], out=np.empty((4, 3)))
    with pytest.raises(TypeError, match="out must be a numpy.ndarray, got list"):
        tb.collect([np.ones((2, 2))], out=[])
    with pytest.raises(TypeError, match="batches must be an iterable .* got int"):
        tb.collect(3)


def test_an_exception_mid_iteration_propagates_and_returns_nothing():
    def batches():
        yield np.ones((2, 2))
        raise KeyError("source broke")

    with pytest.raises(KeyError, match="source broke"):
        tb.collect(batches())


class BadText:
    """An array-like whose conversion raises an error type of its own."""

    def __array__(self, dtype=None, copy=None):
        return np.array([b"\xff".decode()])


def test_unconvertible_batches_are_reported_as_collect_errors_naming_the_batch():
    with pytest.raises(TypeError, match=r"^collect: batch 1: cannot convert an object of "
                                        "type 'list'"):
        tb.collect([np.ones((2, 2)), [[1.0, 2.0]]])
    with pytest.raises(TypeError, match=r"^collect: batch 2: x is a meta tensor"):
        tb.collect(iter([torch.ones(1, 2), torch.ones(1, 2), torch.empty(1, 2, device="meta")]))
    with pytest.raises(UnicodeDecodeError) as raised:  # a producer's own error type, kept
        tb.collect([np.ones((1, 2)), BadText()])
    assert "(raised by collect, reading batch 1)" in getattr(raised.value, "__notes__", [
        "(raised by collect, reading batch 1)"])  # notes exist from Python 3.11
    with pytest.raises(TypeError, match=r"^collect: batch 0: torch.qint8 has no NumPy dtype"):
        tb.collect([torch.quantize_per_tensor(torch.ones(1, 2), 0.1, 0, torch.qint8)])



@pytest.mark.skipif(SANITIZED, reason="ASan's quarantine keeps freed batches resident; the "
                                      "plain run checks peak memory")
def test_peak_memory_stays_near_the_result():
    # 64 batches of 4 MiB, each freed after use: the result is 256 MiB, and
    # the peak resident memory grows by at most 1.1x that (no list, no second
    # buffer, growth in place). Measured in a fresh process, by the probe the
    # benchmark reports, which also checks the values.
    from tensorbridge._bench import collect_peak_memory

    figures = collect_peak_memory(64)
    assert isinstance(figures["tb.collect"], float), figures
    assert figures["tb.collect"] <= 1.1, figures


@pytest.mark.skipif(SANITIZED, reason="ASan's quarantine keeps freed memory resident")
def test_the_last_freed_result_up_to_64_MiB_is_kept_for_the_next_one():
    # Like malloc's freed memory, a freed result's mapping (up to 64 MiB)
    # serves the next collect with its pages already faulted in; larger ones
    # go back to the system at once. Measured in a fresh process.
    code = textwrap.dedent("""
        import json, numpy as np, tensorbridge as tb
        def rss():
            return int(open("/proc/self/statm").read().split()[1]) * 4096
        def gather(mib, value):  # generated 4 MiB batches: the result grows
            return tb.collect(np.full((1024, 512), value, np.float64) for _ in range(mib // 4))
        figures = {}
        for mib in (32, 128):
            result = gather(mib, 1)
            held = rss()
            del result
            figures[f"{mib} released"] = held - rss()
            again = gather(mib, 2)
            assert (again == 2).all()  # a reused mapping shows none of the old values
            del again
        print(json.dumps(figures))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    figures = json.loads(out.stdout)
    assert figures["32 released"] < 4 << 20, figures  # kept for the next result
    assert figures["128 released"] > 120 << 20, figures  # given back


def test_a_result_outgrowing_the_heap_into_a_smaller_kept_mapping_loses_nothing():
    # A 1.25 MiB result that grew out of its 768 KiB heap block (the heap
    # holds at most 1 MiB) leaves a 1.25 MiB mapping behind. The next
    # result's first 1 MiB batch fills a heap block; its second batch moves
    # that 1 MiB into the kept mapping, which must grow before it is written.
    first = tb.collect(iter([np.ones((3 << 13, 4)), np.ones((1 << 14, 4))]))  # 768 + 512 KiB
    del first
    parts = [np.random.default_rng(i).standard_normal((1 << 15, 4)) for i in range(3)]  # 1 MiB
    np.testing.assert_array_equal(tb.collect(iter(parts)), np.concatenate(parts))


@pytest.mark.parametrize("make", [lambda: torch.randn(10, 3), lambda: np.ones((10, 3)),
                                  lambda: torch.randn(10, 3).bfloat16()],
                         ids=["tensor", "array", "bfloat16"])
def test_one_tensor_or_array_instead_of_batches_is_refused(make):
    # np.concatenate(list(t)) would take each row as a batch: almost always a
    # mistake, so collect says what to pass instead.
    x = make()
    with pytest.raises(TypeError, match=rf"^collect: batches is one {type(x).__name__} of shape "
                                        r"\(10, 3\), not an iterable of batches; pass a list or a "
                                        r"generator of batches .*\[batches\].*to_numpy"):
        tb.collect(x)
    np.testing.assert_array_equal(tb.collect([x]), tb.to_numpy(x))


@pytest.mark.parametrize("kind", ["list", "generator"])
def test_host_batches_are_taken_by_the_native_loop(kind, path, monkeypatch):
    # NumPy arrays and plain CPU tensors (through the exchange API) never
    # reach the Python writer's per-batch code; anything else does, in order.
    from tensorbridge import _collect

    seen = []
    add = _collect._Writer.add
    monkeypatch.setattr(_collect._Writer, "add",
                        lambda self, index, batch: (seen.append(index), add(self, index, batch)))
    host = [np.full((2, 3), i, np.float32) for i in range(6)]
    parts = host[:2] + [torch.from_numpy(h) for h in host[2:4]] + [
        torch.from_numpy(host[4]).t().contiguous().t(),  # strided: the Python writer's
        host[5]]
    result = tb.collect(parts if kind == "list" else iter(parts))
    np.testing.assert_array_equal(result, np.concatenate(host))
    # with the exchange API off, the tensors are the Python writer's too
    assert seen == ([2, 3, 4] if path == "python" or path == "numpy-method" else [4])


def test_large_tensor_batches_are_copied_whole_without_the_gil():
    parts = [torch.randn(1 << 16, 8, dtype=torch.float64) for _ in range(3)]  # 4 MiB each
    np.testing.assert_array_equal(tb.collect(iter(parts)), torch.cat(parts).numpy())
    out = np.empty((3 << 16, 8))
    assert tb.collect(parts, out=out) is out
    np.testing.assert_array_equal(out, torch.cat(parts).numpy())


def test_lists_of_small_host_batches_are_gathered_and_still_checked():
    parts = [np.full((1, 3), i, np.float32) for i in range(1000)]
    mixed = parts[:500] + [torch.from_numpy(p) for p in parts[500:]]
    np.testing.assert_array_equal(tb.collect(mixed), np.concatenate(parts))
    out = np.zeros((1000, 6), np.float32)[:, ::2]
    assert tb.collect(parts, out=out) is out
    np.testing.assert_array_equal(out, np.concatenate(parts))
    # a batch that needs a copy (sparse) goes the general way, with the same result
    sparse = [torch.eye(2).to_sparse(), np.zeros((1, 2), np.float32)]
    np.testing.assert_array_equal(tb.collect(sparse), [[1, 0], [0, 1], [0, 0]])
    with pytest.raises(ValueError, match="batch 999 has dtype float64, but batch 0 has float32"):
        tb.collect(parts[:999] + [np.zeros((1, 3))])
    with pytest.raises(ValueError, match=r"batch 1 has shape \(1, 4\), but batch 0 has trailing"):
        tb.collect([parts[0], np.zeros((1, 4), np.float32)])
    with pytest.raises(ValueError, match="batch 1 is 0-d"):
        tb.collect([parts[0], np.float32(1.0)])


def _overlap_cases():
    # (name, rows of the buffer, out's rows, batches' rows): every batch a
    # slice of the buffer that out= also covers. 8 MiB batches take the
    # threaded copy.
    n = 1 << 18  # rows of 4 float64: 8 MiB
    return {
        "source-ahead": (2 * n, slice(0, n), [slice(3, n + 3)]),
        "source-behind": (2 * n, slice(3, n + 3), [slice(0, n)]),
        "later-reads-earlier": (3 * n, slice(0, 2 * n), [slice(5, n + 5), slice(0, n)]),
        "small": (64, slice(0, 32), [slice(1, 17), slice(0, 16)]),
    }


@pytest.mark.parametrize("kind", ["list", "iterator", "tensors"])
@pytest.mark.parametrize("case", list(_overlap_cases()))
def test_batches_overlapping_out_give_what_concatenate_gives(case, kind):
    rows, out_rows, batch_rows = _overlap_cases()[case]
    buffer = np.random.default_rng(0).standard_normal((rows, 4))
    reference = buffer.copy()
    np.concatenate([reference[r] for r in batch_rows], out=reference[out_rows])
    batches = [buffer[r] for r in batch_rows]
    if kind == "tensors":
        batches = [torch.from_numpy(b) for b in batches]
    out = buffer[out_rows]
    assert tb.collect(iter(batches) if kind == "iterator" else batches, out=out) is out
    np.testing.assert_array_equal(buffer, reference)


@pytest.mark.parametrize("shift", [-4096, -8, 8, 4096])
def test_the_threaded_host_copy_moves_overlapping_ranges_as_memmove_does(shift):
    from tensorbridge import _core

    buffer = np.random.default_rng(1).integers(0, 255, 32 << 20, np.uint8)
    expected = buffer.copy()
    n = 16 << 20
    src, dst = (slice(8 << 20, (8 << 20) + n), slice((8 << 20) + shift, (8 << 20) + shift + n))
    expected[dst] = expected[src].copy()
    _core.host_copy(memoryview(buffer[dst]), memoryview(buffer[src]))
    np.testing.assert_array_equal(buffer, expected)


class _ShapeLiar:
    """An array-like whose .shape attribute disagrees with its data."""

    def __init__(self, array, shape):
        self.array, self.shape = array, shape

    def __array__(self, dtype=None, copy=None):
        return self.array


@pytest.mark.parametrize("claimed", [(1, 4), (10**13, 4), (2**62, 4), (2**70, 4)],
                         ids=["fewer", "1e13", "2^62", "2^70"])
@pytest.mark.parametrize("with_out", [False, True])
def test_a_batch_whose_shape_lies_gets_a_clear_error(claimed, with_out):
    # A sequence is sized from its batches' .shape; the batch itself decides,
    # and a disagreement is an error naming both (never an allocation of the
    # claimed size, std::bad_alloc or an unconvertible integer).
    batches = [np.ones((2, 4)), _ShapeLiar(np.ones((3, 4)), claimed), np.ones((2, 4))]
    out = np.empty((7, 4)) if with_out else None
    with pytest.raises(ValueError, match=rf"^collect: batch 1 has 3 rows, but its shape "
                                         rf"attribute said {claimed[0]} .*iter\(batches\)"):
        tb.collect(batches, out=out)


@pytest.mark.parametrize("claimed", [-5, "x", 2.5, None], ids=repr)
def test_shape_attributes_that_are_not_counts_are_no_hint(claimed):
    batches = [np.ones((2, 4)), _ShapeLiar(np.full((3, 4), 2.0), (claimed, 4))]
    np.testing.assert_array_equal(tb.collect(batches), np.r_[np.ones((2, 4)), np.full((3, 4), 2)])


def test_growable_buffer_sizes_are_checked():
    from tensorbridge import _core

    buffer = _core.GrowableBuffer()
    for nbytes in (2**64 - 1, 2**63):
        with pytest.raises(OverflowError, match=rf"collect: cannot reserve {nbytes} bytes, "
                                                r"more than an address space holds"):
            buffer.reserve(nbytes)
    buffer.reserve(4096)
    with pytest.raises(IndexError, match=r"end past the capacity of \d+"):
        buffer.view(2**64 - 1, 2)  # offset + nbytes wraps around
    with pytest.raises(IndexError):
        buffer.view(buffer.capacity, 1)
    buffer.shrink_to(2**64 - 1)  # larger than the capacity: nothing to give back
    assert buffer.capacity >= 4096

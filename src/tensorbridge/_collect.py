"""``collect``: many batches into one array, each written straight into its
slice, without a list of batches and without ``np.concatenate``.

With no ``out=``, the result lives in a GrowableBuffer that grows in place
(mremap moves page tables, not bytes), so peak memory stays at the result's
size plus one batch. Small GPU batches are packed: up to ``_PACK_COUNT`` of
them become one submission of the engine and one event. A list or tuple of
small plain CUDA tensors (torch's, read through the DLPack C exchange API)
is described in C and copied in those packed submissions with no per-batch
Python work beyond the description.
"""

from __future__ import annotations

import math
import sys

import numpy as np

from . import _core, _cuda
from ._convert import _dlpack_device, to_numpy

_PACK_BYTES = 64 << 10  # a batch at most this large waits to be packed with others
_PACK_COUNT = 1024


def collect(batches, *, out=None):
    """Gather an iterable of batches (CPU or GPU tensors, arrays, any DLPack
    producer) with the same trailing shape and dtype into one array.

    Each batch is written straight into its slice of the result; the iterable
    is consumed once and never materialised. ``out=`` receives the rows and
    must hold exactly as many as the batches bring.

    Raises ValueError for an empty iterable, a batch whose trailing shape or
    dtype differs from the first one's, or an ``out=`` too small or too large;
    an exception raised by the iterable propagates and nothing is returned
    (rows already written into ``out=`` stay written).
    """
    try:
        iterator = iter(batches)
    except TypeError:
        raise TypeError(f"collect: batches must be an iterable of tensors or arrays, got "
                        f"{type(batches).__name__}") from None
    if out is not None and not isinstance(out, np.ndarray):
        raise TypeError(f"collect: out must be a numpy.ndarray, got {type(out).__name__}")
    if out is not None and not out.flags.writeable:
        raise ValueError("collect: out is read-only; pass a writeable array")
    if isinstance(batches, (list, tuple)):
        gathered = _gather_small_device_batches(batches, out)
        if gathered is not None:
            return gathered
    # A sequence tells its size up front: one allocation instead of growing.
    writer = _Writer(out, _total_rows(batches) if isinstance(batches, (list, tuple)) else None)
    index = 0
    while True:
        # No reference to a batch outlives its write: the producer may free
        # it before making the next one.
        try:
            batch = next(iterator)
        except StopIteration:
            break
        writer.add(index, batch)
        del batch
        index += 1
    return writer.finish()


def _gather_small_device_batches(batches, out):
    """A sequence of small plain CUDA tensors on one device and stream, with
    one trailing shape and dtype, straight into the result; None (nothing
    done) for any other sequence, which the general path then handles."""
    described = []
    for batch in batches:
        description = _core.describe_device(batch)
        if description is None:
            return None
        described.append(description)
    if not described:
        return None
    device, stream, _, shape, dtype = described[0]
    if len(shape) == 0:
        return None
    trailing = shape[1:]
    row_bytes = math.prod(trailing) * dtype.itemsize
    sources, offsets, rows = [], [], 0
    for d_device, d_stream, address, d_shape, d_dtype in described:
        if (d_device, d_stream, d_shape[1:], d_dtype) != (device, stream, trailing, dtype) \
                or len(d_shape) == 0 or d_shape[0] * row_bytes > _PACK_BYTES:
            return None
        sources.append((address, d_shape[0] * row_bytes))
        offsets.append(rows * row_bytes)
        rows += d_shape[0]
    if out is None:
        out = np.empty((rows, *trailing), dtype)
    elif (not isinstance(out, np.ndarray) or out.shape != (rows, *trailing) or out.dtype != dtype
          or not out.flags.c_contiguous or not out.flags.writeable):
        return None  # the general path accepts or refuses it, with the reason
    target = out.reshape(-1).view(np.uint8)
    for start in range(0, len(sources), _PACK_COUNT):
        _core.copy_many_to_host(device, sources[start:start + _PACK_COUNT], stream, target,
                                offsets[start:start + _PACK_COUNT])
    return out


def _total_rows(batches):
    """Rows a sequence of batches will bring, if every batch tells its shape."""
    total = 0
    for batch in batches:
        shape = getattr(batch, "shape", None)
        if shape is None or len(shape) == 0:
            return None
        total += int(shape[0])
    return total


class _Writer:
    def __init__(self, out, expected_rows=None):
        self.out = out
        self.buffer = None if out is not None else _core.GrowableBuffer()
        self.rows = 0
        self.trailing = None
        self.dtype = None
        self.row_bytes = None
        self.pending = []  # small device batches: (offset_rows, device batch)
        self.expected_rows = expected_rows  # known up front for sequences, else None

    # -- one batch -----------------------------------------------------------------

    def add(self, index, batch):
        source = _device_memory(batch)
        array = None
        if source is None:
            array = to_numpy(batch)
            shape, dtype = array.shape, array.dtype
        else:
            shape, dtype = source.shape, source.dtype
        self._check(index, shape, dtype)
        rows = shape[0]
        first_row = self.rows
        self._make_room(first_row + rows)
        self.rows += rows
        if source is None:
            self._write_host(first_row, rows, array)
        elif source.nbytes <= _PACK_BYTES and source.strides is None:
            self.pending.append((first_row, source))
            if len(self.pending) >= _PACK_COUNT:
                self._flush()
        else:
            self._flush()
            source.copy_into(self._rows_view(first_row, rows))

    def _check(self, index, shape, dtype):
        if len(shape) == 0:
            raise ValueError(f"collect: batch {index} is 0-d; every batch needs a leading "
                             "(row) dimension, e.g. x[None] for a single row")
        if self.trailing is None:
            self.trailing, self.dtype = tuple(shape[1:]), dtype
            self.row_bytes = math.prod(self.trailing) * dtype.itemsize
            if self.out is not None:
                self._check_out()
            return
        if tuple(shape[1:]) != self.trailing:
            raise ValueError(f"collect: batch {index} has shape {tuple(shape)}, but batch 0 "
                             f"has trailing shape {self.trailing}; every batch must share it")
        if dtype != self.dtype:
            raise ValueError(f"collect: batch {index} has dtype {dtype}, but batch 0 has "
                             f"{self.dtype}; convert the batches to one dtype first")

    def _check_out(self):
        if self.out.shape[1:] != self.trailing or self.out.dtype != self.dtype:
            raise ValueError(f"collect: out has shape {self.out.shape} and dtype "
                             f"{self.out.dtype}, but the batches are (n, *{self.trailing}) "
                             f"{self.dtype}; pass a matching array")

    def _make_room(self, rows):
        if self.out is not None:
            if rows > len(self.out):
                raise ValueError(f"collect: out has {len(self.out)} rows, but the batches bring "
                                 f"at least {rows}; pass a larger array")
            return
        if self.expected_rows is not None and rows <= self.expected_rows:
            rows = self.expected_rows
        self.buffer.reserve(max(rows * self.row_bytes, 1))

    def _rows_view(self, first_row, rows):
        """A writable array over rows [first_row, first_row + rows) of the result."""
        if self.out is not None:
            return self.out[first_row:first_row + rows]
        window = self.buffer.view(first_row * self.row_bytes, rows * self.row_bytes)
        return np.frombuffer(window, np.uint8).view(self.dtype).reshape((rows, *self.trailing))

    def _write_host(self, first_row, rows, array):
        target = self._rows_view(first_row, rows)
        if array.flags.c_contiguous and target.flags.c_contiguous and array.nbytes >= 1 << 20:
            _core.host_copy(_as_bytes(target), _as_bytes(array))  # several threads
        else:
            np.copyto(target, array, casting="no")

    def _flush(self):
        if not self.pending:
            return
        by_device = {}
        for first_row, source in self.pending:
            by_device.setdefault((source.device, source.stream), []).append((first_row, source))
        self.pending = []
        start = min(row for group in by_device.values() for row, _ in group)
        end = max(row + s.shape[0] for group in by_device.values() for row, s in group)
        window = _as_bytes(self._rows_view(start, end - start))
        for (device, stream), group in by_device.items():
            _core.copy_many_to_host(device, [(s.address, s.nbytes) for _, s in group], stream,
                                    window, [(row - start) * self.row_bytes for row, _ in group])

    # -- the result ------------------------------------------------------------------

    def finish(self):
        if self.trailing is None:
            raise ValueError("collect: batches is empty; pass at least one batch (an empty "
                             "one, with zero rows, sets the trailing shape and dtype)")
        self._flush()
        if self.out is not None:
            if self.rows != len(self.out):
                raise ValueError(f"collect: the batches bring {self.rows} rows, but out has "
                                 f"{len(self.out)}; pass an array of exactly that many rows")
            return self.out
        nbytes = self.rows * self.row_bytes
        if nbytes == 0:
            return np.empty((self.rows, *self.trailing), self.dtype)
        self.buffer.shrink_to(nbytes)
        return self._rows_view(0, self.rows)


def _as_bytes(array):
    return array.reshape(-1).view(np.uint8)


def _device_memory(batch):
    """The batch's CUDA memory, or None for a batch in host memory."""
    memory = _cuda.DeviceMemory.described_in_c(batch)  # plain torch CUDA tensors
    if memory is not None:
        return memory
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(batch, torch.Tensor):
        return _cuda.DeviceMemory.of_tensor(torch, batch) if batch.is_cuda else None
    device = _dlpack_device(batch) if not isinstance(batch, np.ndarray) else None
    if device is None or device[0] not in _cuda.CUDA_DEVICE_TYPES:
        return None
    return _cuda.DeviceMemory.of_dlpack(batch, device[1], caller="collect")

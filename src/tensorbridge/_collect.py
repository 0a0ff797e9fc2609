"""``collect``: many batches into one array, each written straight into its
slice, without a list of batches and without ``np.concatenate``.

With no ``out=``, the result lives in a GrowableBuffer that grows in place
(mremap moves page tables, not bytes), so peak memory stays at the result's
size plus one batch. Host batches (NumPy arrays, plain CPU tensors) are taken
by the native core's loop (``_core.gather_host``, csrc/collect.h): no Python
call per batch. Small GPU batches are packed: up to ``_PACK_COUNT`` of them
become one submission of the engine and one event; a sequence of small plain
CUDA tensors (torch's, read through the DLPack C exchange API) is described
in C and copied in those packed submissions. Every other batch, and every
error, is this module's.

When the result cannot move (``out=``, or a sequence whose batches told
their rows, all reserved at once), a larger GPU batch is downloaded
asynchronously straight into its rows while the iterable makes the next
batch. The copy is ordered on the batch's stream (the producer's current
one), so a producer that then overwrites the batch in place waits for it;
one that yields each batch while a download stream of its own is current
(TorchTransformer) overlaps the copies with its next kernels too. Every
download has completed before ``collect`` returns or raises, and before the
result's memory may move.
"""

from __future__ import annotations

import math
import operator
import sys
from collections.abc import Iterable
from functools import partial
from typing import Any

import numpy as np

from . import _convert, _core, _torch
from ._convert import TorchValues
from ._device_memory import DeviceMemory, as_bytes, copy_device_memory
from ._pinned import is_pinned
from ._transfer import interruptible

_PACK_BYTES = 64 << 10  # a batch at most this large waits to be packed with others
_PACK_COUNT = 1024
_THREADED_COPY_BYTES = 1 << 20  # a host batch at least this large is copied on several threads


def collect(batches: Iterable[Any], *, out: np.ndarray | None = None) -> np.ndarray:
    """Gather batches with the same trailing shape and dtype into one array.

    Each batch is written straight into its slice of the result; the iterable
    is consumed once and never materialised, so peak memory stays at the
    result plus one batch (``np.concatenate`` of a list holds both).

    On a GPU, when the result's size is known (``out=``, or a list or tuple
    of batches), a large batch is downloaded while the next one is made, in
    order on the batch's stream; every download has completed when
    ``collect`` returns or raises.

    Parameters
    ----------
    batches : iterable
        CPU or GPU tensors, arrays, or any DLPack producer, each with a
        leading (row) dimension; a generator is consumed as it yields.
    out : numpy.ndarray, optional
        Receives the rows; must hold exactly as many as the batches bring.

    Returns
    -------
    numpy.ndarray
        The rows of every batch, in order.

    Raises
    ------
    ValueError
        For an empty iterable, a batch whose trailing shape or dtype differs
        from the first one's, or an ``out=`` too small or too large.
    TypeError, BufferError
        For a batch ``to_numpy`` cannot read, naming the batch.

    An exception raised by the iterable propagates and nothing is returned
    (rows already written into ``out=`` stay written).

    Examples
    --------
    >>> import torch, tensorbridge as tb
    >>> tb.collect(torch.full((2, 3), float(i)) for i in range(3)).shape
    (6, 3)
    >>> tb.collect([torch.ones(1, 2), torch.zeros(1, 2)])
    array([[1., 1.],
           [0., 0.]], dtype=float32)
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
    if isinstance(batches, np.ndarray) or _torch.is_tensor(batches) or hasattr(
            type(batches), "__dlpack__"):
        shape = tuple(getattr(batches, "shape", ()))
        raise TypeError(
            f"collect: batches is one {type(batches).__name__} of shape {shape}, not an "
            "iterable of batches; pass a list or a generator of batches (for this one, "
            "[batches]), or call tensorbridge.to_numpy on it for the array itself")
    if isinstance(batches, (list, tuple)):
        gathered = _gather_small_device_batches(batches, out)
        if gathered is not None:
            return gathered
    writer = _Writer(out, batches if isinstance(batches, (list, tuple)) else None)
    try:
        writer.consume(iterator)
        return writer.finish()
    finally:
        writer.wait_downloads()  # on an error too: no copy outlives the call


def _gather_small_device_batches(batches, out):
    """A sequence of small plain CUDA tensors on one device and stream, with
    one trailing shape and dtype, straight into the result; None (nothing
    done) for any other sequence, which the general path then handles."""
    described = []
    for batch in batches:
        memory = _core.route(batch, numpy_method=False).memory
        if memory is None:
            return None
        described.append(memory)
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
        out = _new_result(rows, trailing, dtype)
    elif out.shape != (rows, *trailing) or out.dtype != dtype or not out.flags.c_contiguous:
        return None  # the general path accepts or refuses it, with the reason
    target, pinned = as_bytes(out), is_pinned(out)
    for start in range(0, len(sources), _PACK_COUNT):
        # On Ctrl-C the copies in flight keep their sources (and target) alive.
        interruptible(partial(_core.copy_many_to_host, device, sources[start:start + _PACK_COUNT],
                              stream, target, offsets[start:start + _PACK_COUNT], pinned),
                      batches, out)
    return out


def _new_result(rows, trailing, dtype, buffer=None):
    """An array of `rows` rows over a GrowableBuffer (a new one, or `buffer`,
    shrunk to fit): large results reuse the mapping of the last one freed."""
    nbytes = rows * math.prod(trailing) * dtype.itemsize
    if nbytes == 0:
        return np.empty((rows, *trailing), dtype)
    if buffer is None:
        buffer = _core.GrowableBuffer()
        buffer.reserve(nbytes)
    buffer.shrink_to(nbytes)
    return _rows_over(buffer, rows, trailing, dtype)


def _rows_over(buffer, rows, trailing, dtype):
    """An array of `rows` rows viewing the start of `buffer` (which cannot
    move or shrink while the array lives)."""
    nbytes = rows * math.prod(trailing) * dtype.itemsize
    return np.frombuffer(buffer.view(0, nbytes), np.uint8).view(dtype).reshape((rows, *trailing))


def _row_hints(batches):
    """The rows each batch of a sequence says it has (its ``.shape[0]``), if
    every batch tells a count; None otherwise. Only a hint: each batch is
    checked against it when it is written."""
    hints = []
    for batch in batches:
        try:
            rows = operator.index(batch.shape[0])
        except Exception:  # noqa: BLE001 - no shape, 0-d, or not a count: no hint at all
            return None
        if rows < 0:
            return None
        hints.append(rows)
    return hints


class _Writer:
    def __init__(self, out, sequence=None):
        self.out = out
        self.buffer = None if out is not None else _core.GrowableBuffer()
        # Every row of the result, written or to come: `out`, or an array over
        # the buffer's capacity, made again only when needed after the buffer
        # grew (no view of it may live while it grows: growth moves it).
        self.window = out
        self.capacity_rows = len(out) if out is not None else 0
        self.rows = 0
        self.trailing = None
        self.dtype = None
        self.row_bytes = None
        self.pending = []  # small device batches: (offset_rows, device batch)
        self.downloads = []  # Transfers of larger device batches still in flight
        # A sequence tells its size up front: the rows each of its batches
        # from `hints_from` on says it has (read at the first batch the native
        # loop hands back: a host batch's shape is its data's), and their sum,
        # which sizes the result at once.
        self.sequence = sequence
        self.row_hints, self.hints_from, self.expected_rows = None, 0, None

    def consume(self, iterator):
        """Every batch of `iterator`, in order: host batches in the native
        core's loop, each other one (the first it hands back) here."""
        native = self.out is None or self.out.flags.c_contiguous
        index = 0
        while True:
            if native:
                if self.buffer is not None:
                    # Lets the loop grow (move) the buffer; a download in flight holds
                    # its rows' view, so the loop leaves growing to _make_room then.
                    self.window = None
                self.rows, index, trailing, dtype, exhausted, batch = _core.gather_host(
                    iterator, self.buffer if self.out is None else self.out, self.rows, index,
                    self.trailing, self.dtype,
                    self.expected_rows if 0 <= (self.expected_rows or -1) <= sys.maxsize else -1)
                if self.trailing is None and trailing is not None:
                    self._set_layout(trailing, dtype)
                if exhausted:
                    return
            else:
                try:
                    batch = next(iterator)
                except StopIteration:
                    return
            if self.sequence is not None:
                self._read_hints(index)
            # No reference to a batch outlives its write: the producer may
            # free it before making the next one.
            self.add(index, batch)
            del batch
            index += 1

    def _read_hints(self, index):
        """The rows the sequence's batches from `index` on say they have."""
        hints = _row_hints(self.sequence[index:])
        self.sequence = None  # read once
        if hints is not None:
            self.row_hints, self.hints_from = hints, index
            self.expected_rows = self.rows + sum(hints)

    # -- one batch -----------------------------------------------------------------

    def add(self, index, batch):
        source = batch
        if type(batch) is not np.ndarray:
            try:
                source = _convert.source_of(_core.route(batch, numpy_method=False), batch, None,
                                            None, view_returned=False)
            except (TypeError, ValueError, BufferError) as error:
                renamed = _convert.as_callers_error(error, f"collect: batch {index}")
                if renamed is None:  # a producer's own type, with a note
                    if hasattr(error, "add_note"):
                        error.add_note(f"(raised by collect, reading batch {index})")
                    raise
                raise renamed from error
        shape, dtype = source.shape, source.dtype
        self._check(index, shape, dtype)
        rows = shape[0]
        at = index - self.hints_from
        hint = rows if self.row_hints is None or not 0 <= at < len(self.row_hints) \
            else self.row_hints[at]
        if hint != rows:
            raise ValueError(
                f"collect: batch {index} has {rows} rows, but its shape attribute said {hint} "
                "when the result was sized; make .shape match the batch's data, or pass "
                "iter(batches) so that no shape is read ahead")
        first_row = self.rows
        self._make_room(first_row + rows)
        self.rows += rows
        if rows == 0 or self.row_bytes == 0:
            return  # nothing to copy
        target = slice(first_row, first_row + rows)
        if not isinstance(source, DeviceMemory):
            self._write_host(target, source)
        elif source.nbytes <= _PACK_BYTES and source.strides is None:
            self.pending.append((first_row, source))
            if len(self.pending) >= _PACK_COUNT:
                self._flush()
        elif (self._rows_fixed() and source.strides is None
              and self.window[target].flags.c_contiguous):
            self._flush()
            # The result cannot move: the copy completes while the next batch is made.
            self.downloads.append(copy_device_memory(source, self.window[target],
                                                     asynchronous=True))
        else:
            self._flush()
            source.copy_into(self.window[target])

    def _rows_fixed(self) -> bool:
        """Whether the result's memory stays where it is until finish: out=,
        or a buffer already holding every row the sequence announced."""
        return self.out is not None or (self.expected_rows is not None
                                        and self.capacity_rows >= self.expected_rows)

    def wait_downloads(self):
        """Every asynchronous download completed (its first error raised)."""
        downloads, self.downloads = self.downloads, []
        for transfer in downloads:
            transfer.wait()

    def _set_layout(self, trailing, dtype):
        self.trailing, self.dtype = tuple(trailing), dtype
        self.row_bytes = math.prod(self.trailing) * dtype.itemsize

    def _check(self, index, shape, dtype):
        if len(shape) == 0:
            raise ValueError(f"collect: batch {index} is 0-d; every batch needs a leading "
                             "(row) dimension, e.g. x[None] for a single row")
        if self.trailing is None:
            self._set_layout(shape[1:], dtype)
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
        if self.buffer is not None and self.row_bytes:
            # the native loop may have grown the buffer since the window was made
            self.capacity_rows = max(self.capacity_rows, self.buffer.capacity // self.row_bytes)
        if rows <= self.capacity_rows:
            if self.window is None and self.row_bytes:
                self.window = _rows_over(self.buffer, self.capacity_rows, self.trailing,
                                         self.dtype)
            return
        if self.out is not None:
            raise ValueError(f"collect: out has {len(self.out)} rows, but the batches bring "
                             f"at least {rows}; pass a larger array")
        if self.row_bytes == 0:  # nothing is ever written: no memory to reserve
            self.capacity_rows = rows
            return
        self.wait_downloads()  # growing may move the buffer they write into
        self.window = None  # its view of the buffer would stop the buffer from moving
        if self.expected_rows is not None and rows < self.expected_rows:
            try:
                self._reserve(self.expected_rows)
            except MemoryError:
                # More rows than memory holds were announced: grow as the
                # batches come (a batch whose .shape lied is refused then).
                self.expected_rows = None
        self._reserve(rows)
        self.capacity_rows = self.buffer.capacity // self.row_bytes
        self.window = _rows_over(self.buffer, self.capacity_rows, self.trailing, self.dtype)

    def _reserve(self, rows):
        nbytes = rows * self.row_bytes
        try:
            if nbytes > sys.maxsize:
                raise OverflowError(f"{nbytes} bytes are more than an address space holds")
            self.buffer.reserve(nbytes)
        except (MemoryError, OverflowError) as error:
            raise MemoryError(
                f"collect: cannot hold {rows} rows of {self.row_bytes} bytes ({nbytes} bytes): "
                f"{error}; collect fewer rows at once, or pass out=") from error

    def _write_host(self, rows, source):
        """Host memory (an array), or values torch writes, into `rows` of the result."""
        target = self.window[rows]
        if isinstance(source, TorchValues):
            if self.out is None:  # our own buffer: nothing of it can be the batch's
                source.into(target)
                return
            source = source.into()  # it may read out='s memory: written after, as below
        if self.out is not None and np.may_share_memory(target, source):
            # A batch over out='s own memory gets what np.concatenate gives:
            # copied after every earlier batch (whose rows it may read), by
            # NumPy, which goes through a temporary where the two overlap.
            # The threaded copy's pieces would read rows others already wrote.
            self._flush()
            target[...] = source
            return
        if (source.nbytes >= _THREADED_COPY_BYTES and source.flags.c_contiguous
                and target.flags.c_contiguous):
            _core.host_copy(as_bytes(target), as_bytes(source))  # several threads
        else:
            target[...] = source  # same shape and dtype: checked

    def _flush(self):
        if not self.pending:
            return
        by_device = {}
        for first_row, source in self.pending:
            by_device.setdefault((source.device, source.stream), []).append((first_row, source))
        self.pending = []
        start = min(row for group in by_device.values() for row, _ in group)
        end = max(row + s.shape[0] for group in by_device.values() for row, s in group)
        self._make_room(end)  # the window again, if the native loop dropped it
        region = self.window[start:end]
        # A non-contiguous out= receives the rows through a contiguous staging array.
        staging = region if region.flags.c_contiguous else np.empty(region.shape, region.dtype)
        for (device, stream), group in by_device.items():
            # On Ctrl-C the copies in flight keep their sources (and staging) alive.
            interruptible(partial(
                _core.copy_many_to_host, device, [(s.address, s.nbytes) for _, s in group],
                stream, as_bytes(staging), [(row - start) * self.row_bytes for row, _ in group],
                is_pinned(staging)),
                [s.keep for _, s in group], staging)
        if staging is not region:
            for group in by_device.values():
                for row, source in group:
                    rows = slice(row - start, row - start + source.shape[0])
                    region[rows] = staging[rows]

    # -- the result ------------------------------------------------------------------

    def finish(self):
        if self.trailing is None:
            raise ValueError("collect: batches is empty; pass at least one batch (an empty "
                             "one, with zero rows, sets the trailing shape and dtype)")
        self._flush()
        self.wait_downloads()
        if self.out is not None:
            if self.rows != len(self.out):
                raise ValueError(f"collect: the batches bring {self.rows} rows, but out has "
                                 f"{len(self.out)}; pass an array of exactly that many rows")
            return self.out
        self.window = None  # let the buffer shrink to the result
        return _new_result(self.rows, self.trailing, self.dtype, self.buffer)

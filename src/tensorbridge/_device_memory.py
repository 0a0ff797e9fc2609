"""CUDA memory as the engine copies it (``DeviceMemory``), found from an
input's route: torch CUDA tensors (made plain on their device first when
needed), any DLPack producer in CUDA memory, strided copies planned as runs.

The engine (``csrc/transfer.cpp``) enqueues every copy on one stream: the one
given as ``stream=``, else the producer's current stream. Python's part is to
find the memory, the stream and the result array, and to keep sources and
destinations alive until the copies that use them have completed.
"""

from __future__ import annotations

import math

import numpy as np

from . import _core, _dlpack, _driver, _dtypes, _streams
from ._out import check_out_matches
from ._pinned import is_pinned
from ._transfer import Transfer, interruptible, release_finished


def _result_array(shape, dtype, out):
    """A new array for the result, or `out` once it is checked to fit."""
    if out is None:
        return np.empty(shape, dtype)
    check_out_matches(out, shape, dtype)
    return out


def as_bytes(array: np.ndarray) -> np.ndarray:
    return array.reshape(-1).view(np.uint8)


class DeviceMemory:
    """Values in CUDA memory, as the engine copies them: where they are, the
    stream their copy is ordered on, their layout, what keeps them alive, and
    what must follow the copy once it is enqueued."""

    __slots__ = ("device", "stream", "address", "shape", "strides", "dtype", "nbytes", "keep",
                 "after_enqueue")

    def __init__(self, device, stream, address, shape, strides, dtype, keep, after_enqueue=None):
        self.device, self.stream, self.address = device, stream, address
        self.shape, self.dtype, self.keep = tuple(shape), dtype, keep
        self.strides = None if strides is None else tuple(strides)  # None: compact row-major
        self.nbytes = math.prod(self.shape) * dtype.itemsize
        self.after_enqueue = after_enqueue

    @classmethod
    def described(cls, memory, x):
        """The compact CUDA memory the native core described (a
        ``_core.CudaMemory``), on the producer's current stream, kept alive by `x`."""
        return cls(memory.device, memory.stream, memory.address, memory.shape, None, memory.dtype,
                   x)

    @classmethod
    def of_tensor(cls, torch, t, stream=None):
        """A torch CUDA tensor, made plain and contiguous on its device first
        (on the copy's stream) when it needs to be.

        On a given stream other than torch's current one, the copy is ordered
        after both streams' work (as torch's own ``__dlpack__(stream)`` does),
        and the current stream waits for the copy before its later kernels
        can overwrite the source."""
        device = t.device.index if t.device.index is not None else torch.cuda.current_device()
        _streams.check_stream_device(stream, device)
        current = torch.cuda.current_stream(device)
        handle = current.cuda_stream
        if stream is None or _streams.stream_handle(stream) == handle:
            t = _plain_contiguous(torch, t)
            return cls(device, handle, t.data_ptr(), t.shape, None, _dtypes.numpy_dtype(t.dtype), t)
        given = torch.cuda.ExternalStream(_streams.stream_handle(stream),
                                          device=torch.device("cuda", device))
        given.wait_stream(current)
        with torch.cuda.stream(given):
            t = _plain_contiguous(torch, t)
        return cls(device, given.cuda_stream, t.data_ptr(), t.shape, None,
                   _dtypes.numpy_dtype(t.dtype), t,
                   after_enqueue=lambda: current.wait_stream(given))

    @classmethod
    def of_dlpack(cls, x, device_id, stream=None):
        """Any DLPack producer in CUDA memory (BufferError, saying why, when
        CUDA is unusable here)."""
        if not _driver.cuda_available():
            raise _driver.unusable_cuda_error(x, device_id)
        _streams.check_stream_device(stream, device_id)
        handle = (_streams.stream_handle(stream) if stream is not None
                  else _streams.producer_stream(device_id))
        # The consumer names its stream: the producer orders its pending work
        # before anything we enqueue there.
        capsule = _dlpack.request_capsule(x, stream=handle)
        found = _core.describe_capsule(capsule)
        if found.dtype is None:
            raise TypeError(f"to_numpy: this {type(x).__name__} holds {found.dtype_name}, which "
                            "has no NumPy dtype; convert it in the producer first")
        return cls(found.device, handle, found.address, found.shape, found.strides, found.dtype,
                   found.owner)

    def copy_into(self, target: np.ndarray) -> None:
        """Copy into `target`, an array of this shape and dtype (a
        non-contiguous one through a contiguous temporary)."""
        if not target.flags.c_contiguous:
            staging = np.empty(target.shape, target.dtype)
            self.copy_into(staging)
            target[...] = staging
        elif self.strides is not None:
            copy_strided(self, target)
        else:
            interruptible(lambda: _core.copy_to_host(
                self.device, self.address, self.nbytes, self.stream, as_bytes(target),
                is_pinned(target)), self.keep, target)


def copy_device_memory(memory: DeviceMemory, out, asynchronous):
    """`memory` into a new array or `out`; a Transfer when `asynchronous`.
    Strided memory, and a non-contiguous `out`, are copied before it returns."""
    release_finished()
    result = _result_array(memory.shape, memory.dtype, out)
    if asynchronous and memory.strides is None and result.flags.c_contiguous:
        native = _core.copy_to_host_async(memory.device, memory.address, memory.nbytes,
                                          memory.stream, as_bytes(result), is_pinned(result))
        if memory.after_enqueue is not None:
            memory.after_enqueue()
        return Transfer(native, result, (memory.keep, result))
    memory.copy_into(result)
    return Transfer.finished(result) if asynchronous else result


def _plain_contiguous(torch, t):
    """`t` as plain row-major values on its device, made there (on the current
    stream) only when needed: autograd, layout, conj/neg bits and complex32
    (ZeroTensors and dispatch subclasses never come here: their routes are
    torch's)."""
    if t.requires_grad:
        t = t.detach()
    if t.layout != torch.strided:
        t = t.to_dense()
    t = t.resolve_conj().resolve_neg()
    if _dtypes.needs_widening(t.dtype):
        t = t.to(torch.complex64)
    return t.contiguous()


_MAX_RUNS = 1 << 16  # beyond, a strided copy is better made contiguous on the device


def copy_strided(memory: DeviceMemory, target: np.ndarray) -> None:
    """Copy strided device memory as its contiguous runs (row-major inner
    blocks), packed into one submission, into C-contiguous `target`."""
    shape, strides, itemsize = memory.shape, memory.strides, memory.dtype.itemsize
    # Python ints: a span that does not fit the address space is refused
    # before any int64 arithmetic could wrap around.
    low = sum((n - 1) * stride for n, stride in zip(shape, strides) if stride < 0) * itemsize
    high = sum((n - 1) * stride for n, stride in zip(shape, strides) if stride > 0) * itemsize
    if memory.address + low < 0 or memory.address + high + itemsize > 2**64 or high >= 2**63:
        raise BufferError(
            f"to_numpy: CUDA memory of shape {shape} and strides {strides} (elements) spans byte "
            f"offsets {low} to {high} from its start, beyond the address space; the producer "
            "describes it wrongly")
    inner = len(shape)  # the trailing dimensions [inner:] are compact
    step = 1
    while inner > 0 and (shape[inner - 1] == 1 or strides[inner - 1] == step):
        step *= shape[inner - 1]
        inner -= 1
    outer = shape[:inner]
    runs = int(np.prod(outer, dtype=np.int64))
    if runs > _MAX_RUNS:
        raise BufferError(
            f"to_numpy: CUDA memory of shape {shape} and strides {strides} (elements) falls into "
            f"{runs} separate pieces; make it contiguous in the producer first "
            "(for CuPy: cupy.ascontiguousarray)")
    run_bytes = step * itemsize
    starts = np.zeros(outer, np.int64)
    for axis, (n, stride) in enumerate(zip(outer, strides[:inner])):
        index = np.arange(n, dtype=np.int64).reshape((-1,) + (1,) * (len(outer) - axis - 1))
        starts = starts + index * stride * itemsize
    sources = [(memory.address + int(start), run_bytes) for start in starts.reshape(-1)]
    interruptible(lambda: _core.copy_many_to_host(
        memory.device, sources, memory.stream, as_bytes(target),
        [i * run_bytes for i in range(runs)], is_pinned(target)), memory.keep, target)

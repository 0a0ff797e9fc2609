"""Device memory: pinned helpers, ``Transfer``, and the routes that move CUDA
tensors (torch, CuPy, any DLPack producer) through the native engine.

The engine (``csrc/transfer.cpp``) enqueues every copy on one stream: the one
given as ``stream=``, else the producer's current stream. Python's part is to
find the memory, the stream and the result array, and to keep sources and
destinations alive until the copies that use them have completed, including
when a ``Transfer`` is dropped unawaited.
"""

from __future__ import annotations

import atexit
import collections
import math
import os
import sys
import threading
import time

import numpy as np

from . import _core, _dlpack, _dtypes
from ._out import check_out_matches

CUDA_DEVICE_TYPES = _dlpack.CUDA_DEVICE_TYPES
_LEGACY_STREAM = 1  # DLPack's and the driver's name for the legacy default stream

# -- driver and pinned memory ----------------------------------------------------


def cuda_available() -> bool:
    """Whether a CUDA driver loads and reports at least one GPU. Never raises."""
    try:
        return bool(_core.cuda_available())
    except Exception:  # noqa: BLE001 - the promise is "never raises"
        return False


def cuda_status() -> dict:
    """What tensorbridge found of CUDA on this machine. Never raises.

    Keys: ``available`` (bool), ``library`` (the driver file loaded, or None),
    ``driver_version`` (such as ``"12.2"``, or None), ``device_count`` (int)
    and ``reason`` (why CUDA is unusable; empty when available), e.g. "driver
    12.2 loaded from /usr/lib/x86_64-linux-gnu/libcuda.so.1, but cuInit says
    CUDA_ERROR_NO_DEVICE (no CUDA-capable device is detected)".
    """
    try:
        found = _core.cuda_status()
        version = found["driver_version"]
        return {
            "available": bool(found["available"]),
            "library": found["library"],
            "driver_version": f"{version // 1000}.{version % 1000 // 10}" if version else None,
            "device_count": int(found["device_count"]),
            "reason": str(found["reason"]),
        }
    except Exception as error:  # noqa: BLE001 - the promise is "never raises"
        return {"available": False, "library": None, "driver_version": None, "device_count": 0,
                "reason": f"the CUDA probe failed: {error}"}


def _unusable_cuda_error(caller: str, x, device_id: int) -> BufferError:
    """The error for CUDA memory on a machine where CUDA is unusable."""
    return BufferError(
        f"{caller}: this {type(x).__name__} holds CUDA memory (device {device_id}), but CUDA is "
        f"unusable here: {cuda_status()['reason']}")


_ZERO_STATS = dict.fromkeys(
    ("reserved_bytes", "in_use_bytes", "cached_bytes", "peak_bytes", "limit_bytes",
     "alloc_count", "hit_count"), 0)


def pinned_memory_stats() -> dict:
    """The pinned pool's counters (all zero without a CUDA driver)."""
    if not cuda_available():
        return dict(_ZERO_STATS)
    return _core.pinned_stats()


def empty_pinned_cache() -> None:
    """Free the cached pinned blocks that no copy uses any more."""
    _core.empty_pinned_cache()


def set_pinned_memory_limit(nbytes: int) -> None:
    """Bound the pinned bytes tensorbridge reserves (in use + cached).

    Conversions never fail because of the limit (they stage in smaller
    chunks); only ``empty_pinned`` and pinned ``out=`` arrays can.
    """
    if isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer)):
        raise TypeError(f"set_pinned_memory_limit: nbytes must be an int, got {nbytes!r}")
    if nbytes < 0:
        raise ValueError(f"set_pinned_memory_limit: nbytes must be >= 0, got {nbytes}")
    if nbytes >= 2**64:
        raise ValueError(f"set_pinned_memory_limit: nbytes={nbytes} does not fit in 64 bits; "
                         "pass at most the machine's memory (2**64 - 1 means no limit)")
    _core.set_pinned_limit(int(nbytes))


def empty_pinned(shape, dtype) -> np.ndarray:
    """An uninitialised array in page-locked memory, from tensorbridge's pool.

    Copies between it and a GPU run at link speed and asynchronously. Its
    block returns to the pool when the array (and every view of it) is gone.
    """
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    if any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0 for n in shape):
        raise ValueError(f"empty_pinned: shape must hold non-negative ints, got {shape}")
    nbytes = math.prod(int(n) for n in shape) * dtype.itemsize  # Python ints: no overflow
    if nbytes >= 2**63:
        raise ValueError(f"empty_pinned: shape {shape} of {dtype} needs {nbytes} bytes, more than "
                         "any machine's memory; ask for a smaller shape")
    status = cuda_status()
    if not status["available"]:
        raise RuntimeError(f"empty_pinned: pinned memory needs a usable CUDA driver: "
                           f"{status['reason']}; use numpy.empty on machines without a GPU")
    try:
        buffer = _core.PinnedBuffer(max(nbytes, 1))
    except MemoryError as error:
        raise MemoryError(f"empty_pinned: {error}") from error
    return np.frombuffer(buffer, np.uint8, count=nbytes).view(dtype).reshape(shape)


def is_pinned(array: np.ndarray) -> bool:
    """Whether `array` views memory of an ``empty_pinned`` block."""
    owner = array
    while owner is not None:
        if isinstance(owner, _core.PinnedBuffer):
            return True
        owner = owner.obj if isinstance(owner, memoryview) else getattr(owner, "base", None)
    return False


# -- Transfer ------------------------------------------------------------------

# Copies whose Transfer was dropped (or whose call was interrupted) before
# they completed, with what they use: (native transfer, objects to keep
# alive). Appending takes no lock (deque.append is atomic), so that
# Transfer.__del__ may run anywhere, inside a garbage collection that
# interrupted a sweep included; sweeps skip when one is already under way.
_in_flight: collections.deque = collections.deque()
_sweeping = threading.Lock()


def keep_alive_until_done(native, *objects) -> None:
    if native is not None and not native.done():
        _in_flight.append((native, objects))


def release_finished() -> None:
    """Let go of what finished dropped transfers kept alive."""
    if not _sweeping.acquire(blocking=False):
        return
    try:
        # An entry leaves the deque only once done: an exception raised
        # anywhere in here (Ctrl-C) never drops one still in flight.
        for _ in range(len(_in_flight)):
            if _in_flight[0][0].done():
                _in_flight.popleft()
            else:
                _in_flight.rotate(-1)
    finally:
        _sweeping.release()


@atexit.register
def _finish_copies_in_flight() -> None:
    # At interpreter exit, let every copy complete (and its completion thread
    # finish writing) before the memory it uses goes: awaited or not. In
    # slices, so that a second Ctrl-C still ends a wait on a hung device.
    while not _core.wait_for_all_transfers(_WAIT_SLICE_SECONDS):
        pass
    _in_flight.clear()


# A forked child's main thread is the one that forked.
os.register_at_fork(after_in_child=_core.init_interrupts)


def _interruptible(copy, *keep):
    """Run a synchronous native copy; when a signal handler stops it (Ctrl-C),
    keep `keep` alive until the copies it left in flight complete, then let
    the handler's exception through."""
    try:
        return copy()
    except BaseException:
        keep_alive_until_done(_core.take_interrupted(), *keep)
        raise


_WAIT_SLICE_SECONDS = 0.25  # Ctrl-C is seen between slices


class Transfer:
    """A device-to-host copy in progress, from :func:`to_numpy_async`.

    ``done()`` never blocks; ``wait(timeout=None)`` (alias ``result()``)
    returns the array, or raises the copy's error (``RuntimeError`` with the
    driver's text) or ``TimeoutError``. Dropping a Transfer unawaited is safe:
    its source and destination stay alive until the copy has completed.
    """

    __slots__ = ("_native", "_array", "_keep")

    def __init__(self, native, array, keep=()):
        self._native = native
        self._array = array
        self._keep = keep

    @classmethod
    def finished(cls, array) -> "Transfer":
        return cls(None, array)

    def done(self) -> bool:
        """Whether the copy has finished (successfully or not). Never blocks."""
        return self._native is None or self._native.done()

    def wait(self, timeout=None) -> np.ndarray:
        """The array, once the copy has finished (the GIL is released while
        waiting). Raises TimeoutError after `timeout` seconds, or
        RuntimeError with the driver's text if the copy failed."""
        if self._native is not None:
            seconds = math.inf if timeout is None else float(timeout)
            if not seconds >= 0:
                raise ValueError(f"Transfer.wait: timeout must be >= 0 or None, got {timeout!r}")
            deadline = time.monotonic() + seconds
            # In slices, so that Ctrl-C raises KeyboardInterrupt in between
            # (the copy goes on; this Transfer keeps its buffers alive).
            while not self._native.wait(min(_WAIT_SLICE_SECONDS,
                                             max(deadline - time.monotonic(), 0.0))):
                if time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"Transfer.wait: the copy did not finish within {timeout} s")
            error = self._native.error()
            if error:
                raise RuntimeError(f"Transfer.wait: the device copy failed: {error}")
            self._keep = ()
        return self._array

    result = wait

    def __repr__(self) -> str:
        state = "done" if self.done() else "in flight"
        return f"<tensorbridge.Transfer {state}, {self._array.shape} {self._array.dtype}>"

    def __del__(self):
        native = getattr(self, "_native", None)
        if native is not None and not native.done():
            keep_alive_until_done(native, self._array, self._keep)


# -- streams -------------------------------------------------------------------


def stream_handle(stream) -> int:
    """The CUstream handle for `stream`: an int, a torch or CuPy stream, or
    any object with ``__cuda_stream__``."""
    if isinstance(stream, bool):
        raise TypeError(f"to_numpy: stream must be a CUDA stream, got {stream!r}")
    if isinstance(stream, (int, np.integer)):
        if stream < 0:
            raise ValueError(f"to_numpy: stream handle must be >= 0, got {stream}")
        return int(stream)
    if hasattr(stream, "__cuda_stream__"):
        return int(stream.__cuda_stream__()[1])
    for attribute in ("cuda_stream", "ptr"):  # torch.cuda.Stream, cupy.cuda.Stream
        handle = getattr(stream, attribute, None)
        if isinstance(handle, (int, np.integer)):
            return int(handle)
    raise TypeError(
        f"to_numpy: stream must be a torch or CuPy stream, an object with __cuda_stream__, or "
        f"an int CUstream handle; got {type(stream).__name__}"
    )


def check_stream_device(stream, device: int, caller: str = "to_numpy") -> None:
    """Refuse a torch or CuPy stream of another device than the memory's: an
    event of one device cannot be recorded on another's stream (an int
    handle carries no device, and is trusted)."""
    if stream is None or isinstance(stream, (int, np.integer)):
        return
    torch_device = getattr(stream, "device", None)
    index = getattr(torch_device, "index", None)
    if index is None:
        index = getattr(stream, "device_id", None)  # cupy.cuda.Stream
    if isinstance(index, (int, np.integer)) and int(index) != device:
        raise ValueError(f"{caller}: stream is on cuda:{int(index)}, but the memory is on "
                         f"cuda:{device}; pass a stream of cuda:{device}")


def _producer_stream(device: int) -> int:
    """The current stream of the library that made a tensor, if we know it."""
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        with cupy.cuda.Device(device):
            return int(cupy.cuda.get_current_stream().ptr) or _LEGACY_STREAM
    return _LEGACY_STREAM


# -- device -> host ----------------------------------------------------------------


def _result_array(shape, dtype, out):
    """A new array for the result, or `out` once it is checked to fit."""
    if out is None:
        return np.empty(shape, dtype)
    check_out_matches(out, shape, dtype)
    return out


def _as_bytes(array: np.ndarray) -> np.ndarray:
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
    def described_in_c(cls, x):
        """Plain compact CUDA memory that the native core reads through the
        DLPack C exchange API (a torch CUDA tensor), on the producer's
        current stream; None for anything else."""
        described = _core.describe_device(x)
        if described is None:
            return None
        device, stream, address, shape, dtype = described
        return cls(device, stream, address, shape, None, dtype, x)

    @classmethod
    def of_tensor(cls, torch, t, stream=None):
        """A torch CUDA tensor, made plain and contiguous on its device first
        (on the copy's stream) when it needs to be.

        On a given stream other than torch's current one, the copy is ordered
        after both streams' work (as torch's own ``__dlpack__(stream)`` does),
        and the current stream waits for the copy before its later kernels
        can overwrite the source."""
        device = t.device.index if t.device.index is not None else torch.cuda.current_device()
        check_stream_device(stream, device)
        current = torch.cuda.current_stream(device)
        handle = current.cuda_stream
        if stream is None or stream_handle(stream) == handle:
            t = _plain_contiguous(torch, t)
            return cls(device, handle, t.data_ptr(), t.shape, None, _dtypes.numpy_dtype(t.dtype), t)
        given = torch.cuda.ExternalStream(stream_handle(stream),
                                          device=torch.device("cuda", device))
        given.wait_stream(current)
        with torch.cuda.stream(given):
            t = _plain_contiguous(torch, t)
        return cls(device, given.cuda_stream, t.data_ptr(), t.shape, None,
                   _dtypes.numpy_dtype(t.dtype), t,
                   after_enqueue=lambda: current.wait_stream(given))

    @classmethod
    def of_dlpack(cls, x, device_id, stream=None, caller="to_numpy"):
        """Any DLPack producer in CUDA memory (BufferError, saying why, when
        CUDA is unusable here)."""
        if not cuda_available():
            raise _unusable_cuda_error(caller, x, device_id)
        check_stream_device(stream, device_id, caller)
        handle = stream_handle(stream) if stream is not None else _producer_stream(device_id)
        # The consumer names its stream: the producer orders its pending work
        # before anything we enqueue there.
        capsule = _dlpack.request_capsule(x, stream=handle)
        owner, _, device, address, shape, strides, dtype, name = _core.describe_capsule(capsule)
        if dtype is None:
            raise TypeError(f"{caller}: this {type(x).__name__} holds {name}, which has no "
                            "NumPy dtype; convert it in the producer first")
        return cls(device, handle, address, shape, strides, dtype, owner)

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
            _interruptible(lambda: _core.copy_to_host(
                self.device, self.address, self.nbytes, self.stream, _as_bytes(target),
                is_pinned(target)), self.keep, target)


def copy_device_memory(memory: DeviceMemory, out, asynchronous):
    """`memory` into a new array or `out`; a Transfer when `asynchronous`.
    Strided memory, and a non-contiguous `out`, are copied before it returns."""
    release_finished()
    result = _result_array(memory.shape, memory.dtype, out)
    if asynchronous and memory.strides is None and result.flags.c_contiguous:
        native = _core.copy_to_host_async(memory.device, memory.address, memory.nbytes,
                                          memory.stream, _as_bytes(result), is_pinned(result))
        if memory.after_enqueue is not None:
            memory.after_enqueue()
        return Transfer(native, result, (memory.keep, result))
    memory.copy_into(result)
    return Transfer.finished(result) if asynchronous else result


def device_memory(x, stream=None, caller="to_numpy"):
    """`x`'s CUDA memory as the engine copies it, or None for host memory: a
    plain torch CUDA tensor described in C (without `stream`), any other torch
    CUDA tensor, and any DLPack producer in CUDA memory."""
    if type(x) is np.ndarray:
        return None
    memory = DeviceMemory.described_in_c(x) if stream is None else None
    if memory is not None:
        return memory
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return DeviceMemory.of_tensor(torch, x, stream) if x.is_cuda else None
    device = _dlpack.device_of(x)
    if device is None or device[0] not in CUDA_DEVICE_TYPES:
        return None
    return DeviceMemory.of_dlpack(x, device[1], stream, caller)


def _plain_contiguous(torch, t):
    """`t` as plain row-major values on its device, made there (on the current
    stream) only when needed: autograd, layout, conj/neg bits, complex32, and
    ZeroTensors (no memory behind them: zeros are made)."""
    if t.requires_grad:
        t = t.detach()
    if t.layout != torch.strided:
        t = t.to_dense()
    elif t._is_zerotensor():
        t = torch.zeros(t.shape, dtype=t.dtype, device=t.device)
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
    _interruptible(lambda: _core.copy_many_to_host(
        memory.device, sources, memory.stream, _as_bytes(target),
        [i * run_bytes for i in range(runs)]), memory.keep)


# -- host -> device ----------------------------------------------------------------


def to_device(a, device, *, dtype=None, stream=None):
    """Copy host data to a torch tensor on `device`, through pinned staging.

    ``a`` is anything :func:`to_numpy` takes; ``dtype`` (a torch dtype)
    converts on the host first. The copy is enqueued on ``stream`` (default:
    torch's current stream on that device) and the call returns once the host
    memory may be reused; like ``non_blocking=True``, but never reading
    memory that changes afterwards. ``device="cpu"`` gives a CPU tensor that
    shares ``a``'s memory where it can, as ``torch.as_tensor`` does.
    """
    import torch

    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"to_device: device={device!r} is not a torch device; use 'cuda', "
                         "'cuda:N' or 'cpu'") from error
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise TypeError(f"to_device: dtype must be a torch dtype such as torch.float16, "
                        f"got {dtype!r}")
    if target.type == "cpu":
        return _to_cpu_tensor(torch, a, dtype)
    if target.type != "cuda":
        raise ValueError(f"to_device: device must be a CUDA device or the CPU, got "
                         f"{str(target)!r}; for other devices use torch's own .to()")
    status = cuda_status()
    if not status["available"] or not torch.cuda.is_available():
        ours = "usable" if status["available"] else f"unusable ({status['reason']})"
        raise RuntimeError(f"to_device: no usable CUDA GPU for {str(target)!r}: tensorbridge "
                           f"finds CUDA {ours}; torch.cuda.is_available() is "
                           f"{torch.cuda.is_available()}; use device='cpu' here")
    index = target.index if target.index is not None else torch.cuda.current_device()
    release_finished()
    if isinstance(a, torch.Tensor) and a.is_cuda:
        return a.to(device=torch.device("cuda", index), dtype=dtype)
    source = _dtypes.tensor_over(torch, np.ascontiguousarray(_core.to_numpy(a)))
    if dtype is not None:
        source = source.to(dtype)  # on the host; `source` itself when it already is
    host = _core.to_numpy(source)  # contiguous: a view
    result = torch.empty(source.shape, dtype=source.dtype, device=torch.device("cuda", index))
    handle = (stream_handle(stream) if stream is not None
              else torch.cuda.current_stream(index).cuda_stream)
    native = _core.copy_to_device(_as_bytes(host), is_pinned(host), index, result.data_ptr(),
                                  host.nbytes, handle)
    keep_alive_until_done(native, host)
    return result


def _to_cpu_tensor(torch, a, dtype):
    if isinstance(a, torch.Tensor):
        return a.to(device="cpu", dtype=dtype)
    host = _core.to_numpy(a)  # the public fast path
    if not host.flags.writeable or any(stride < 0 for stride in host.strides):
        host = host.copy()  # torch tensors are writeable and cannot step backwards
    tensor = _dtypes.tensor_over(torch, host)
    return tensor if dtype is None else tensor.to(dtype)

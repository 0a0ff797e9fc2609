"""CUDA streams as callers name them: handles, torch and CuPy streams, and
the producer's current stream."""

from __future__ import annotations

import sys

import numpy as np

LEGACY_STREAM = 1  # DLPack's and the driver's name for the legacy default stream


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


def check_stream_device(stream, device: int) -> None:
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
        raise ValueError(f"to_numpy: stream is on cuda:{int(index)}, but the memory is on "
                         f"cuda:{device}; pass a stream of cuda:{device}")


def producer_stream(device: int) -> int:
    """The current stream of the library that made a tensor, if we know it."""
    cupy = sys.modules.get("cupy")
    if cupy is not None:
        with cupy.cuda.Device(device):
            return int(cupy.cuda.get_current_stream().ptr) or LEGACY_STREAM
    return LEGACY_STREAM

"""Host data to a torch tensor on a device, through pinned staging."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _convert, _core, _driver, _dtypes, _streams
from ._device_memory import as_bytes
from ._pinned import is_pinned
from ._transfer import keep_alive_until_done, release_finished


def to_device(a: Any, device: Any, *, dtype: Any = None, stream: Any = None) -> Any:
    """Copy host data to a torch tensor on `device`, through pinned staging.

    The copy is enqueued on ``stream`` and the call returns once the host
    memory may be reused: like ``non_blocking=True``, but never reading
    memory that changes afterwards.

    Parameters
    ----------
    a : array-like
        Anything :func:`to_numpy` takes.
    device : str or torch.device
        ``"cuda"``, ``"cuda:N"`` or ``"cpu"`` (a CPU tensor that shares
        `a`'s memory where it can, as ``torch.as_tensor`` does).
    dtype : torch.dtype, optional
        Converted to on the host first.
    stream : optional
        The stream to order the copy on (default: torch's current stream on
        that device).

    Returns
    -------
    torch.Tensor

    Raises
    ------
    ValueError
        For a device that is not a torch device, the CPU or CUDA.
    RuntimeError
        For a CUDA device on a machine where CUDA is unusable, saying why.

    Examples
    --------
    >>> import numpy as np, torch, tensorbridge as tb
    >>> tb.to_device(np.arange(3), "cpu")
    tensor([0, 1, 2])
    >>> tb.to_device(np.arange(3), "cuda", dtype=torch.float16)  # doctest: +SKIP
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
    status = _driver.cuda_status()
    if not status["available"] or not torch.cuda.is_available():
        ours = "usable" if status["available"] else f"unusable ({status['reason']})"
        raise RuntimeError(f"to_device: no usable CUDA GPU for {str(target)!r}: tensorbridge "
                           f"finds CUDA {ours}; torch.cuda.is_available() is "
                           f"{torch.cuda.is_available()}; use device='cpu' here")
    index = target.index if target.index is not None else torch.cuda.current_device()
    release_finished()
    if isinstance(a, torch.Tensor) and a.is_cuda:
        return a.to(device=torch.device("cuda", index), dtype=dtype)
    source = _dtypes.tensor_over(torch, np.ascontiguousarray(_host_array(a)))
    if dtype is not None:
        source = source.to(dtype)  # on the host; `source` itself when it already is
    host = _core.to_numpy(source)  # contiguous: a view
    result = torch.empty(source.shape, dtype=source.dtype, device=torch.device("cuda", index))
    handle = (_streams.stream_handle(stream) if stream is not None
              else torch.cuda.current_stream(index).cuda_stream)
    native = _core.copy_to_device(as_bytes(host), is_pinned(host), index, result.data_ptr(),
                                  host.nbytes, handle)
    keep_alive_until_done(native, host)
    return result


def _to_cpu_tensor(torch, a, dtype):
    if isinstance(a, torch.Tensor):
        return a.to(device="cpu", dtype=dtype)
    host = _host_array(a)
    if not host.flags.writeable or any(stride < 0 for stride in host.strides):
        host = host.copy()  # torch tensors are writeable and cannot step backwards
    tensor = _dtypes.tensor_over(torch, host)
    return tensor if dtype is None else tensor.to(dtype)


def _host_array(a):
    """``to_numpy(a)`` (the public fast path), its errors naming to_device."""
    try:
        return _core.to_numpy(a)
    except (TypeError, ValueError, BufferError) as error:
        renamed = _convert.as_callers_error(error, "to_device")
        if renamed is None:
            raise
        raise renamed from error

"""The CUDA driver as tensorbridge found it: loaded on first use, never required."""

from __future__ import annotations

from typing import TypedDict

from . import _core


class CudaStatus(TypedDict):
    """What :func:`cuda_status` reports."""

    available: bool
    library: str | None
    driver_version: str | None
    device_count: int
    reason: str


def cuda_available() -> bool:
    """Whether a CUDA driver loads and reports at least one GPU.

    Never raises. The driver is loaded (with ``dlopen``) on the first call;
    no CUDA toolkit is needed.

    Returns
    -------
    bool
        True when GPU copies can run here.

    See Also
    --------
    cuda_status : why CUDA is unusable, when it is.

    Examples
    --------
    >>> import tensorbridge as tb
    >>> isinstance(tb.cuda_available(), bool)
    True
    """
    try:
        return bool(_core.cuda_available())
    except Exception:  # noqa: BLE001 - the promise is "never raises"
        return False


def cuda_status() -> CudaStatus:
    """What tensorbridge found of CUDA on this machine. Never raises.

    Returns
    -------
    dict
        ``available`` (bool), ``library`` (the driver file loaded, or None),
        ``driver_version`` (such as ``"12.2"``, or None), ``device_count``
        (int) and ``reason`` (why CUDA is unusable; empty when available),
        e.g. "driver 12.2 loaded from /usr/lib/x86_64-linux-gnu/libcuda.so.1,
        but cuInit says CUDA_ERROR_NO_DEVICE (no CUDA-capable device is
        detected)".

    Examples
    --------
    >>> import tensorbridge as tb
    >>> status = tb.cuda_status()
    >>> sorted(status)
    ['available', 'device_count', 'driver_version', 'library', 'reason']
    >>> status["available"] or status["reason"] != ""
    True
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


def unusable_cuda_error(x, device_id: int) -> BufferError:
    """The error for CUDA memory on a machine where CUDA is unusable."""
    return BufferError(
        f"to_numpy: this {type(x).__name__} holds CUDA memory (device {device_id}), but CUDA is "
        f"unusable here: {cuda_status()['reason']}")

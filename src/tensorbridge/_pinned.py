"""Page-locked host memory: blocks of tensorbridge's pool, users' own arrays
pinned in place (:func:`pin`), and their counters."""

from __future__ import annotations

import math
import types

import numpy as np
import numpy.typing as npt

from . import _core, _driver


def pinned_memory_stats() -> dict[str, int]:
    """The pinned pool's counters, and the bytes pinned in place (all zero
    without a usable CUDA driver).

    ``reserved_bytes``, ``in_use_bytes``, ``cached_bytes``, ``peak_bytes``,
    ``limit_bytes``, ``alloc_count`` and ``hit_count`` are the pool's alone.
    ``registered_bytes`` is what :func:`pin` holds page-locked right now:
    arrays whose handle is open, and closed ones whose copies in flight have
    not completed yet; 0 again once every handle is closed and those copies
    are done.

    Examples
    --------
    >>> import tensorbridge as tb
    >>> sorted(tb.pinned_memory_stats())  # doctest: +NORMALIZE_WHITESPACE
    ['alloc_count', 'cached_bytes', 'hit_count', 'in_use_bytes', 'limit_bytes',
     'peak_bytes', 'registered_bytes', 'reserved_bytes']
    """
    stats = {**_core.pinned_stats(), "registered_bytes": _core.registered_bytes()}
    return stats if _driver.cuda_available() else dict.fromkeys(stats, 0)


def empty_pinned_cache() -> None:
    """Free the cached pinned blocks that no copy uses any more.

    Blocks in use (by a copy in flight or an :func:`empty_pinned` array) stay.

    Examples
    --------
    >>> import tensorbridge as tb
    >>> tb.empty_pinned_cache()
    >>> tb.pinned_memory_stats()["cached_bytes"]
    0
    """
    _core.empty_pinned_cache()


def set_pinned_memory_limit(nbytes: int) -> None:
    """Bound the pinned bytes tensorbridge reserves (in use + cached).

    Conversions never fail because of the limit (they stage in smaller
    chunks); only ``empty_pinned`` and pinned ``out=`` arrays can.

    Parameters
    ----------
    nbytes : int
        The bound, ``0 <= nbytes < 2**64``; ``2**64 - 1`` means none.

    Raises
    ------
    TypeError
        For a non-integer `nbytes`.
    ValueError
        For a negative one, or one beyond 64 bits.

    Examples
    --------
    >>> import tensorbridge as tb
    >>> tb.set_pinned_memory_limit(2 << 30)  # 2 GiB
    """
    if isinstance(nbytes, bool) or not isinstance(nbytes, (int, np.integer)):
        raise TypeError(f"set_pinned_memory_limit: nbytes must be an int, got {nbytes!r}")
    if nbytes < 0:
        raise ValueError(f"set_pinned_memory_limit: nbytes must be >= 0, got {nbytes}")
    if nbytes >= 2**64:
        raise ValueError(f"set_pinned_memory_limit: nbytes={nbytes} does not fit in 64 bits; "
                         "pass at most the machine's memory (2**64 - 1 means no limit)")
    _core.set_pinned_limit(int(nbytes))


def empty_pinned(shape: int | tuple[int, ...], dtype: npt.DTypeLike) -> np.ndarray:
    """An uninitialised array in page-locked memory, from tensorbridge's pool.

    Copies between it and a GPU run at link speed and asynchronously. Its
    block returns to the pool when the array (and every view of it) is gone.

    Parameters
    ----------
    shape : int or tuple of int
        Non-negative sizes.
    dtype : data-type
        Any NumPy dtype.

    Returns
    -------
    numpy.ndarray
        C-contiguous, writeable, uninitialised.

    Raises
    ------
    RuntimeError
        Without a usable CUDA driver (the message says why, in
        :func:`cuda_status`'s words).
    MemoryError
        When the pinned limit (:func:`set_pinned_memory_limit`) or the
        machine refuses the bytes.

    Examples
    --------
    >>> import torch, tensorbridge as tb
    >>> host = tb.empty_pinned((1024, 1024), "float32")  # doctest: +SKIP
    >>> tb.to_numpy(torch.ones(1024, 1024, device="cuda"), out=host)  # doctest: +SKIP
    """
    try:
        dtype = np.dtype(dtype)
    except TypeError as error:
        raise TypeError(f"empty_pinned: dtype {dtype!r} is not a NumPy dtype ({error})") from error
    if dtype.hasobject:
        raise TypeError(f"empty_pinned: dtype {dtype} holds Python objects, which cannot live in "
                        "pinned memory; use a numeric dtype")
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    if any(isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0 for n in shape):
        raise ValueError(f"empty_pinned: shape must hold non-negative ints, got {shape}")
    nbytes = math.prod(int(n) for n in shape) * dtype.itemsize  # Python ints: no overflow
    if nbytes >= 2**63:
        raise ValueError(f"empty_pinned: shape {shape} of {dtype} needs {nbytes} bytes, more than "
                         "any machine's memory; ask for a smaller shape")
    status = _driver.cuda_status()
    if not status["available"]:
        raise RuntimeError(f"empty_pinned: pinned memory needs a usable CUDA driver: "
                           f"{status['reason']}; use numpy.empty on machines without a GPU")
    try:
        buffer = _core.PinnedBuffer(max(nbytes, 1))
    except MemoryError as error:
        raise MemoryError(f"empty_pinned: {error}") from error
    return np.frombuffer(buffer, np.uint8, count=nbytes).view(dtype).reshape(shape)


def is_pinned(array: np.ndarray) -> bool:
    """Whether `array` views memory of an ``empty_pinned`` block (the engine
    itself recognises arrays pinned in place, by address)."""
    owner = array
    while owner is not None:
        if isinstance(owner, _core.PinnedBuffer):
            return True
        owner = owner.obj if isinstance(owner, memoryview) else getattr(owner, "base", None)
    return False


def pin(array: np.ndarray) -> PinHandle:
    """Page-lock an existing array where it is, for copies at link speed.

    GPU copies into (and out of) a pinned array need no staging through
    pinned blocks: ``to_numpy(x, out=a)``, ``to_numpy_async(x, out=a)``,
    ``collect(batches, out=a)`` and ``to_device(a, "cuda")`` copy straight
    into or out of it, and an asynchronous copy returns at once. Any view of
    its memory counts. Page-locking is done once (with ``cuMemHostRegister``,
    portable: pinned for every GPU) and costs time in proportion to the size,
    like allocating pinned memory; pin an array you copy into again and again.

    The returned handle keeps `array` alive and unpins it on
    :meth:`PinHandle.close`, at the end of a ``with`` block, or when the
    handle is collected; never while a copy into (or out of) it is still in
    flight: then it is unpinned once the last such copy has completed. After
    ``os.fork``, a child's copies of the handles are inert: closing them
    leaves the parent's pins as they are.

    Parameters
    ----------
    array : numpy.ndarray
        Writeable, contiguous (C or Fortran order), non-empty, of a dtype
        without Python objects, and sharing no byte with an array already
        pinned (in place, or from :func:`empty_pinned`).

    Returns
    -------
    PinHandle

    Raises
    ------
    TypeError
        For anything but a NumPy array, or an object dtype.
    ValueError
        For a read-only, non-contiguous or empty array, or one whose memory
        overlaps memory already pinned (the message names both ranges).
    RuntimeError
        Without a usable CUDA driver (the message says why, in
        :func:`cuda_status`'s words), with a driver that lacks
        ``cuMemHostRegister``, or when the driver refuses (its own text).

    See Also
    --------
    empty_pinned : a new array in memory of tensorbridge's pinned pool.
    pinned_memory_stats : ``registered_bytes``, the bytes pinned in place.

    Examples
    --------
    >>> import numpy as np, torch, tensorbridge as tb
    >>> out = np.empty((4096, 1024), np.float32)  # an array kept across copies
    >>> with tb.pin(out):  # doctest: +SKIP
    ...     for step in range(3):
    ...         t = torch.full((4096, 1024), float(step), device="cuda")
    ...         tb.to_numpy(t, out=out)  # straight into it: no staging
    ...         print(out.sum())
    0.0
    4194304.0
    8388608.0
    """
    if not isinstance(array, np.ndarray):
        raise TypeError(f"pin: array must be a numpy.ndarray, got {type(array).__name__}; "
                        "convert it first (tensorbridge.to_numpy) and pin the result")
    if array.dtype.hasobject:
        raise TypeError(f"pin: array has dtype {array.dtype}, which holds Python objects; "
                        "only arrays of numeric dtypes can receive GPU copies")
    if not array.flags.writeable:
        raise ValueError("pin: array is read-only; pin a writeable array (copies write into it)")
    if not (array.flags.c_contiguous or array.flags.f_contiguous):
        raise ValueError(f"pin: array of shape {array.shape} and strides {array.strides} is not "
                         "contiguous; pin the contiguous array it is a view of (its views are "
                         "pinned with it), or a contiguous copy")
    if array.nbytes == 0:
        raise ValueError(f"pin: array of shape {array.shape} is empty; there is nothing to pin")
    if is_pinned(array):
        raise ValueError("pin: array is in memory of tensorbridge's pinned pool (from "
                         "empty_pinned), which is pinned already; use it as it is")
    status = _driver.cuda_status()
    if not status["available"]:
        raise RuntimeError(f"pin: pinning memory needs a usable CUDA driver: {status['reason']}; "
                           "without a GPU there is no copy to speed up, so use the array as it is")
    try:
        native = _core.PinnedRange(array)
    except ValueError as error:  # an overlap, named by the native registry
        raise ValueError(f"pin: {error}") from None
    except RuntimeError as error:  # the driver's refusal, or its lack of the entry points
        raise RuntimeError(f"pin: {error}") from error
    return PinHandle(array, native)


class PinHandle:
    """An array pinned in place by :func:`pin`; unpins it when closed.

    ``close()`` (or the end of a ``with`` block, or the handle collected)
    unpins the array at once, or, while copies into or out of it are in
    flight, as soon as the last of them completes; copies started after
    ``close()`` go through staging as for any array. Closing twice is
    harmless.

    Attributes
    ----------
    array : numpy.ndarray
        The pinned array, kept alive by the handle.
    nbytes : int
        The bytes pinned.
    closed : bool
        Whether :meth:`close` was called (the memory may stay pinned a little
        longer, until copies in flight complete).

    Examples
    --------
    >>> import numpy as np, tensorbridge as tb
    >>> out = np.empty((1024, 1024), np.float32)
    >>> handle = tb.pin(out)  # doctest: +SKIP
    >>> handle  # doctest: +SKIP
    <tensorbridge.PinHandle of (1024, 1024) float32, 4194304 bytes, pinned>
    >>> handle.close()  # doctest: +SKIP
    """

    __slots__ = ("_array", "_native")

    def __init__(self, array: np.ndarray, native: _core.PinnedRange) -> None:
        self._array = array
        self._native = native

    @property
    def array(self) -> np.ndarray:
        """The array pinned (still the caller's after :meth:`close`, no longer pinned)."""
        return self._array

    @property
    def nbytes(self) -> int:
        """The bytes pinned: the array's ``nbytes``."""
        return self._native.nbytes

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran (the memory stays pinned until copies in flight end)."""
        return self._native.closed

    def close(self) -> None:
        """Unpin the array now, or once the copies in flight that use it complete.

        Raises
        ------
        RuntimeError
            With the driver's text, when it refuses to unpin (the handle is
            closed all the same).

        Examples
        --------
        >>> import numpy as np, tensorbridge as tb
        >>> handle = tb.pin(np.zeros(1 << 20, np.uint8))  # doctest: +SKIP
        >>> handle.close(); handle.closed  # doctest: +SKIP
        True
        """
        try:
            self._native.close()
        except RuntimeError as error:
            raise RuntimeError(f"PinHandle.close: {error}") from error

    def __enter__(self) -> PinHandle:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: types.TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "pinned"
        return (f"<tensorbridge.PinHandle of {self._array.shape} {self._array.dtype}, "
                f"{self.nbytes} bytes, {state}>")

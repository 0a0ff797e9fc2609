"""Page-locked host memory from tensorbridge's pool, and its counters."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from . import _core, _driver


def pinned_memory_stats() -> dict[str, int]:
    """The pinned pool's counters (all zero without a usable CUDA driver).

    Examples
    --------
    >>> import tensorbridge as tb
    >>> sorted(tb.pinned_memory_stats())  # doctest: +NORMALIZE_WHITESPACE
    ['alloc_count', 'cached_bytes', 'hit_count', 'in_use_bytes', 'limit_bytes',
     'peak_bytes', 'reserved_bytes']
    """
    stats = _core.pinned_stats()  # the keys are the native pool's
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
    """Whether `array` views memory of an ``empty_pinned`` block."""
    owner = array
    while owner is not None:
        if isinstance(owner, _core.PinnedBuffer):
            return True
        owner = owner.obj if isinstance(owner, memoryview) else getattr(owner, "base", None)
    return False

"""``Transfer`` and the copies still in flight: what keeps their sources and
destinations alive until they complete, awaited or not, Ctrl-C included."""

from __future__ import annotations

import atexit
import collections
import math
import numbers
import os
import threading
import time

import numpy as np

from . import _core

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


def interruptible(copy, *keep):
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

    Examples
    --------
    >>> import torch, tensorbridge as tb
    >>> transfer = tb.to_numpy_async(torch.zeros(2))  # host memory: finished at once
    >>> transfer
    <tensorbridge.Transfer done, (2,) float32>
    >>> transfer.wait()
    array([0., 0.], dtype=float32)
    """

    __slots__ = ("_native", "_array", "_keep")

    def __init__(self, native, array, keep=()):
        self._native = native
        self._array = array
        self._keep = keep

    @classmethod
    def finished(cls, array: np.ndarray) -> Transfer:
        """A Transfer of an array that is already there."""
        return cls(None, array)

    def done(self) -> bool:
        """Whether the copy has finished (successfully or not). Never blocks."""
        return self._native is None or self._native.done()

    def wait(self, timeout: float | None = None) -> np.ndarray:
        """The array, once the copy has finished (the GIL is released while
        waiting).

        Parameters
        ----------
        timeout : float or None
            Seconds to wait at most; None waits as long as the copy takes.

        Raises
        ------
        TimeoutError
            After `timeout` seconds; the copy goes on, and this Transfer
            can be waited on again.
        RuntimeError
            With the driver's text, if the copy failed.
        """
        if timeout is not None and (isinstance(timeout, bool)
                                    or not isinstance(timeout, numbers.Real)):
            raise TypeError(f"Transfer.wait: timeout must be a number of seconds or None, "
                            f"got {timeout!r}")
        seconds = math.inf if timeout is None else float(timeout)
        if not seconds >= 0:  # NaN included
            raise ValueError(f"Transfer.wait: timeout must be >= 0 or None, got {timeout!r}")
        if self._native is not None:
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

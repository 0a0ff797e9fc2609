"""``Transfer`` and the copies still in flight: what keeps their sources and
destinations alive until they complete, awaited or not, Ctrl-C included."""

from __future__ import annotations

import atexit
import collections
import concurrent.futures
import itertools
import math
import numbers
import os
import threading
import time
import weakref

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
    _stop_notifier()


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

# -- completing the futures -------------------------------------------------------
#
# One notifier thread per process completes every Transfer's future: the
# engine's completion threads post a finished copy's token (csrc/transfer.h,
# take_finished), and the notifier, waiting for them with the GIL released,
# sets the result and runs the callbacks. Simpler than taking the GIL on the
# completion threads (which would then wait for it, run users' callbacks, and
# need care at interpreter exit), and one thread for any number of copies,
# where a watcher per Transfer would be one each. Transfer.wait() waits for
# the copy itself, never for the notifier: a callback that waits for another
# Transfer cannot hang it.

_STOP = 0  # the token that ends the notifier; Transfers count from 1
_tokens = itertools.count(1)
# token -> the Transfer, weakly (a dropped one is kept alive by __del__, as
# before, not by its future), or strongly once it has callbacks to run.
_watched: dict = {}
_lock = threading.Lock()  # guards _watched, _notifier and _closing
_notifier: threading.Thread | None = None
_closing = False  # at interpreter exit: no new notifier


def _watch(transfer: Transfer) -> int | None:
    global _notifier
    with _lock:
        if _closing:  # a copy started by a later exit handler: never notified
            return None
        token = next(_tokens)
        _watched[token] = weakref.ref(transfer)
        if _notifier is None:
            _notifier = threading.Thread(target=_notify, name="tensorbridge-transfers",
                                         daemon=True)
            _notifier.start()
    transfer._native.post_when_done(token)
    return token


def _keep_until_notified(token: int, transfer: Transfer) -> None:
    with _lock:
        if token in _watched:
            _watched[token] = transfer


def _notify() -> None:
    while True:
        for token in _core.take_finished():  # waits with the GIL released
            if token == _STOP:
                return
            with _lock:
                entry = _watched.pop(token, None)
            transfer = entry() if isinstance(entry, weakref.ref) else entry
            if transfer is not None:
                transfer._complete()
            del entry, transfer


def _stop_notifier() -> None:
    # Every copy has finished and posted its token: the notifier runs the
    # callbacks still due, then stops, so that no thread of ours waits in
    # native code while the interpreter finalizes.
    global _closing
    with _lock:
        _closing = True
        notifier = _notifier
    if notifier is not None:
        _core.post_finished(_STOP)
        while notifier.is_alive():
            notifier.join(_WAIT_SLICE_SECONDS)


def _forget_the_parents_notifier() -> None:
    # A forked child has none of the parent's threads, and the parent's copies
    # never finish here: a fresh lock (the parent's may have been held), no
    # notifier until the child starts a copy of its own.
    global _lock, _notifier, _watched
    _lock, _notifier, _watched = threading.Lock(), None, {}


os.register_at_fork(after_in_child=_forget_the_parents_notifier)


if concurrent.futures.TimeoutError is TimeoutError:
    _Timeout = TimeoutError
else:  # Python 3.10: both classes, for the contract and for concurrent.futures

    class _Timeout(concurrent.futures.TimeoutError, TimeoutError):  # type: ignore[no-redef]
        pass


class Transfer(concurrent.futures.Future["np.ndarray"]):
    """A device-to-host copy in progress, from :func:`to_numpy_async`: a
    :class:`concurrent.futures.Future` of the array, and awaitable.

    ``done()`` never blocks; ``wait(timeout=None)`` (alias ``result()``)
    returns the array, or raises the copy's error (``RuntimeError`` with the
    driver's text) or ``TimeoutError``. Dropping a Transfer unawaited is safe:
    its source and destination stay alive until the copy has completed.

    As a future, ``concurrent.futures.wait`` and ``as_completed`` take it,
    ``exception()`` returns the copy's error (or None), and
    ``add_done_callback(fn)`` calls ``fn(transfer)`` once the copy has
    completed, on tensorbridge's notifier thread (at once, in the caller's
    thread, if the future is already complete); a Transfer with callbacks is
    kept until they have run, dropped or not. ``cancel()`` returns False: a
    copy in flight is never cancelled.

    ``await transfer`` (in asyncio) gives the array without blocking the event
    loop. Cancelling the awaiting task leaves the copy to finish in the
    background, its memory kept alive meanwhile, as Ctrl-C during ``wait()``
    does.

    Examples
    --------
    >>> import torch, tensorbridge as tb
    >>> transfer = tb.to_numpy_async(torch.zeros(2))  # host memory: finished at once
    >>> transfer
    <tensorbridge.Transfer done, (2,) float32>
    >>> transfer.wait()
    array([0., 0.], dtype=float32)

    As a future, and awaited:

    >>> import asyncio, concurrent.futures
    >>> done, _ = concurrent.futures.wait([transfer])
    >>> done == {transfer}
    True
    >>> transfer.add_done_callback(lambda t: print("copied", t.result().shape))
    copied (2,)
    >>> async def main():
    ...     return await tb.to_numpy_async(torch.ones(2))
    >>> asyncio.run(main())
    array([1., 1.], dtype=float32)
    """

    def __init__(self, native, array, keep=()):
        super().__init__()
        self._native = native
        self._array = array
        self._keep = keep
        self._failure: RuntimeError | None = None
        self._token = None
        if native is None:
            concurrent.futures.Future.set_result(self, array)
        else:
            self._token = _watch(self)

    @classmethod
    def finished(cls, array: np.ndarray) -> Transfer:
        """A Transfer of an array that is already there."""
        return cls(None, array)

    def done(self) -> bool:
        """Whether the copy has finished (successfully or not). Never blocks.

        Callbacks, ``concurrent.futures.wait`` and ``await`` are told by the
        notifier thread, a moment later."""
        return self._native is None or self._native.done()

    def running(self) -> bool:
        """Whether the copy is still in flight."""
        return not self.done()

    def cancel(self) -> bool:
        """False: a copy in flight is never cancelled (it finishes in the
        background, its memory kept alive meanwhile)."""
        return False

    def cancelled(self) -> bool:
        """False: a Transfer is never cancelled."""
        return False

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
        failure = self.exception(timeout)
        if failure is not None:
            try:
                raise failure
            finally:
                # As concurrent.futures does: the traceback's frames must not
                # hold the Transfer that holds the error.
                self = failure = None
        return self._array

    result = wait

    def exception(self, timeout: float | None = None) -> RuntimeError | None:
        """The copy's error (``RuntimeError`` with the driver's text) once it
        has finished, or None if it succeeded; waits as :meth:`wait` does, and
        raises ``TimeoutError`` as it does."""
        if timeout is not None and (isinstance(timeout, bool)
                                    or not isinstance(timeout, numbers.Real)):
            raise TypeError(f"Transfer.wait: timeout must be a number of seconds or None, "
                            f"got {timeout!r}")
        seconds = math.inf if timeout is None else float(timeout)
        if not seconds >= 0:  # NaN included
            raise ValueError(f"Transfer.wait: timeout must be >= 0 or None, got {timeout!r}")
        if self._native is None:
            return None
        deadline = time.monotonic() + seconds
        # In slices, so that Ctrl-C raises KeyboardInterrupt in between
        # (the copy goes on; this Transfer keeps its buffers alive).
        while not self._native.wait(min(_WAIT_SLICE_SECONDS,
                                         max(deadline - time.monotonic(), 0.0))):
            if time.monotonic() >= deadline:
                raise _Timeout(f"Transfer.wait: the copy did not finish within {timeout} s")
        return self._copy_failure()

    def _copy_failure(self) -> RuntimeError | None:
        """The copy's error, the same object each time (once finished)."""
        error = self._native.error()
        if not error:
            self._keep = ()
            return None
        with self._condition:
            if self._failure is None:
                self._failure = RuntimeError(f"Transfer.wait: the device copy failed: {error}")
            return self._failure

    def add_done_callback(self, fn) -> None:
        """Call ``fn(transfer)`` once the copy has completed: on the notifier
        thread, or at once in this thread if the future already is complete.
        The Transfer is kept until then, dropped or not."""
        if self._token is not None:
            _keep_until_notified(self._token, self)
        super().add_done_callback(fn)

    def __await__(self):
        import asyncio

        # The event loop is told by the notifier (call_soon_threadsafe); a
        # cancelled await calls cancel(), which leaves the copy running.
        return asyncio.wrap_future(self).__await__()

    def _complete(self) -> None:
        """On the notifier thread, once the copy has finished."""
        failure = self._copy_failure()
        if failure is None:
            concurrent.futures.Future.set_result(self, self._array)
        else:
            concurrent.futures.Future.set_exception(self, failure)

    # The executor's side of a future: a Transfer's is its copy.
    def set_result(self, result) -> None:
        """Refused: a Transfer is completed by its copy only."""
        raise RuntimeError("Transfer.set_result: a Transfer is completed by its copy only")

    def set_exception(self, exception) -> None:
        """Refused: a Transfer is completed by its copy only."""
        raise RuntimeError("Transfer.set_exception: a Transfer is completed by its copy only")

    def set_running_or_notify_cancel(self) -> bool:
        """Refused: a Transfer is completed by its copy only."""
        raise RuntimeError("Transfer.set_running_or_notify_cancel: a Transfer is completed by "
                           "its copy only")

    def __repr__(self) -> str:
        state = "done" if self.done() else "in flight"
        return f"<tensorbridge.Transfer {state}, {self._array.shape} {self._array.dtype}>"

    def __del__(self):
        native = getattr(self, "_native", None)
        if native is not None and not native.done():
            keep_alive_until_done(native, self._array, self._keep)

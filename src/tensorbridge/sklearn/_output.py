"""What a transform gives back: the container scikit-learn's ``set_output``
asks for, the array API result (a tensor written batch by batch on X's
device: ``fill``; a NumPy result is ``collect``'s), the check that every
batch brings one width and dtype, and the progress line of ``verbose=1``."""

from __future__ import annotations

import sys
import time

from sklearn import get_config

_NAME = "TorchTransformer"  # the one estimator that writes batch by batch

try:
    # Private, but it is the lookup scikit-learn's own set_output wrapper makes,
    # so our answer is the container the result will really be put in.
    from sklearn.utils._set_output import _get_output_config
except ImportError:  # moved or renamed in a later scikit-learn: the same lookup, by hand
    _get_output_config = None
try:
    from sklearn.utils._set_output import _wrap_data_with_container as wrap_in_container
except ImportError:  # ToNumpy then keeps scikit-learn's own wrapper: see _to_numpy.py
    wrap_in_container = None


def transform_output(estimator) -> str:
    """"default", "pandas" or "polars": what ``estimator.set_output(transform=...)``
    chose, else the global ``transform_output`` setting."""
    if _get_output_config is not None:
        return _get_output_config("transform", estimator)["dense"]
    return getattr(estimator, "_sklearn_output_config", {}).get(
        "transform", get_config()["transform_output"])


def fill(torch, outputs, n_rows, device):
    """The outputs written batch by batch into one tensor of `n_rows` rows on
    `device`: the array API result, which stays on X's device (``collect``
    writes NumPy)."""
    result, start = None, 0
    for output in outputs:
        if result is None:
            result = torch.empty((n_rows, output.shape[1]), dtype=output.dtype,
                                 device=device)
        result[start:start + output.shape[0]].copy_(output)
        start += output.shape[0]
    return result


def in_namespace(namespace, result, device):
    """The torch tensor `result` as an array of `namespace` on `device`: through
    DLPack (no copy), then moved where it is not on `device` yet."""
    array = namespace.from_dlpack(result)
    if getattr(array, "device", device) != device:
        array = namespace.asarray(array, device=device)
    return array


def check_like(first, output, index):
    """(width, dtype) of batch 0's flattened output, checked against batch
    `index`'s: every batch's rows go into one array."""
    found = (output.shape[1], output.dtype)
    if first is None:
        return found
    if found != first:
        raise ValueError(f"{_NAME}: the module returned {found[0]} features of {found[1]} for "
                         f"batch {index}, but {first[0]} features of {first[1]} for batch 0; "
                         "it must return one width and dtype for every batch")
    return first


class Progress:
    """verbose=1: one line on stderr, rewritten after each batch (at most ten
    times a second, and always after the last), then a summary line."""

    def __init__(self, total_batches, enabled):
        self.total, self.enabled = total_batches, enabled
        self.batches = self.rows = 0
        self.start = self.shown = time.perf_counter()

    def step(self, rows):
        if not self.enabled:
            return
        self.batches += 1
        self.rows += rows
        now = time.perf_counter()
        if self.batches == 1 or self.batches == self.total or now - self.shown >= 0.1:
            self.shown = now
            total = "" if self.total is None else f"/{self.total}"
            sys.stderr.write(f"\r[{_NAME}] transform: batch {self.batches}{total}, "
                             f"{self._rate(now):,.0f} rows/s")
            sys.stderr.flush()

    def close(self):
        if not self.enabled or self.batches == 0:
            return
        seconds = time.perf_counter() - self.start
        sys.stderr.write(f"\n[{_NAME}] transform: {self.rows:,} rows in {self.batches} batches, "
                         f"{seconds:.2f} s, {self._rate(time.perf_counter()):,.0f} rows/s\n")
        sys.stderr.flush()

    def _rate(self, now):
        return self.rows / max(now - self.start, 1e-9)

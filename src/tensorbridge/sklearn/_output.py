"""What a transform gives back.

The container scikit-learn's ``set_output`` asks for (``transform_output``);
under array API dispatch, where the result is written (``array_api_target``)
and the one small writer of that tensor on X's device (``fill``: a NumPy
result is ``collect``'s, on every device); the progress line of ``verbose=1``.
"""

from __future__ import annotations

import sys
import time

from sklearn import get_config

from .. import _dlpack
from ._input import array_namespace, library_of

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


def array_api_target(estimator, torch, X):
    """Under scikit-learn's array API dispatch, (device, wrap): the result is
    written into a torch tensor on that device, then handed to X's namespace
    by `wrap` (None: torch itself). None for a NumPy result."""
    if not get_config().get("array_api_dispatch", False):
        return None
    _check_namespace(estimator, X)
    if transform_output(estimator) != "default":  # a container was asked for: NumPy goes in it
        return None
    if isinstance(X, torch.Tensor):
        return X.device, None
    if library_of(X) == "cupy" and type(X).__name__ == "ndarray" and torch.cuda.is_available():
        import cupy

        return torch.device("cuda", X.device.id), cupy.from_dlpack
    if array_namespace(X) is None:  # NumPy, array-likes, Datasets, dicts: NumPy
        return None
    # Another array API namespace (array_api_strict, JAX): through DLPack, from
    # a tensor on the device X's memory is on.
    device_type, index = _dlpack.device_of(X) or (1, 0)
    if device_type in _dlpack.CUDA_DEVICE_TYPES and torch.cuda.is_available():
        device = torch.device("cuda", index)
    else:
        device = torch.device("cpu")
    namespace, where = X.__array_namespace__(), X.device

    def wrap(result):  # through DLPack (no copy), then moved where it is not on X's device yet
        array = namespace.from_dlpack(result)
        return array if getattr(array, "device", where) == where else \
            namespace.asarray(array, device=where)

    return device, wrap


def _check_namespace(estimator, X):
    """Under dispatch, X of the namespace and device fit had, when that was not
    NumPy: scikit-learn's own estimators refuse any other, and so would the next
    step of a pipeline."""
    fitted = estimator.__dict__.get("_fit_namespace")  # absent from older pickles
    given = array_namespace(X)
    if fitted is None or given == fitted:
        return

    def described(namespace):
        return "NumPy (or an array-like)" if namespace is None else \
            f"{namespace[0]} on {namespace[1]}"

    raise ValueError(
        f"Inputs passed to {_NAME}.transform() must use the same namespace and the same "
        f"device as those passed to fit(): X is {described(given)}, but fit had "
        f"{described(fitted)}. Pass X as {described(fitted)}, or fit again on X like this "
        "one")


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

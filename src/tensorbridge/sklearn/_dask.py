"""TorchTransformer and ToNumpy over dask arrays and Dask DataFrames.

Design note. A dask input is recognised through ``sys.modules``, so nothing
here imports dask until one arrives. ``transform`` builds a lazy graph:

- rows are rechunked so that every block boundary is a multiple of
  ``batch_size`` counted from row 0, and every other axis is one chunk: each
  block splits into the batches the in-memory transform makes, so the results
  are equal bit for bit;
- the output's width and dtype come from ``transform`` on one row of zeros
  made here (no block of ``X`` is read), which also raises the in-memory errors
  for a wrong sample shape. A Dask DataFrame is taken as
  ``to_dask_array(lengths=True)``: the one pass it needs;
- each block runs the estimator's own ``transform`` on the worker, with the
  checks (NaN/inf, shape) and errors it makes on NumPy input;
- the fitted estimator travels as one serialised payload: one literal key of
  the graph that every block depends on, which a distributed scheduler hands
  again to any worker after one holding it is lost (a scattered estimator
  could not be recreated). It is deserialised once per worker process (a
  cache keyed by the payload's digest), onto that worker's own device
  (``worker_device``), and freed with the payload; each process keeps the
  last module it loaded, for the next computation of the same model.

``fit`` reads metadata (shape, dtype, column names) and one row of the first
non-empty block; only a skorch ``NeuralNet`` trains on every row, computed.

Estimators that take no dask arrays (``AugmentedEstimator``, or a scikit-learn
estimator fed by the features) are reached through dask_ml's
``ParallelPostFit`` / ``Incremental``, or by computing to NumPy: see
examples/dask_scale_out.py.
"""

from __future__ import annotations

import copy
import hashlib
import io
import os
import re
import sys
import threading
import uuid
import weakref
from collections import Counter

import numpy as np

from .. import _torch, to_numpy

EXTRA = "pip install 'tensorbridge[dask]'"
_MODULE_FIELDS = ("module", "module_")


# -- recognising and importing ------------------------------------------------------


def is_dask_collection(X) -> bool:
    """Whether ``X`` is a dask collection, without importing dask."""
    dask = sys.modules.get("dask")
    return (dask is not None and hasattr(type(X), "__dask_graph__")
            and bool(dask.is_dask_collection(X)))


def _as_array(name, X):
    """A dask array for ``X``; a Dask DataFrame is taken as to_dask_array(lengths=True)."""
    try:
        import dask.array as da
        import distributed  # noqa: F401 - part of the extra: the cluster side
    except ImportError as error:
        raise ImportError(f"{name}: a dask input needs dask[array] and distributed, which are "
                          f"not installed ({error}); install them with {EXTRA}") from error
    if isinstance(X, da.Array):
        return X
    dd = sys.modules.get("dask.dataframe")
    if dd is not None and isinstance(X, dd.DataFrame):
        return X.to_dask_array(lengths=True)
    raise TypeError(f"{name}: got a dask {type(X).__name__}; pass a dask.array.Array or a "
                    "dask.dataframe.DataFrame (for a Series: series.to_frame())")


def _check_structure(name, X):
    """What metadata can tell, before any block is read (the sample shape is
    checked by the probe in transform, with the in-memory transform's errors)."""
    if X.ndim < 2:
        raise ValueError(f"{name}: expected X of at least 2 dimensions, got a dask array of "
                         f"shape {X.shape}; reshape it to (n_samples, n_features)")
    if any(np.isnan(c) for axis in X.chunks for c in axis):
        raise ValueError(f"{name}: X has unknown chunk sizes (shape {X.shape}); call "
                         "X.compute_chunk_sizes() first, or pass a Dask DataFrame as it is")
    if X.shape[0] < 1:  # scikit-learn's sentence, as for an in-memory X
        raise ValueError(f"Found array with 0 sample(s) (shape={X.shape}) while a minimum of 1 "
                         f"is required by {name}.")


def _check_output(name, estimator):
    """set_output(transform="pandas") would gather the lazy result into the client."""
    from ._output import transform_output

    output = transform_output(estimator)
    if output != "default":
        raise ValueError(f"{name}: set_output(transform={output!r}) does not apply to dask "
                         "input (it would compute the whole result into this process); use "
                         "set_output(transform='default') and, for a Dask DataFrame, "
                         "result.to_dask_dataframe(columns=list(model.get_feature_names_out()))")


# -- blocks aligned to batches ------------------------------------------------------


def batch_aligned_chunks(row_chunks, batch_size):
    """Row chunks of a whole number of batches (the largest chunk's size, rounded to
    the nearest multiple of ``batch_size``), counted from row 0; the last one takes
    the rest.

    >>> from tensorbridge.sklearn._dask import batch_aligned_chunks
    >>> batch_aligned_chunks((100, 100, 100, 50), 64)
    (128, 128, 94)
    """
    n = int(sum(row_chunks))
    size = max(1, round(max(row_chunks) / batch_size)) * batch_size
    return (size,) * (n // size) + ((n % size,) if n % size else ())


def _host_block(block):
    """A block as NumPy (dask's rechunk concatenates blocks with NumPy only)."""
    return block if isinstance(block, np.ndarray) else to_numpy(block)


def _prepare(X, batch_size):
    """``X`` with batch-aligned rows and one chunk across every other axis."""
    rows_aligned = batch_size is None or all(
        int(b) % batch_size == 0 for b in np.cumsum(X.chunks[0])[:-1])
    if rows_aligned and all(len(axis) == 1 for axis in X.chunks[1:]):
        return X
    rows = X.chunks[0] if batch_size is None else batch_aligned_chunks(X.chunks[0], batch_size)
    host = X.map_blocks(_host_block, dtype=X.dtype)
    return host.rechunk((rows,) + tuple((size,) for size in X.shape[1:]))


# -- fit and transform ----------------------------------------------------------------


def fit(estimator, X, y=None, **fit_params):
    """``estimator.fit`` on the metadata of ``X`` and one row of its first non-empty
    block (a skorch net: on every row of ``X`` and ``y``, computed, with ``fit_params``)."""
    name = type(estimator).__name__
    array = _as_array(name, X)
    if _torch.is_skorch_net(getattr(estimator, "module", None)):  # learns from every row
        y = y.compute() if is_dask_collection(y) else y
        return estimator.fit(X.compute(), y, **fit_params)
    _check_structure(name, array)
    if array is not X:  # a DataFrame: fit on one row of it, so that its names are kept
        first = next(i for i, size in enumerate(array.chunks[0]) if size)
        head = X.partitions[first].head(1, npartitions=1)
    else:
        head = array.map_blocks(_host_block, dtype=array.dtype)[:1].compute()
    return estimator.fit(head, **fit_params)  # a module without a net takes none: its error


def transform(estimator, X, batch_size=None):
    """The lazy dask array of ``estimator.transform`` over the blocks of ``X``.

    ``batch_size``: rows per forward call (block boundaries are aligned to it);
    None for a transformer that works row by row (ToNumpy).
    """
    from sklearn.utils.validation import _check_feature_names, check_is_fitted

    name = type(estimator).__name__
    check_is_fitted(estimator)
    array = _as_array(name, X)
    _check_structure(name, array)
    # The feature-name checks scikit-learn makes on in-memory input, made once here
    # (the blocks reach workers as plain arrays).
    meta = getattr(X, "_meta", None)  # an empty pandas frame for a Dask DataFrame
    _check_feature_names(estimator, meta if hasattr(meta, "columns") else np.empty((0, 0)),
                         reset=False)
    _check_output(name, estimator)
    local = _block_estimator(estimator)
    # One row of zeros, made here (no block of X is read): the output's width and
    # dtype, and any error the sample shape gives, as the in-memory transform gives it.
    quiet = copy.copy(local)
    if hasattr(quiet, "verbose"):
        quiet.verbose = 0  # the probe row is no progress to report
    probe = quiet.transform(np.zeros((1,) + array.shape[1:], array.dtype))
    dtype, width = probe.dtype, probe.shape[1]
    array = _prepare(array, batch_size)
    shipped = _ship(local)
    drop = tuple(range(2, array.ndim))
    return array.map_blocks(_transform_block, shipped, name, width, dtype, dtype=dtype,
                            chunks=(array.chunks[0], (width,)), drop_axis=drop,
                            meta=np.empty((0, width), dtype))


def _transform_block(block, shipped, name, width, dtype):
    if block.shape[0] == 0:  # dask allows empty blocks; transform refuses 0 samples
        return np.empty((0, width), dtype)
    result = shipped.estimator().transform(block)
    if result.shape != (block.shape[0], width) or result.dtype != dtype:
        raise ValueError(f"{name}: a block of {block.shape[0]} rows gave shape {result.shape} "
                         f"{result.dtype}, but the graph was built for ({block.shape[0]}, "
                         f"{width}) {dtype}; the module's output must not depend on the data, "
                         "and the dask array's dtype must match its blocks'")
    return result


def _block_estimator(estimator):
    """A shallow copy for the blocks: plain-array output, no feature names."""
    local = copy.copy(estimator)
    # set_output's wrapper would turn each block into a DataFrame, and a nameless block
    # would warn against the names seen at fit (checked once, in transform).
    for attribute in ("_sklearn_output_config", "feature_names_in_"):
        vars(local).pop(attribute, None)
    return local


# -- the estimator on the workers ---------------------------------------------------


def _ship(local):
    """The graph's handle on the estimator (see the design note): a fresh key
    per graph; local schedulers hand it to the blocks as it is, and the payload
    is serialised only when a distributed client sends the graph."""
    import dask

    shipped = _Shipped(local)
    return dask.delayed(shipped, name=f"tensorbridge-estimator-{shipped.key}", pure=True)


# Per process: loads per payload (for tests and diagnostics); the estimators
# alive, so that copies of one payload share one load; and the last one loaded
# with a module, kept after dask drops its payload, for the next computation
# (an estimator without one, ToNumpy, costs nothing to load and must not push
# it out).
_loads: Counter = Counter()
_live: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_last_loaded = None
_lock = threading.Lock()


def worker_state() -> dict:
    """This process's record: loads per payload token, and the estimators alive."""
    return {"loads": dict(_loads), "live": sorted(_live)}


class _Shipped:
    """A fitted estimator for the blocks: itself in the process that made it, bytes
    everywhere else, deserialised once per process on first use there.

    torch modules are saved apart with torch.save over cloudpickle, so that they
    load onto the worker's own device (``worker_device``) and classes defined in
    a script travel by value."""

    def __init__(self, local):
        self._estimator = local
        self._payload = None  # (token, estimator bytes, modules bytes, module is module_)
        self.key = uuid.uuid4().hex

    @property
    def token(self):
        """A digest of the payload: equal estimators have equal tokens."""
        return self._serialised()[0]

    def _serialised(self):
        if self._payload is None:
            import cloudpickle

            state, modules = copy.copy(self._estimator), {}
            # A skorch net's trained clone: transform runs module_ (its module), never it.
            vars(state).pop("net_", None)
            for field in _MODULE_FIELDS:
                if _torch.is_module(vars(state).get(field)):
                    modules[field] = vars(state).pop(field)
            shared = "module_" in modules and "module" in modules
            if shared:
                del modules["module"]  # the worker's copy reuses module_: one set of weights
            blob = b""
            if modules:
                import torch

                buffer = io.BytesIO()
                torch.save(modules, buffer, pickle_module=cloudpickle)
                blob = buffer.getvalue()
            estimator_bytes = cloudpickle.dumps(state)
            digest = hashlib.blake2b(estimator_bytes, digest_size=16)
            digest.update(blob)
            self._payload = (digest.hexdigest(), estimator_bytes, blob, shared)
        return self._payload

    def __getstate__(self):
        # Never the estimator itself: each process builds its own, on its own device.
        return {"_estimator": None, "_payload": self._serialised(), "key": self.key}

    def __dask_tokenize__(self):
        return ("tensorbridge-estimator", self.key)

    def __sizeof__(self):
        # What dask.sizeof reports to the scheduler: the bytes a transfer of it carries.
        payload = self._payload
        return object.__sizeof__(self) + (len(payload[1]) + len(payload[2]) if payload else 0)

    def estimator(self):
        if self._estimator is not None:
            return self._estimator
        global _last_loaded
        token = self._payload[0]
        with _lock:  # the worker's threads share one load
            if self._estimator is None:
                loaded = _live.get(token)
                if loaded is None:
                    loaded = self._load()
                    if self._payload[2]:  # it carried a module
                        _last_loaded = loaded
                    _live[token] = loaded
                    _loads[token] += 1
                self._estimator = loaded
        return self._estimator

    def _load(self):
        import pickle

        _, estimator_bytes, modules_bytes, shared = self._payload
        estimator = pickle.loads(estimator_bytes)
        if not modules_bytes:
            return estimator
        import torch

        requested = getattr(estimator, "device", "auto")
        device = torch.device(worker_device(
            requested, torch.cuda.device_count() if torch.cuda.is_available() else 0,
            **_worker_facts()))
        modules = torch.load(io.BytesIO(modules_bytes), map_location=device,
                             weights_only=False)
        for field, module in modules.items():
            setattr(estimator, field, module)
        if shared:
            estimator.module = estimator.module_
        if hasattr(estimator, "device_"):
            estimator.device_ = device
        return estimator


# -- which device a worker uses -------------------------------------------------------


def _worker_facts():
    """This process's dask worker resources and name (none outside a worker)."""
    resources, name = {}, None
    distributed = sys.modules.get("distributed")
    if distributed is not None:
        try:
            worker = distributed.get_worker()
        except ValueError:  # not on a worker: the threaded scheduler, or the client
            worker = None
        if worker is not None:
            resources, name = dict(worker.state.total_resources), worker.name
    return {"resources": resources, "environ": os.environ, "worker_name": name}


def worker_device(requested, cuda_count, *, resources=None, environ=None,
                  worker_name=None) -> str:
    """The device a worker builds the module on.

    ``requested`` is the estimator's ``device`` parameter: a CPU (or other
    non-CUDA) device is kept; ``"auto"`` and CUDA devices mean this worker's
    own GPU, else its CPU. Its own GPU is, in order: ``cuda:N`` named by a
    worker resource ``"cuda:N"``; ``cuda:0`` when ``CUDA_VISIBLE_DEVICES``
    lists the worker's devices (dask-cuda gives each worker its own first);
    ``cuda:(name % cuda_count)`` for a worker with an integer name (a
    LocalCluster's); else ``cuda:0``.

    Examples
    --------
    >>> from tensorbridge.sklearn._dask import worker_device
    >>> worker_device("auto", 0)
    'cpu'
    >>> worker_device("auto", 4, worker_name=5)
    'cuda:1'
    >>> worker_device("cuda", 4, resources={"cuda:2": 1})
    'cuda:2'
    >>> worker_device("cpu", 4, worker_name=1)
    'cpu'
    """
    resources, environ = resources or {}, environ if environ is not None else {}
    text = str(requested)
    if text != "auto" and not text.startswith("cuda"):
        return text
    if cuda_count < 1:
        return "cpu"
    for resource in resources:
        match = re.fullmatch(r"cuda:(\d+)", str(resource))
        if match:
            index = int(match.group(1))
            if index >= cuda_count:
                raise ValueError(f"worker resource {resource!r} names a device this worker "
                                 f"does not have ({cuda_count} CUDA devices visible)")
            return f"cuda:{index}"
    if environ.get("CUDA_VISIBLE_DEVICES", "").strip() not in ("", "-1"):
        return "cuda:0"
    if isinstance(worker_name, int) or (isinstance(worker_name, str) and worker_name.isdigit()):
        return f"cuda:{int(worker_name) % cuda_count}"
    return "cuda:0"

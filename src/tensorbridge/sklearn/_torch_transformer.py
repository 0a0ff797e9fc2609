"""TorchTransformer: a torch module or function as a scikit-learn transformer.

How X travels: ``_read`` is the one place where the kind of input is told
apart (arrays and tensors, dicts of them, torch Datasets and DataLoaders);
it returns an ``_Input`` that yields batches. Each batch is staged on the
module's device in memory the caller does not own (a reused buffer on the
CPU, fresh device memory on a GPU), run through the module, flattened, and
written into the result: one NumPy array (``collect``, or on a GPU an array
filled by overlapped downloads), or under scikit-learn's array API dispatch a
tensor preallocated on X's device.
"""

from __future__ import annotations

import collections.abc
import contextlib
import copy
import io
import itertools
import sys
import threading
import time
import warnings
from numbers import Integral

import numpy as np
from scipy.sparse import issparse
from sklearn import get_config
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    _fit_context,
    clone,
)
from sklearn.utils._param_validation import Interval, InvalidParameterError
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from .. import _dlpack, _torch, collect, to_device, to_numpy, to_numpy_async
from .._dtypes import numpy_dtype
from . import _dask
from ._output import transform_output
from ._to_numpy import is_tensor_like, validatable


class _Count(Interval):
    """An Interval of Integral that refuses bools (True is an Integral, and
    batch_size=True is a mistake, not 1 row)."""

    def is_satisfied_by(self, val):
        return not isinstance(val, (bool, np.bool_)) and super().is_satisfied_by(val)


_WIDENED_OUTPUTS = ("bfloat16", "float8")  # dtypes NumPy lacks: returned as float32
_NAME = "TorchTransformer"


class TorchTransformer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Run a torch module (or any function of a tensor) over ``X`` in batches.

    ``fit`` validates ``X``, records the per-sample shape (``sample_shape_in_``,
    ``n_features_in_``, ``feature_names_in_``) and places a copy of the module
    on the device as ``module_``. ``transform`` runs ``module_`` in eval mode
    under ``torch.inference_mode()`` over batches of ``X`` cast to ``dtype``
    and writes one NumPy array batch by batch (outputs of any rank are
    flattened per sample). On a GPU, uploads, compute and downloads overlap.

    What is copied, and when:

    - ``clone`` (and so every fold of ``cross_val_score`` or ``GridSearchCV``)
      shares ``module`` with the original: ``TorchTransformer`` never changes
      it. A skorch net is cloned as scikit-learn clones it (each fold trains
      its own).
    - ``fit`` copies the module once, straight onto ``device`` (and into
      ``dtype`` when given): ``module_``. Your module is never moved or
      changed, and later changes to it do not reach ``module_``. Lazy
      modules (``nn.LazyLinear``...) are materialised in ``module_`` by one
      batch of ``X`` (its first sample), initialised as torch initialises
      them (from its global generator); yours stays lazy.
    - ``transform`` copies each batch once into memory the module owns (a
      buffer reused from batch to batch on the CPU, device memory on a GPU),
      so even a module that works in place (``nn.ReLU(inplace=True)``,
      ``x.mul_(2)``) never changes your ``X``.
    - A pickle holds the weights once when ``module_`` still equals ``module``
      (then ``module_`` is made again on load), both otherwise.

    Parameters
    ----------
    module : torch.nn.Module, callable or skorch.NeuralNet
        Maps a float tensor of shape ``(batch, *sample_shape)`` (or keyword
        tensors, for a dict ``X``) to a tensor whose first dimension is the
        batch (or a tuple/dict of them: see ``output``). A skorch
        ``NeuralNet`` (the ``skorch`` extra) is cloned and trained by ``fit``
        on ``X, y`` (floating arrays in torch's default dtype, float32) under
        its own ``device``; ``transform`` runs the trained ``net.module_`` on
        this transformer's ``device``. Its parameters are grid keys: ``module__lr``,
        ``module__max_epochs``.
    batch_size : int, default=1024
        Rows per forward call (a DataLoader ``X`` keeps its own batches).
    device : str or torch.device, default="auto"
        Where ``module_`` runs: "auto" means CUDA when available, else the
        CPU. A device torch cannot use here is a ``ValueError``.
    dtype : torch.dtype or str, default=None
        The dtype ``X`` is cast to (and a module's floating parameters, when
        given). Default: the module's parameter dtype, float32 without any.
        Outputs in bfloat16 or a float8 dtype (``dtype=torch.bfloat16``, say)
        are returned as float32, which holds each of their values exactly.
    output : int or str, default=None
        Which element of a tuple (int) or dict (str) output to keep.
    verbose : int, default=0
        1: every ``transform`` writes one updating progress line to stderr
        (batches done of the total, rows per second), then a summary line.
    layer : str, default=None
        The dotted name of a submodule (as in ``module.named_modules()``)
        whose output is the result; the forward pass stops there. A name the
        module lacks is a ``ValueError`` listing the names it has.

    Attributes
    ----------
    module_ : torch.nn.Module or callable
        The placed copy of ``module`` (a skorch net's trained module).
    net_ : skorch.NeuralNet
        The trained clone of a skorch ``module``.
    device_ : torch.device
    dtype_ : torch.dtype
    sample_shape_in_ : tuple, or dict of tuples for a dict ``X``
        The shape of one sample seen at fit; ``transform`` requires the same.
    n_features_in_ : int
        The size of the first per-sample dimension.
    feature_names_in_ : ndarray of str, when ``X`` has string column names.
    n_features_out_ : int, width of the flattened output.

    Notes
    -----
    ``X`` may be a NumPy array or array-like, a pandas DataFrame, a torch
    tensor (any device), a CuPy array, a dict of equally long arrays (passed
    to the module as keyword arguments), a ``torch.utils.data.Dataset`` or a
    ``DataLoader`` whose items are tensors or tuples led by the input. The
    result has one row per sample, in order. With
    ``sklearn.set_config(array_api_dispatch=True)`` the result follows ``X``'s
    array namespace and device: a torch tensor for a torch ``X`` (written on
    its device, no host copy), through DLPack an array of ``X``'s namespace
    for another (CuPy, ``array_api_strict``...), NumPy for NumPy, unless
    ``set_output`` asks for a container; it declares array API support and
    passes scikit-learn's array API checks. Fitted so on a non-NumPy ``X``,
    ``transform`` under dispatch then takes ``X`` of that namespace and
    device only, as scikit-learn's estimators do. Without dispatch the result
    is NumPy.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from tensorbridge.sklearn import TorchTransformer
    >>> t = TorchTransformer(torch.nn.Linear(3, 2), device="cpu").fit(np.ones((4, 3)))
    >>> t.transform(np.ones((5, 3))).shape
    (5, 2)
    >>> t.sample_shape_in_
    (3,)
    >>> mlp = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    >>> TorchTransformer(mlp, layer="1").fit_transform(np.ones((5, 3))).shape
    (5, 8)
    """

    _parameter_constraints: dict = {
        "module": "no_validation",  # a callable or a skorch net: checked in fit
        "batch_size": [_Count(Integral, 1, None, closed="left")],
        "device": "no_validation",  # checked in fit, where torch is imported
        "dtype": "no_validation",
        "output": [None, Integral, str],
        "verbose": ["verbose"],
        "layer": [None, str],
    }

    def __init__(self, module, *, batch_size=1024, device="auto", dtype=None, output=None,
                 verbose=0, layer=None):
        self.module = module
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.output = output
        self.verbose = verbose
        self.layer = layer

    # -- fitting -----------------------------------------------------------------

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, **fit_params):
        """Validate ``X``, record its sample shape, place a copy of the module
        on the device (a skorch net: train a clone of it on ``X, y`` first).

        ``fit_params`` go to a skorch net's ``fit``; other modules take none.
        """
        if _dask.is_dask_collection(X):  # metadata and one row only: see _dask.py
            return _dask.fit(self, X, y, **fit_params)
        import torch

        net = _torch.is_skorch_net(self.module)
        if isinstance(self.module, type) and issubclass(self.module, torch.nn.Module):
            name = self.module.__qualname__
            if getattr(torch.nn, name, None) is self.module:
                name = f"torch.nn.{name}"
            raise InvalidParameterError(
                f"The 'module' parameter of {_NAME} must be a module instance, not the class "
                f"{name}; pass an instance, e.g. module={name}()")
        if not net and not callable(self.module):
            raise InvalidParameterError(
                f"The 'module' parameter of {_NAME} must be a callable. Got {self.module!r} "
                "instead. Pass a torch.nn.Module, a function of a tensor or a skorch NeuralNet.")
        if fit_params and not net:
            raise TypeError(f"{_NAME}.fit: got fit parameters {sorted(fit_params)}, but only a "
                            "skorch net as module takes any")
        self.device_ = self._resolve_device(torch)
        # Under dispatch, transform then takes X of this namespace and device only, as
        # scikit-learn's own estimators do (a NumPy-fitted one takes any).
        self._fit_namespace = (_array_namespace(X) if get_config().get("array_api_dispatch")
                               else None)
        source = self._read(X, reset=True)
        if net:
            self.net_ = self._train(torch, X, source, y, fit_params)
        else:
            self.__dict__.pop("net_", None)
        trained = self._source_module()
        _check_not_meta(trained)
        self.dtype_ = self._resolve_dtype(torch, trained)
        self._check_layer(torch, trained)
        self.module_ = self._place(torch)
        head = source.head()
        self._materialise(torch, head)
        # One row through the module: a broken module fails here, not in transform.
        self.n_features_out_ = self._run(torch, head, None, quiet=True).shape[1]
        return self

    def _materialise(self, torch, head):
        """Lazy parameters of module_ (nn.LazyLinear...) take their shapes from one
        batch of X (`head`: its first sample), as torch initialises them. Under
        no_grad, not inference mode: they stay ordinary parameters."""
        if not _is_lazy(torch, self.module_):
            return
        batch, _, _ = next(iter(head.batches(1)))
        inputs = _map(batch, lambda value, name: self._upload(torch, value, None))
        with torch.no_grad(), self._layer_capture(torch) as capture:
            self._forward(inputs, capture)

    def _resolve_device(self, torch):
        if isinstance(self.device, str) and self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError, ValueError) as error:
            raise ValueError(f"{_NAME}: device={self.device!r} is not a torch device; "
                             "use 'auto', 'cpu' or 'cuda:N'") from error
        if device.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if (device.index or 0) >= count:
                raise ValueError(f"{_NAME}: device={self.device!r} does not exist here "
                                 f"({count} CUDA devices); use device='auto' or 'cpu'")
        elif device.type == "meta":
            raise ValueError(f"{_NAME}: device={self.device!r} holds no data, so no features "
                             "can come from it; use 'auto', 'cpu' or 'cuda:N'")
        elif device.type != "cpu":
            try:  # mps, xpu, ...: only torch knows whether this build and machine have one
                torch.empty(1, device=device)
            except Exception as error:  # torch raises several kinds
                raise ValueError(f"{_NAME}: device={self.device!r} cannot be used here (torch "
                                 f"says: {str(error).splitlines()[0]}); use 'auto', 'cpu' or "
                                 "'cuda:N'") from error
        return device

    def _resolve_dtype(self, torch, module):
        if self.dtype is None:
            parameter = _first_parameter(module)
            return parameter.dtype if parameter is not None else torch.float32
        dtype = _torch_dtype(torch, self.dtype)
        if dtype is None:
            raise ValueError(f"{_NAME}: dtype={self.dtype!r} is not a torch floating "
                             "dtype; use for example torch.float32 or 'float64'")
        return dtype

    def _source_module(self):
        """What module_ is placed from: a skorch net's trained module, else `module`."""
        net = self.__dict__.get("net_")
        return net.module_ if net is not None else self.module

    def _cast(self):
        """The dtype module_'s floating tensors are cast to (dtype_), or None
        when dtype is not given: they keep their own."""
        return self.dtype_ if self.dtype is not None else None

    def _place(self, torch):
        """module_: a copy of the source module on device_ (in dtype_ when
        asked), or a skorch net's own trained module where it already is."""
        shared = self.__dict__.get("net_") is not None
        return _placed(torch, self._source_module(), self.device_, self._cast(), shared)

    def _check_layer(self, torch, module):
        if self.layer is None:
            return
        if not isinstance(module, torch.nn.Module):
            raise ValueError(f"{_NAME}: layer={self.layer!r} needs a torch.nn.Module, but module "
                             f"is a {type(module).__name__}; leave layer=None")
        names = [name for name, _ in module.named_modules() if name]
        if self.layer not in names:
            listed = ", ".join(repr(name) for name in names) if names else "none"
            raise ValueError(f"{_NAME}: layer={self.layer!r} is not a submodule of "
                             f"{type(module).__name__}; its submodules are: {listed}")

    def _train(self, torch, X, source, y, fit_params):
        """A clone of the skorch net, fitted on X (as validated) and y."""
        if source.kind == "loader":
            raise TypeError(f"{_NAME}: a skorch net trains on arrays, dicts or a Dataset, not a "
                            "DataLoader (skorch makes its own); pass loader.dataset")
        data = X
        if source.kind == "array":
            data = source.data
            if isinstance(data, np.ndarray) and data.dtype.kind == "f":
                # torch's default dtype: the one a module's parameters are made in
                data = data.astype(numpy_dtype(torch.get_default_dtype()), copy=False)
        elif source.kind == "dict":
            data = dict(source.data)
        net = clone(self.module)
        net.fit(data, y, **fit_params)
        return net

    # -- reading X: the one place where the kind of input is told apart ------------

    def _read(self, X, reset):
        """X as an `_Input`; records (reset) or checks its per-sample shape."""
        data_module = sys.modules.get("torch.utils.data")
        if data_module is not None and isinstance(X, data_module.DataLoader):
            source = _loader_input(X, data_module)
        elif (data_module is not None and isinstance(X, data_module.TensorDataset)
              and X.tensors[0].ndim >= 2):
            source = self._array_input(X.tensors[0], reset)  # its input tensor, as it is
        elif data_module is not None and isinstance(X, data_module.Dataset):
            source = _dataset_input(X, data_module)
        elif isinstance(X, dict) and not issparse(X):  # a DOK matrix is a dict too
            source = self._dict_input(X)
        elif isinstance(X, collections.abc.Iterator):  # a generator: read once, and unsized
            raise TypeError(f"{_NAME}: X is a {type(X).__name__}, which can be read only once "
                            "and has no length; wrap it in a torch IterableDataset (or a "
                            "DataLoader over one), or gather it first with tb.collect(X)")
        else:
            source = self._array_input(X, reset)
        if source.kind != "array" and reset:
            self._record_features(source.sample_shape)
        self._record_or_check_shape(source.sample_shape, reset)
        return source

    def _array_input(self, X, reset):
        """An array or tensor of 2 or more dimensions, validated as scikit-learn does
        (a CUDA tensor where it is)."""
        X = _on_device(X)
        shape = getattr(X, "shape", None)
        if not reset and shape is not None and len(shape) >= 2:
            self._check_shape(tuple(shape[1:]))  # before scikit-learn's width check: names both
        if _torch.is_tensor(X) and X.device.type != "cpu":
            self._validate_device_tensor(X, reset)
        else:
            X = validatable(to_numpy(X) if is_tensor_like(X) else X)
            # Images and other N-d samples are welcome: the module sees them as they are.
            X = validate_data(self, X, reset=reset, dtype="numeric", ensure_min_samples=1,
                              allow_nd=True)
        return _Input("array", X, X.shape[0], tuple(X.shape[1:]))

    def _validate_device_tensor(self, X, reset):
        import torch

        if X.ndim < 2:
            raise ValueError(f"{_NAME}: expected X of at least 2 dimensions, got a tensor of "
                             f"shape {tuple(X.shape)}; reshape it to (n_samples, n_features)")
        if X.shape[0] < 1:
            raise ValueError(f"{_NAME}: X has 0 samples; at least 1 is required")
        if reset:
            self.n_features_in_ = X.shape[1]
            self.__dict__.pop("feature_names_in_", None)
        elif X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but {_NAME} is expecting "
                             f"{self.n_features_in_} features as input.")
        if X.is_floating_point() and not bool(torch.isfinite(X).all()):
            raise ValueError(f"{_NAME}: X contains NaN or infinity; {_NAME} does not accept "
                             "missing values: impute them first")

    def _dict_input(self, X):
        if not X:
            raise ValueError(f"{_NAME}: X is an empty dict; pass {{name: array}} with one "
                             "array per input of the module")
        columns, lengths = {}, {}
        for name, value in X.items():
            if not isinstance(name, str) or not name.isidentifier():
                raise TypeError(f"{_NAME}: X is a dict, so its keys are the module's keyword "
                                f"arguments, but key {name!r} is not a Python name")
            value = _on_device(value)
            if _torch.is_tensor(value) and value.device.type != "cpu":
                if value.ndim < 1:
                    raise ValueError(f"{_NAME}: X[{name!r}] is 0-d; every input needs a leading "
                                     "(sample) dimension")
            else:
                value = validatable(to_numpy(value) if is_tensor_like(value) else value)
                if np.ndim(value) < 1:
                    raise ValueError(f"{_NAME}: X[{name!r}] is 0-d; every input needs a "
                                     "leading (sample) dimension")
                value = check_array(value, dtype="numeric", ensure_2d=False, allow_nd=True,
                                    input_name=f"X[{name!r}]")
            columns[name], lengths[name] = value, value.shape[0]
        if len(set(lengths.values())) != 1:
            raise ValueError(f"{_NAME}: the arrays of X have different lengths {lengths}; every "
                             "input needs one row per sample")
        n = next(iter(lengths.values()))
        if n < 1:
            raise ValueError(f"{_NAME}: X has 0 samples; at least 1 is required")
        return _Input("dict", columns, n, {name: tuple(v.shape[1:]) for name, v in columns.items()})

    def _record_features(self, shape):
        """n_features_in_ for the inputs scikit-learn's validation does not see."""
        self.__dict__.pop("feature_names_in_", None)
        if isinstance(shape, tuple):
            self.n_features_in_ = shape[0] if shape else 1
        else:  # a dict: no single width
            self.__dict__.pop("n_features_in_", None)

    def _record_or_check_shape(self, shape, reset):
        if reset:
            self.sample_shape_in_ = shape
        elif shape is not None:
            self._check_shape(shape)

    def _check_shape(self, shape, batch=None):
        expected = getattr(self, "sample_shape_in_", None)  # None: pickled before it existed
        if expected is None or shape == expected:
            return
        where = "" if batch is None else f" (batch {batch})"
        if isinstance(expected, dict) or isinstance(shape, dict):
            raise ValueError(f"{_NAME}: X{where} has samples of shape {_describe(shape)}, but "
                             f"{_NAME} was fitted on samples of shape {_describe(expected)}; "
                             "pass X of the kind and shape it was fitted on, or fit again")
        if len(shape) == len(expected) == 1:
            # 2-D X: scikit-learn's sentence (its checks look for it) says it all
            raise ValueError(f"X{where} has {shape[0]} features, but {_NAME} is expecting "
                             f"{expected[0]} features as input; pass X of {expected[0]} "
                             "features, or fit again")
        raise ValueError(f"{_NAME}: X{where} has samples of shape {shape}, but {_NAME} was "
                         f"fitted on samples of shape {expected}; pass X of that shape, or "
                         "fit again")

    # -- transforming --------------------------------------------------------------

    def transform(self, X):
        """Run ``module_`` over ``X`` in batches; returns a 2-D NumPy array (a
        tensor on ``X``'s device under array API dispatch: see Notes; a lazy
        dask array for a dask array or Dask DataFrame)."""
        self._validate_params()  # set_params since fit: the same errors as fit's
        if _dask.is_dask_collection(X):
            return _dask.transform(self, X, self.batch_size)
        import torch

        check_is_fitted(self)
        target = self._array_api_target(torch, X)
        source = self._read(X, reset=False)
        return self._run(torch, source, target)

    def _array_api_target(self, torch, X):
        """Under scikit-learn's array API dispatch, (device, wrap): the result is
        written into a torch tensor on that device, then handed to X's namespace
        by `wrap` (None: torch itself). None for a NumPy result."""
        if not get_config().get("array_api_dispatch", False):
            return None
        self._check_namespace(X)
        if transform_output(self) != "default":  # a container was asked for: NumPy goes in it
            return None
        if isinstance(X, torch.Tensor):
            return X.device, None
        if type(X).__module__.split(".")[0] == "cupy" and torch.cuda.is_available():
            return torch.device("cuda", X.device.id), _cupy().from_dlpack
        if _array_namespace(X) is None:  # NumPy, array-likes, Datasets, dicts: NumPy
            return None
        # Another array API namespace (array_api_strict, JAX): through DLPack, from
        # a tensor on the device X's memory is on.
        device_type, index = _dlpack.device_of(X) or (1, 0)
        if device_type in _dlpack.CUDA_DEVICE_TYPES and torch.cuda.is_available():
            device = torch.device("cuda", index)
        else:
            device = torch.device("cpu")
        namespace, where = X.__array_namespace__(), X.device
        return device, lambda result: _in_namespace(namespace, result, where)

    def _check_namespace(self, X):
        """Under dispatch, X of the namespace and device fit had, when that was not
        NumPy: scikit-learn's own estimators refuse any other, and so would the next
        step of a pipeline."""
        fitted = self.__dict__.get("_fit_namespace")  # absent from older pickles
        given = _array_namespace(X)
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

    def _run(self, torch, source, target, quiet=False):
        progress = _Progress(source.batch_count(self.batch_size),
                             enabled=self.verbose > 0 and not quiet)
        try:
            if target is not None:
                device, wrap = target
                result = self._fill(torch, self._outputs(torch, source, progress), source,
                                    device)
                return result if wrap is None else wrap(result)
            if self.device_.type == "cuda" and source.n_samples is not None:
                return self._run_pipelined(torch, source, progress)
            return collect(self._outputs(torch, source, progress))
        finally:
            progress.close()

    def _outputs(self, torch, source, progress):
        """The flattened output of each batch, computed on device_."""
        staging, first = {}, None
        with torch.inference_mode(), self._layer_capture(torch) as capture:
            for index, (batch, rows, owned) in enumerate(source.batches(self.batch_size)):
                inputs = _map(batch, lambda value, name, owned=owned: self._stage(
                    torch, value, owned, staging, name))
                output = self._flatten(torch, self._select(self._forward(inputs, capture)), rows)
                first = _check_like(first, output, index)
                yield output
                progress.step(rows)

    @staticmethod
    def _fill(torch, outputs, source, device):
        """The outputs written batch by batch into one tensor on `device`."""
        result, start = None, 0
        for output in outputs:
            if result is None:
                result = torch.empty((source.n_samples, output.shape[1]), dtype=output.dtype,
                                     device=device)
            result[start:start + output.shape[0]].copy_(output)
            start += output.shape[0]
        return result

    def _run_pipelined(self, torch, source, progress):
        """On a GPU: while batch k computes, batch k+1 is uploaded on one side
        stream and batch k-1's output downloaded on another, straight into its
        rows of the result."""
        device, n = self.device_, source.n_samples
        compute = torch.cuda.current_stream(device)
        upload, download = torch.cuda.Stream(device), torch.cuda.Stream(device)
        batches = source.batches(self.batch_size)

        def send():
            item = next(batches, None)
            if item is None:
                return None
            batch, rows, _ = item
            with torch.cuda.stream(upload):
                return _map(batch, lambda value, name: self._upload(torch, value, upload)), rows

        result, transfers, start, first = None, [], 0, None
        upload.wait_stream(compute)  # X may still be being written on the current stream
        incoming = send()
        with torch.inference_mode(), self._layer_capture(torch) as capture:
            while incoming is not None:
                compute.wait_stream(upload)
                batch, rows = incoming
                for tensor in _values(batch):
                    tensor.record_stream(compute)  # allocated on `upload`, used here
                incoming = send()
                output = self._flatten(torch, self._select(self._forward(batch, capture)), rows)
                first = _check_like(first, output, len(transfers))
                if start + rows > n:
                    raise ValueError(f"{_NAME}: X brought more than the {n} samples its length "
                                     "announced")
                if result is None:
                    result = np.empty((n, output.shape[1]), numpy_dtype(output.dtype))
                download.wait_stream(compute)
                output.record_stream(download)
                with torch.cuda.stream(download):  # its own current stream: compute never waits
                    transfers.append(to_numpy_async(output, out=result[start:start + rows]))
                start += rows
                progress.step(rows)
        for transfer in transfers:
            transfer.wait()
        if start != n:
            raise ValueError(f"{_NAME}: X brought {start} samples, but its length said {n}")
        return result

    def _stage(self, torch, value, owned, staging, name):
        """`value` (an array or tensor) on device_ in dtype_, in memory the caller
        does not own: a module that works in place then never changes X."""
        if self.device_.type != "cpu":
            return self._upload(torch, value, None)
        if owned and isinstance(value, torch.Tensor):
            return value.to(device=self.device_, dtype=self.dtype_)  # made here: a stacked batch
        rows, trailing = value.shape[0], tuple(value.shape[1:])
        buffer = staging.get(name)
        if buffer is None or buffer.shape[0] < rows or tuple(buffer.shape[1:]) != trailing:
            buffer = staging[name] = torch.empty((max(rows, self.batch_size), *trailing),
                                                 dtype=self.dtype_)
        target = buffer[:rows]
        if isinstance(value, torch.Tensor) and value.device.type == "cpu":
            value = to_numpy(value)  # a view: NumPy's copy below is the cheapest here
        if isinstance(value, np.ndarray):
            try:
                view = to_numpy(target, copy=False)
            except BufferError:  # complex32: no NumPy view; torch casts
                target.copy_(torch.from_numpy(np.array(value)))
            else:
                np.copyto(view, value, casting="unsafe")
        else:
            target.copy_(value)
        return target

    def _upload(self, torch, value, stream):
        """`value` copied to device_ in dtype_ (always a copy, on `stream`)."""
        if isinstance(value, np.ndarray):
            if self.device_.type == "cuda":
                return to_device(value, self.device_, dtype=self.dtype_, stream=stream)
            value = torch.from_numpy(value if value.flags.writeable else value.copy())
        return value.to(device=self.device_, dtype=self.dtype_, non_blocking=True, copy=True)

    def _forward(self, inputs, capture):
        try:
            if isinstance(inputs, dict):
                result = self.module_(**inputs)
            else:
                result = self.module_(inputs)
        except _LayerReached:
            pass
        except Exception as error:
            raise RuntimeError(f"{_NAME}: the module raised {type(error).__name__} on a batch "
                               f"of {_describe_batch(inputs)}: {error}") from error
        if capture is not None:
            if not capture:
                raise RuntimeError(f"{_NAME}: layer={self.layer!r} never ran in the module's "
                                   "forward pass; name a submodule that forward calls")
            result = capture[0]  # its first call, where the hook stopped the pass
            capture.clear()
        return result

    @contextlib.contextmanager
    def _layer_capture(self, torch):
        """With `layer`: a list that receives the layer's output, taken by a
        forward hook that then stops the forward pass (by an exception that
        _forward catches). The hook acts only in the thread that set it: other
        threads transforming with the same module_ meanwhile have their own."""
        if self.layer is None:
            yield None
            return
        captured = []
        owner = threading.get_ident()

        def hook(module, args, output):
            if threading.get_ident() == owner:
                captured.append(output)
                raise _LayerReached

        handle = self.module_.get_submodule(self.layer).register_forward_hook(hook)
        try:
            yield captured
        finally:
            handle.remove()

    def _select(self, result):
        output = self.output
        if isinstance(result, dict):
            if output is None or output not in result:
                raise ValueError(f"{_NAME}: the module returned a dict with keys "
                                 f"{sorted(result, key=str)}; pass output=<key> to pick one "
                                 f"(got output={output!r})")
            return result[output]
        if isinstance(result, (tuple, list)):
            if not isinstance(output, Integral) or not -len(result) <= output < len(result):
                raise ValueError(f"{_NAME}: the module returned a {type(result).__name__} of "
                                 f"{len(result)}; pass output=0..{len(result) - 1} to pick one "
                                 f"(got output={output!r})")
            return result[output]
        if output is not None:
            raise ValueError(f"{_NAME}: output={output!r}, but the module returned a single "
                             f"{type(result).__name__}; leave output=None")
        return result

    def _flatten(self, torch, result, rows):
        if not isinstance(result, torch.Tensor):
            raise TypeError(f"{_NAME}: the module returned {type(result).__name__}, expected a "
                            "torch.Tensor")
        if result.ndim == 0 or result.shape[0] != rows:
            raise ValueError(f"{_NAME}: the module returned shape {tuple(result.shape)} for a "
                             f"batch of {rows} rows; its first dimension must be the batch")
        if result.layout != torch.strided:  # sparse: to_numpy densifies it too
            result = result.to_dense()
        result = result.reshape(rows, -1)
        if str(result.dtype).removeprefix("torch.").startswith(_WIDENED_OUTPUTS):
            result = result.float()
        return result

    # -- conventions -------------------------------------------------------------------

    @property
    def _n_features_out(self):
        return self.n_features_out_

    def set_params(self, **params):
        """Set parameters; ``module__<name>`` ones reach a skorch net's own.

        A plain torch module or function has no parameters of this kind: a
        ``ValueError`` names them and says to pass ``module=...`` instead.

        Parameters
        ----------
        **params : dict
            Parameter names (``batch_size``, ``module__lr``, ...) and values.

        Returns
        -------
        self : TorchTransformer

        Examples
        --------
        >>> import torch
        >>> from tensorbridge.sklearn import TorchTransformer
        >>> t = TorchTransformer(torch.nn.Linear(3, 2)).set_params(batch_size=64)
        >>> t.set_params(module=torch.nn.Linear(4, 2)).module
        Linear(in_features=4, out_features=2, bias=True)
        """
        module = params.get("module", self.module)
        nested = sorted(key for key in params if key.startswith("module__"))
        if nested and not hasattr(module, "set_params"):
            raise ValueError(
                f"{_NAME}.set_params: {', '.join(nested)} set parameters of the module, but a "
                f"{type(module).__name__} has no set_params (only a skorch net does); pass "
                f"module=... with the module built as you want it instead")
        return super().set_params(**params)

    def __sklearn_clone__(self):
        # As scikit-learn clones, except that a torch module or function is
        # shared, not deep-copied: nothing here changes it, and fit copies it
        # once anyway. A skorch net is cloned (it trains in place).
        params = self.get_params(deep=False)
        module = params.pop("module")
        twin = type(self)(module=clone(module) if _torch.is_skorch_net(module) else module,
                          **{name: clone(value, safe=False) for name, value in params.items()})
        for attribute in ("_metadata_request", "_sklearn_output_config"):
            if hasattr(self, attribute):
                setattr(twin, attribute, copy.deepcopy(getattr(self, attribute)))
        if hasattr(self, "_skl_callbacks"):
            twin._skl_callbacks = self._skl_callbacks
        return twin

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.array_api_support = True  # under dispatch the result follows X's namespace
        tags.input_tags.allow_nan = False
        tags.transformer_tags.preserves_dtype = [self._returned_dtype()]
        return tags

    def _returned_dtype(self) -> str:
        """The NumPy name of the dtype transform returns for a module that keeps
        its input's dtype: dtype_ as NumPy holds it (bf16 and fp8 widened)."""
        if self.dtype is None:
            parameter = _first_parameter(self.module)
            if parameter is None:
                return "float32"
            dtype = parameter.dtype
        else:
            import torch

            dtype = _torch_dtype(torch, self.dtype)
            if dtype is None:  # fit names it; tags must not raise
                return str(self.dtype).removeprefix("torch.")
        if str(dtype).removeprefix("torch.").startswith(_WIDENED_OUTPUTS):
            return "float32"
        try:
            return numpy_dtype(dtype).name
        except TypeError:
            return str(dtype).removeprefix("torch.")

    def __getstate__(self):
        # Modules are stored through torch.save, so that one fitted on a GPU
        # loads (onto the CPU) where no GPU exists; module_ is left out when it
        # can be made again from what the pickle holds anyway.
        state = dict(super().__getstate__())  # may be our own __dict__: never mutate it
        if self._recreatable():
            state["module_"] = _Recreate()
        for key in ("module", "module_"):
            if _torch.is_module(state.get(key)):
                import torch

                buffer = io.BytesIO()
                script = isinstance(state[key], torch.jit.ScriptModule)  # traced or scripted
                with _quiet_torchscript():
                    (torch.jit.save if script else torch.save)(state[key], buffer)
                state[key] = _SavedModule(buffer.getvalue(), script)
        return state

    def _recreatable(self) -> bool:
        """Whether module_ is what _place makes of its source now (parameters
        set since fit included): then the pickle need not hold it."""
        torch = _torch.imported()
        placed = self.__dict__.get("module_")
        if not _torch.is_module(placed):
            return False
        source = self._source_module()
        if source is placed:  # a net's own module: shared again on load, unless cast
            return self._cast() is None
        return isinstance(source, torch.nn.Module) and _same_weights(torch, source, placed,
                                                                     self._cast())

    def __setstate__(self, state):
        import torch

        state.setdefault("verbose", 0)  # parameters added since older pickles were written
        state.setdefault("layer", None)
        device = state.get("device_")
        if device is not None and device.type == "cuda" and (
                not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
            state["device_"] = device = torch.device("cpu")
        for key in ("module", "module_"):
            if isinstance(state.get(key), _SavedModule):
                if key == "module_":
                    location = device
                else:  # the user's module: where it was, or the CPU when that is gone
                    location = None if torch.cuda.is_available() else "cpu"
                saved = io.BytesIO(state[key].data)
                with _quiet_torchscript():
                    state[key] = (
                        torch.jit.load(saved, map_location=location) if state[key].script
                        else torch.load(saved, map_location=location, weights_only=False))
        super().__setstate__(state)
        if isinstance(state.get("module_"), _Recreate):
            self.module_ = self._place(torch)


class _LayerReached(Exception):
    """Raised by the layer hook: the rest of the forward pass is not needed."""


@contextlib.contextmanager
def _quiet_torchscript():
    """torch.jit's deprecation warning, silenced: saving the user's own
    TorchScript module is the only way to pickle it, and no choice of theirs."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=DeprecationWarning)
        yield


class _SavedModule:
    """A torch module serialised with torch.save (a TorchScript module, traced
    or scripted, with torch.jit.save, which alone can), inside a pickled
    estimator."""

    script = False  # what pickles written before TorchScript modules were saved mean

    def __init__(self, data: bytes, script: bool = False):
        self.data = data
        self.script = script


class _Recreate:
    """Stands for module_ in a pickle: made again on load by _place, from what
    the pickle holds (net_ or module, device_, dtype and dtype_). One written
    by an earlier development build has `source` and `cast` attributes: the
    same facts, which the rest of that pickle implies, so they are ignored."""


# -- inputs --------------------------------------------------------------------------


class _Input:
    """X as TorchTransformer reads it.

    kind: "array" (data: an ndarray or device tensor of 2+ dims), "dict" (data:
    name -> array or tensor), "dataset" (a map-style or iterable Dataset),
    "loader" (a DataLoader). n_samples is None when only iterating tells.
    batches(batch_size) yields (batch, rows, owned): batch is an array, a
    tensor or a dict of them; owned means it was made here, not the caller's.
    """

    def __init__(self, kind, data, n_samples, sample_shape, batch_counter=None, batches=None):
        self.kind, self.data, self.n_samples = kind, data, n_samples
        self.sample_shape = sample_shape
        self._batch_counter, self._batches = batch_counter, batches

    def batch_count(self, batch_size):
        if self._batch_counter is not None:
            return self._batch_counter(batch_size)
        return None if self.n_samples is None else -(-self.n_samples // batch_size)

    def batches(self, batch_size):
        if self._batches is not None:
            yield from self._batches(batch_size)
            return
        for start in range(0, self.n_samples, batch_size):
            rows = slice(start, start + batch_size)
            yield _map(self.data, lambda value, name, rows=rows: value[rows]), \
                min(batch_size, self.n_samples - start), False

    def head(self):
        """The first sample, as an "array" or "dict" input of one row."""
        batch, _, _ = next(iter(self.batches(1)))
        first = _map(batch, lambda value, name: value[:1])
        return _Input("dict" if isinstance(first, dict) else "array", first, 1,
                      self.sample_shape)


def _dataset_input(dataset, data_module):
    """A map-style Dataset (len and integer indexing) or an IterableDataset."""
    iterable = isinstance(dataset, data_module.IterableDataset)
    if not iterable:
        try:
            n = len(dataset)
        except TypeError:
            raise TypeError(f"{_NAME}: X is a map-style Dataset without __len__; give it "
                            "__len__, or make it an IterableDataset") from None
        if n < 1:
            raise ValueError(f"{_NAME}: X is an empty Dataset; at least 1 sample is required")

    def items():
        return iter(dataset) if iterable else (dataset[i] for i in range(n))

    # The probe's stream is resumed by the first pass over the batches: each
    # item is read once per fit or transform (its first item not twice).
    probe = items()
    try:
        first = _item_input(next(probe), "item 0")
    except StopIteration:
        raise ValueError(f"{_NAME}: X is an empty Dataset; at least 1 sample is required") \
            from None
    shape = tuple(first.shape)
    resume = [probe]

    def samples():
        if resume:
            stream, start = resume.pop(), 1
            yield first
        else:
            stream, start = items(), 0
        for index, item in enumerate(stream, start):
            sample = _item_input(item, f"item {index}")
            if tuple(sample.shape) != shape:
                raise ValueError(f"{_NAME}: Dataset item {index} has shape "
                                 f"{tuple(sample.shape)}, but item 0 has shape {shape}; "
                                 "every sample must have one shape")
            yield sample

    def batches(batch_size):
        import torch

        stream = samples()
        while chunk := list(itertools.islice(stream, batch_size)):
            yield torch.stack(chunk), len(chunk), True

    return _Input("dataset", dataset, None if iterable else n, shape, batches=batches)


_NO_BATCH = object()


def _loader_input(loader, data_module):
    sampler = getattr(loader, "sampler", None)
    random = (data_module.RandomSampler, data_module.SubsetRandomSampler,
              data_module.WeightedRandomSampler)
    if isinstance(sampler, random):
        raise ValueError(f"{_NAME}: the DataLoader draws samples at random "
                         f"({type(sampler).__name__}), so the rows would not come out in the "
                         "order of its dataset; pass a DataLoader with shuffle=False")
    if loader.drop_last:
        raise ValueError(f"{_NAME}: the DataLoader has drop_last=True, so the last samples "
                         "would have no row; pass one with drop_last=False")
    if loader.batch_size is None and loader.batch_sampler is None:
        raise ValueError(f"{_NAME}: the DataLoader has batch_size=None, so its items have no "
                         "batch dimension; give it a batch_size")
    n = None
    if not isinstance(loader.dataset, data_module.IterableDataset):
        try:
            n = len(loader.dataset)
        except TypeError:
            pass

    # The probe's iterator is resumed by the first pass over the batches: a
    # loader (its worker processes) is started once per pass, not twice.
    probe = iter(loader)
    probed = next(probe, _NO_BATCH)
    resume = [probe]

    def batches(batch_size):  # the loader's own batches, as they come
        if resume:
            stream = itertools.chain([probed], resume.pop())
        else:
            stream = iter(loader)
        for index, batch in enumerate(stream):
            batch = _item_input(batch, f"batch {index}")
            if batch.ndim < 1:
                raise ValueError(f"{_NAME}: DataLoader batch {index} is 0-d; batches need a "
                                 "leading (sample) dimension")
            yield batch, batch.shape[0], False

    def batch_count(batch_size):
        try:
            return len(loader)
        except TypeError:
            return None

    if probed is _NO_BATCH:
        raise ValueError(f"{_NAME}: the DataLoader yields no batch; at least 1 sample is "
                         "required")
    first = _item_input(probed, "batch 0")
    if first.ndim < 1:
        raise ValueError(f"{_NAME}: DataLoader batch 0 is 0-d; batches need a leading (sample) "
                         "dimension")
    shape = tuple(first.shape[1:])

    def checked(batch_size):
        for index, (batch, rows, owned) in enumerate(batches(batch_size)):
            if tuple(batch.shape[1:]) != shape:
                raise ValueError(f"{_NAME}: DataLoader batch {index} has samples of shape "
                                 f"{tuple(batch.shape[1:])}, but batch 0 has {shape}; every "
                                 "sample must have one shape")
            yield batch, rows, owned

    return _Input("loader", loader, n, shape, batch_counter=batch_count, batches=checked)


def _item_input(item, where):
    """The input of a Dataset item or DataLoader batch: the item itself (a
    tensor or array), or the first element of a tuple or list."""
    import torch

    if isinstance(item, (tuple, list)):
        if not item:
            raise TypeError(f"{_NAME}: Dataset {where} is an empty {type(item).__name__}; "
                            "items must be tensors or tuples led by the input")
        item = item[0]
    if isinstance(item, np.ndarray):
        item = torch.from_numpy(item if item.flags.writeable else item.copy())
    if isinstance(item, torch.Tensor):
        # What validation checks of an array, checked here item by item (fit reads item 0)
        if item.is_floating_point() and not bool(torch.isfinite(item).all()):
            raise ValueError(f"{_NAME}: Dataset {where} contains NaN or infinity; {_NAME} "
                             "does not accept missing values: impute them first")
        return item
    kind = type(item).__name__
    hint = " (for a module of several inputs pass a dict of arrays as X)" if kind == "dict" else ""
    raise TypeError(f"{_NAME}: Dataset {where} is a {kind}; items must be tensors or arrays, "
                    f"or tuples whose first element is one{hint}")


def _check_like(first, output, index):
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


def _on_device(X):
    """A CUDA DLPack producer other than torch (CuPy) as a torch tensor over the
    same memory; anything else as it is."""
    torch = _torch.imported()
    if torch is None or _torch.is_tensor(X) or not is_tensor_like(X):  # (never an ndarray)
        return X
    try:
        device_type = _dlpack.device_of(X)[0]
    except Exception:  # noqa: BLE001 - not a DLPack producer after all
        return X
    if device_type in _dlpack.CUDA_DEVICE_TYPES and torch.cuda.is_available():
        return torch.from_dlpack(X)
    return X


def _array_namespace(X):
    """(namespace name, device) of an array API array other than NumPy's (a torch
    tensor included), or None."""
    if _torch.is_tensor(X):
        return "torch", str(X.device)
    if isinstance(X, np.ndarray) or not hasattr(X, "__array_namespace__"):
        return None
    return X.__array_namespace__().__name__, str(getattr(X, "device", None))


def _in_namespace(namespace, result, device):
    """The torch tensor `result` as an array of `namespace` on `device`: through
    DLPack (no copy), then moved where it is not on `device` yet."""
    array = namespace.from_dlpack(result)
    if getattr(array, "device", device) != device:
        array = namespace.asarray(array, device=device)
    return array


def _map(batch, function):
    if isinstance(batch, dict):
        return {name: function(value, name) for name, value in batch.items()}
    return function(batch, None)


def _values(batch):
    return batch.values() if isinstance(batch, dict) else (batch,)


def _describe(shape):
    if isinstance(shape, dict):
        return "{" + ", ".join(f"{name!r}: {value}" for name, value in shape.items()) + "}"
    return str(shape)


def _describe_batch(inputs):
    def one(tensor):
        return f"shape {tuple(tensor.shape)} {tensor.dtype} on {tensor.device}"

    if isinstance(inputs, dict):
        return ", ".join(f"{name}: {one(value)}" for name, value in inputs.items())
    return one(inputs)


# -- progress ------------------------------------------------------------------------


class _Progress:
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


# -- modules -------------------------------------------------------------------------


def _cupy():
    import cupy

    return cupy


def _torch_dtype(torch, value):
    """`value` (a torch dtype or its name: 'float64', 'torch.half', 'float') as a
    floating or complex torch dtype, or None when it is not one."""
    dtype = getattr(torch, value.removeprefix("torch."), None) if isinstance(value, str) \
        else value
    if not isinstance(dtype, torch.dtype) or not (dtype.is_floating_point or dtype.is_complex):
        return None
    return dtype


def _check_not_meta(module):
    """A module whose weights are on the meta device has no values to copy."""
    if not _torch.is_module(module):
        return
    for name, tensor in itertools.chain(module.named_parameters(), module.named_buffers()):
        if tensor.is_meta:
            # both a ValueError (a bad module) and a TypeError (as to_numpy's for meta)
            raise InvalidParameterError(
                f"{_NAME}: the module's {name!r} is on the meta device (a shape without data), "
                "so it cannot run; load or materialise its weights first "
                "(module.to_empty(device='cpu') then load_state_dict, or "
                "load_state_dict(..., assign=True))")


def _first_parameter(module):
    if not _torch.is_module(module):
        return None
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        if tensor.is_floating_point():
            return tensor
    return None


def _placed(torch, module, device, cast, shared):
    """A copy of `module` on `device` (floating tensors cast to `cast` unless
    None), in eval mode, each tensor copied once, straight to where it goes;
    `module` itself when `shared` and it is already there as it should be."""
    if not isinstance(module, torch.nn.Module):
        return module  # a plain function: nothing to place
    if shared and cast is None and _same_device(_module_device(module), device):
        return module.eval()
    memo = {}
    with torch.no_grad():
        for tensor in itertools.chain(module.parameters(), module.buffers()):
            if id(tensor) in memo:
                continue
            dtype = cast if cast is not None and tensor.is_floating_point() else None
            if torch.nn.parameter.is_lazy(tensor):  # no data to copy: a new one, made there
                memo[id(tensor)] = type(tensor)(requires_grad=tensor.requires_grad,
                                                device=device, dtype=dtype or tensor.dtype)
                continue
            placed = tensor.detach().to(device=device, dtype=dtype, copy=True)
            if isinstance(tensor, torch.nn.Parameter):
                placed = torch.nn.Parameter(placed, requires_grad=tensor.requires_grad)
            memo[id(tensor)] = placed
    return copy.deepcopy(module, memo).eval()  # the rest (structure, attributes) as it is


def _is_lazy(torch, module) -> bool:
    """Whether `module` has parameters or buffers whose shape is not known yet."""
    return isinstance(module, torch.nn.Module) and any(
        torch.nn.parameter.is_lazy(tensor)
        for tensor in itertools.chain(module.parameters(), module.buffers()))


def _same_device(a, b) -> bool:
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def _module_device(module):
    import torch

    for tensor in itertools.chain(module.parameters(), module.buffers()):
        return tensor.device
    return torch.device("cpu")


def _same_weights(torch, source, placed, cast) -> bool:
    """Whether placed's parameters and buffers are source's, on placed's
    device, with floating ones cast to `cast` (unless None) and the rest in
    their own dtype: then _placed makes placed again from source."""
    if type(source) is not type(placed) or _is_lazy(torch, source):
        return False  # a lazy source's module_ was materialised on X: not made again from it
    ours, theirs = source.state_dict(), placed.state_dict()
    if ours.keys() != theirs.keys():
        return False
    with torch.no_grad():
        for name, tensor in ours.items():
            other = theirs[name]
            if not isinstance(tensor, torch.Tensor) or not isinstance(other, torch.Tensor):
                if tensor is not other:
                    return False
                continue
            dtype = cast if cast is not None and tensor.is_floating_point() else tensor.dtype
            if tensor.shape != other.shape or other.dtype != dtype or not torch.equal(
                    tensor.to(device=other.device, dtype=dtype), other):
                return False
    return True

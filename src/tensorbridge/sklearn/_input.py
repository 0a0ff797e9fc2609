"""Reading X: the one place where the kinds of input are told apart.

``read`` turns everything TorchTransformer takes (arrays and tensors, CuPy
and other DLPack producers, dicts of them, torch Datasets and DataLoaders)
into one ``Input``: its rows, per-sample shape and a batch iterator. The
other estimators take arrays only, through the same helpers: ``on_host`` and
``validatable`` make a tensor what scikit-learn's validation reads, and
``sample_shape`` records or checks the public fitted attribute
``sample_shape_in_`` of all four, with one wording for a mismatch.
``library_of`` recognises foreign arrays by the module that made their type,
without importing anything.
"""

from __future__ import annotations

import collections.abc
import itertools
import sys

import numpy as np
from scipy.sparse import issparse
from sklearn.utils.validation import check_array, validate_data

from .. import _dlpack, _torch, to_numpy
from .._dtypes import is_extended

_NAME = "TorchTransformer"  # the one estimator that reads Datasets, DataLoaders and dicts


# -- what an array is ------------------------------------------------------------------


def library_of(X) -> str:
    """The top-level module of the library that made ``X``'s type ("numpy",
    "cupy", "torch", "jax"...): foreign arrays are told apart by it, so that
    no library has to be imported to ask."""
    return type(X).__module__.partition(".")[0]


def is_tensor_like(X) -> bool:
    """A torch tensor, or any DLPack producer that is not a NumPy array."""
    if _torch.is_tensor(X):
        return True
    return hasattr(type(X), "__dlpack__") and library_of(X) != "numpy"


def on_host(X):
    """A tensor (any DLPack producer but NumPy) as the NumPy array
    ``to_numpy`` gives; anything else as it is."""
    return to_numpy(X) if is_tensor_like(X) else X


def validatable(array):
    """An ml_dtypes array (a bfloat16 or float8 tensor's NumPy view), which
    scikit-learn's validation refuses as not numeric, as float32: it holds each
    of its values exactly, and the estimators cast X anyway. Others as they are."""
    if isinstance(array, np.ndarray) and is_extended(array.dtype):
        return array.astype(np.float32)
    return array


# -- the per-sample shape, recorded at fit and checked after ----------------------------


def sample_shape(estimator, shape, reset):
    """Records (reset) ``sample_shape_in_``, the shape of one sample (a dict of
    them for a dict X), or checks `shape` against it."""
    if not reset:
        check_sample_shape(estimator, shape)
    else:
        estimator.sample_shape_in_ = tuple(shape) if not isinstance(shape, dict) else shape


def fitted_sample_shape(estimator):
    """The recorded sample shape, or None for a pickle written before there was
    one (0.1.0's TorchTransformer; ToNumpy and AugmentedEstimator kept it as
    ``_sample_shape`` then)."""
    state = estimator.__dict__
    return state.get("sample_shape_in_", state.get("_sample_shape"))


def check_sample_shape(estimator, shape):
    """A ValueError unless samples of ``shape`` are those ``estimator`` was
    fitted on: as many features in another shape or rank ((n, 8) and
    (n, 8, 2) alike to scikit-learn) would reach the next step as garbage."""
    expected = fitted_sample_shape(estimator)
    if expected is None:
        return
    if not isinstance(shape, dict):
        shape = tuple(shape)
    if not isinstance(expected, dict):
        expected = tuple(expected)
    if shape == expected:
        return
    name = type(estimator).__name__
    if isinstance(expected, dict) or isinstance(shape, dict):
        raise ValueError(f"{name}: X has samples of shape {shape}, but "
                         f"{name} was fitted on samples of shape {expected}; "
                         "pass X of the kind and shape it was fitted on, or fit again")
    if len(shape) == len(expected) == 1:
        # 2-D X: scikit-learn's sentence (its checks look for it) says it all
        raise ValueError(f"X has {shape[0]} features, but {name} is expecting "
                         f"{expected[0]} features as input; pass X of {expected[0]} "
                         "features, or fit again")
    raise ValueError(f"{name}: X has samples of shape {shape}, but {name} was "
                     f"fitted on samples of shape {expected}; pass X of that shape, or "
                     "fit again")


# -- X as one description -----------------------------------------------------------


def read(estimator, X, reset):
    """X as an `Input`; records (reset) or checks its per-sample shape."""
    data_module = sys.modules.get("torch.utils.data")
    if data_module is not None and isinstance(X, data_module.DataLoader):
        source = _loader_input(X, data_module)
    elif (data_module is not None and isinstance(X, data_module.TensorDataset)
          and X.tensors[0].ndim >= 2):
        source = _array_input(estimator, X.tensors[0], reset)  # its input tensor, as it is
    elif data_module is not None and isinstance(X, data_module.Dataset):
        source = _dataset_input(X, data_module)
    elif isinstance(X, dict) and not issparse(X):  # a DOK matrix is a dict too
        source = _dict_input(X)
    elif isinstance(X, collections.abc.Iterator):  # a generator: read once, and unsized
        raise TypeError(f"{_NAME}: X is a {type(X).__name__}, which can be read only once "
                        "and has no length; wrap it in a torch IterableDataset (or a "
                        "DataLoader over one), or gather it first with tb.collect(X)")
    else:
        source = _array_input(estimator, X, reset)
    if source.kind != "array" and reset:
        _record_features(estimator, source.sample_shape)
    sample_shape(estimator, source.sample_shape, reset)
    return source


def _array_input(estimator, X, reset):
    """An array or tensor of 2 or more dimensions, validated as scikit-learn does
    (a CUDA tensor where it is)."""
    X = on_device(X)
    shape = getattr(X, "shape", None)
    if not reset and shape is not None and len(shape) >= 2:
        check_sample_shape(estimator, shape[1:])  # before scikit-learn's width check: names both
    if _torch.is_tensor(X) and X.device.type != "cpu":
        _validate_device_tensor(estimator, X, reset)
    else:
        X = validatable(on_host(X))
        # Images and other N-d samples are welcome: the module sees them as they are.
        X = validate_data(estimator, X, reset=reset, dtype="numeric", ensure_min_samples=1,
                          allow_nd=True)
    return Input("array", X, X.shape[0], tuple(X.shape[1:]))


def _validate_device_tensor(estimator, X, reset):
    import torch

    if X.ndim < 2:
        raise ValueError(f"{_NAME}: expected X of at least 2 dimensions, got a tensor of "
                         f"shape {tuple(X.shape)}; reshape it to (n_samples, n_features)")
    if X.shape[0] < 1:
        raise ValueError(f"{_NAME}: X has 0 samples; at least 1 is required")
    if reset:
        _record_features(estimator, tuple(X.shape[1:]))
    elif X.shape[1] != estimator.n_features_in_:
        raise ValueError(f"X has {X.shape[1]} features, but {_NAME} is expecting "
                         f"{estimator.n_features_in_} features as input.")
    if X.is_floating_point() and not bool(torch.isfinite(X).all()):
        raise ValueError(f"{_NAME}: X contains NaN or infinity; {_NAME} does not accept "
                         "missing values: impute them first")


def _dict_input(X):
    if not X:
        raise ValueError(f"{_NAME}: X is an empty dict; pass {{name: array}} with one "
                         "array per input of the module")
    columns, lengths = {}, {}
    for name, value in X.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise TypeError(f"{_NAME}: X is a dict, so its keys are the module's keyword "
                            f"arguments, but key {name!r} is not a Python name")
        value = on_device(value)
        if np.ndim(value) < 1:
            raise ValueError(f"{_NAME}: X[{name!r}] is 0-d; every input needs a leading "
                             "(sample) dimension")
        if not _torch.is_tensor(value) or value.device.type == "cpu":
            value = check_array(validatable(on_host(value)), dtype="numeric", ensure_2d=False,
                                allow_nd=True, input_name=f"X[{name!r}]")
        columns[name], lengths[name] = value, value.shape[0]
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{_NAME}: the arrays of X have different lengths {lengths}; every "
                         "input needs one row per sample")
    n = next(iter(lengths.values()))
    if n < 1:
        raise ValueError(f"{_NAME}: X has 0 samples; at least 1 is required")
    return Input("dict", columns, n, {name: tuple(v.shape[1:]) for name, v in columns.items()})


def _record_features(estimator, shape):
    """n_features_in_ for the inputs scikit-learn's validation does not see."""
    estimator.__dict__.pop("feature_names_in_", None)
    if isinstance(shape, tuple):
        estimator.n_features_in_ = shape[0] if shape else 1
    else:  # a dict: no single width
        estimator.__dict__.pop("n_features_in_", None)


class Input:
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
            yield map_batch(self.data, lambda value, name, rows=rows: value[rows]), \
                min(batch_size, self.n_samples - start), False

    def head(self):
        """The first sample, as an "array" or "dict" input of one row."""
        batch, _, _ = next(iter(self.batches(1)))
        first = map_batch(batch, lambda value, name: value[:1])
        return Input("dict" if isinstance(first, dict) else "array", first, 1,
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
    first, passes = _probed(lambda: iter(dataset) if iterable
                            else (dataset[i] for i in range(n)))
    if first is _NONE:
        raise ValueError(f"{_NAME}: X is an empty Dataset; at least 1 sample is required")
    shape = tuple(_item_input(first, "item 0").shape)

    def samples():
        for index, item in enumerate(passes()):
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

    return Input("dataset", dataset, None if iterable else n, shape, batches=batches)


_NONE = object()


def _probed(make):
    """(the first item of ``make()``, or _NONE; ``passes``): each ``passes()``
    iterates the items, the first by resuming the probe's stream, so that a fit
    or transform reads each item once (and starts a DataLoader's workers once)."""
    probe = make()
    first = next(probe, _NONE)
    resume = [probe]

    def passes():
        return itertools.chain([first], resume.pop()) if resume else make()

    return first, passes


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
    first, passes = _probed(lambda: iter(loader))
    if first is _NONE:
        raise ValueError(f"{_NAME}: the DataLoader yields no batch; at least 1 sample is "
                         "required")
    shape = tuple(_loader_batch(first, 0).shape[1:])

    def batches(batch_size):  # the loader's own batches, as they come
        for index, batch in enumerate(passes()):
            batch = _loader_batch(batch, index)
            if tuple(batch.shape[1:]) != shape:
                raise ValueError(f"{_NAME}: DataLoader batch {index} has samples of shape "
                                 f"{tuple(batch.shape[1:])}, but batch 0 has {shape}; every "
                                 "sample must have one shape")
            yield batch, batch.shape[0], False

    def batch_count(batch_size):
        try:
            return len(loader)
        except TypeError:
            return None

    return Input("loader", loader, n, shape, batch_counter=batch_count, batches=batches)


def _loader_batch(batch, index):
    batch = _item_input(batch, f"batch {index}")
    if batch.ndim < 1:
        raise ValueError(f"{_NAME}: DataLoader batch {index} is 0-d; batches need a leading "
                         "(sample) dimension")
    return batch


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


def on_device(X):
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


def array_namespace(X):
    """(namespace name, device) of an array API array other than NumPy's (a torch
    tensor included), or None."""
    if _torch.is_tensor(X):
        return "torch", str(X.device)
    if isinstance(X, np.ndarray) or not hasattr(X, "__array_namespace__"):
        return None
    return X.__array_namespace__().__name__, str(getattr(X, "device", None))


def map_batch(batch, function):
    if isinstance(batch, dict):
        return {name: function(value, name) for name, value in batch.items()}
    return function(batch, None)


def describe_batch(inputs):
    def one(tensor):
        return f"shape {tuple(tensor.shape)} {tensor.dtype} on {tensor.device}"

    if isinstance(inputs, dict):
        return ", ".join(f"{name}: {one(value)}" for name, value in inputs.items())
    return one(inputs)

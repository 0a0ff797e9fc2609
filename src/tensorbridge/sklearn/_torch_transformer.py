"""TorchTransformer: a torch module or function as a scikit-learn transformer."""

from __future__ import annotations

import copy
import io
from numbers import Integral

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.base import _fit_context
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted, validate_data

from .._collect import collect
from .._core import to_numpy  # the native fast path, as tensorbridge.to_numpy
from . import _dask
from ._to_numpy import is_tensor_like

_WIDENED_OUTPUTS = ("bfloat16", "float8")  # dtypes NumPy lacks: returned as float32


class TorchTransformer(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Run a torch module (or any function of a tensor) over ``X`` in batches.

    ``fit`` validates ``X``, records ``n_features_in_`` (and
    ``feature_names_in_``) and places a copy of the module on the device as
    ``module_``: the module you pass is never moved or changed. ``transform``
    runs ``module_`` in eval mode under ``torch.inference_mode()`` over batches
    of ``X`` cast to ``dtype``, and writes one NumPy array batch by batch
    (outputs of any rank are flattened per sample).

    Parameters
    ----------
    module : torch.nn.Module or callable
        Maps a float tensor of shape (batch, n_features) to a tensor whose
        first dimension is the batch (or a tuple/dict of them: see ``output``).
    batch_size : int, default=1024
        Rows per forward call.
    device : str or torch.device, default="auto"
        Where ``module_`` runs: "auto" means CUDA when available, else the CPU.
    dtype : torch.dtype or str, default=None
        The dtype ``X`` is cast to (and a module's floating parameters, when
        given). Default: the module's parameter dtype, float32 without any.
    output : int or str, default=None
        Which element of a tuple (int) or dict (str) output to keep.

    Attributes
    ----------
    module_ : the placed copy of ``module``.
    device_ : torch.device
    dtype_ : torch.dtype
    n_features_in_ : int
    feature_names_in_ : ndarray of str, when ``X`` has string column names.
    n_features_out_ : int, width of the flattened output.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from tensorbridge.sklearn import TorchTransformer
    >>> t = TorchTransformer(torch.nn.Linear(3, 2), device="cpu").fit(np.ones((4, 3)))
    >>> t.transform(np.ones((5, 3))).shape
    (5, 2)
    """

    _parameter_constraints: dict = {
        "module": [callable],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "device": "no_validation",  # checked in fit, where torch is imported
        "dtype": "no_validation",
        "output": [None, Integral, str],
    }

    def __init__(self, module, *, batch_size=1024, device="auto", dtype=None, output=None):
        self.module = module
        self.batch_size = batch_size
        self.device = device
        self.dtype = dtype
        self.output = output

    # -- fitting -----------------------------------------------------------------

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Validate ``X`` and place a copy of the module on the device."""
        if _dask.is_dask_collection(X):  # metadata and one row only: see _dask.py
            return _dask.fit(self, X, y)
        import torch

        self.device_ = self._resolve_device(torch)
        self.dtype_ = self._resolve_dtype(torch)
        X = self._validate(X, reset=True)
        self.module_ = self._place_module(torch)
        self.n_features_out_ = self._run(torch, X[:1]).shape[1]  # fails early on a broken module
        return self

    def _resolve_device(self, torch):
        if isinstance(self.device, str) and self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            device = torch.device(self.device)
        except (RuntimeError, TypeError, ValueError) as error:
            raise ValueError(f"TorchTransformer: device={self.device!r} is not a torch device; "
                             "use 'auto', 'cpu' or 'cuda:N'") from error
        if device.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if (device.index or 0) >= count:
                raise ValueError(f"TorchTransformer: device={self.device!r} does not exist here "
                                 f"({count} CUDA devices); use device='auto' or 'cpu'")
        return device

    def _resolve_dtype(self, torch):
        if self.dtype is None:
            parameter = _first_parameter(self.module)
            return parameter.dtype if parameter is not None else torch.float32
        dtype = self.dtype
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(dtype, torch.dtype) or not (dtype.is_floating_point or dtype.is_complex):
            raise ValueError(f"TorchTransformer: dtype={self.dtype!r} is not a torch floating "
                             "dtype; use for example torch.float32 or 'float64'")
        return dtype

    def _place_module(self, torch):
        if not isinstance(self.module, torch.nn.Module):
            return self.module  # a plain function: nothing to place
        module = copy.deepcopy(self.module).to(self.device_)
        if self.dtype is not None:
            module = module.to(self.dtype_)
        return module.eval()

    def _validate(self, X, reset):
        """X as a NumPy array of 2 or more dimensions (or a CUDA tensor, checked where it is)."""
        if is_tensor_like(X):
            import torch

            if isinstance(X, torch.Tensor) and X.is_cuda:
                return self._validate_cuda(X, reset)
            X = to_numpy(X)
        # Images and other N-d samples are welcome: the module sees them as they are.
        return validate_data(self, X, reset=reset, dtype="numeric", ensure_min_samples=1,
                             allow_nd=True)

    def _validate_cuda(self, X, reset):
        import torch

        name = type(self).__name__
        if X.ndim < 2:
            raise ValueError(f"{name}: expected X of at least 2 dimensions, got a tensor of "
                             f"shape {tuple(X.shape)}; reshape it to (n_samples, n_features)")
        if X.shape[0] < 1:
            raise ValueError(f"{name}: X has 0 samples; at least 1 is required")
        if reset:
            self.n_features_in_ = X.shape[1]
        elif X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but {name} is expecting "
                             f"{self.n_features_in_} features as input.")
        if X.is_floating_point() and not bool(torch.isfinite(X).all()):
            raise ValueError(f"{name}: X contains NaN or infinity; {name} does not accept "
                             "missing values: impute them first")
        return X

    # -- transforming --------------------------------------------------------------

    def transform(self, X):
        """Run ``module_`` over ``X`` in batches; returns a 2-D NumPy array
        (a lazy dask array for a dask array or Dask DataFrame)."""
        if _dask.is_dask_collection(X):
            return _dask.transform(self, X, self.batch_size)
        import torch

        check_is_fitted(self)
        return self._run(torch, self._validate(X, reset=False))

    def _run(self, torch, X):
        if self.device_.type == "cuda":
            return self._run_pipelined(torch, X)
        module, batch_size = self.module_, self.batch_size

        def outputs():
            with torch.inference_mode():
                for start in range(0, X.shape[0], batch_size):
                    batch = self._to_device(torch, X[start:start + batch_size])
                    try:
                        result = module(batch)
                    except Exception as error:
                        raise RuntimeError(
                            f"TorchTransformer: the module raised {type(error).__name__} on a "
                            f"batch of shape {tuple(batch.shape)} {batch.dtype} on "
                            f"{batch.device}: {error}") from error
                    yield self._flatten(torch, self._select(result), batch.shape[0])

        return collect(outputs())

    def _run_pipelined(self, torch, X):
        """On a GPU: while batch k computes, batch k+1 is uploaded on one side
        stream and batch k-1's output downloaded on another, straight into its
        rows of the result."""
        from .._cuda import to_device
        from .._convert import to_numpy_async

        device, batch_size = self.device_, self.batch_size
        compute = torch.cuda.current_stream(device)
        upload, download = torch.cuda.Stream(device), torch.cuda.Stream(device)

        def send(start):
            batch = X[start:start + batch_size]
            with torch.cuda.stream(upload):
                if isinstance(batch, torch.Tensor):
                    return batch.to(device=device, dtype=self.dtype_, non_blocking=True)
                return to_device(batch, device, dtype=self.dtype_, stream=upload)

        result, transfers = None, []
        incoming = send(0)
        with torch.inference_mode():
            for start in range(0, X.shape[0], batch_size):
                compute.wait_stream(upload)
                batch = incoming
                batch.record_stream(compute)  # allocated on `upload`, used here
                if start + batch_size < X.shape[0]:
                    incoming = send(start + batch_size)
                try:
                    output = self.module_(batch)
                except Exception as error:
                    raise RuntimeError(
                        f"TorchTransformer: the module raised {type(error).__name__} on a "
                        f"batch of shape {tuple(batch.shape)} {batch.dtype} on {device}: "
                        f"{error}") from error
                output = self._flatten(torch, self._select(output), batch.shape[0])
                if result is None:
                    from .._dtypes import numpy_dtype

                    result = np.empty((X.shape[0], output.shape[1]), numpy_dtype(output.dtype))
                download.wait_stream(compute)
                output.record_stream(download)
                rows = result[start:start + output.shape[0]]
                with torch.cuda.stream(download):  # its own current stream: compute never waits
                    transfers.append(to_numpy_async(output, out=rows))
        for transfer in transfers:
            transfer.wait()
        return result

    def _to_device(self, torch, batch):
        if isinstance(batch, np.ndarray):
            if not batch.flags.writeable:  # torch warns on read-only memory
                batch = batch.copy()
            batch = torch.from_numpy(batch)
        return batch.to(device=self.device_, dtype=self.dtype_, non_blocking=True)

    def _select(self, result):
        output, name = self.output, type(self).__name__
        if isinstance(result, dict):
            if output is None or output not in result:
                raise ValueError(f"{name}: the module returned a dict with keys "
                                 f"{sorted(result, key=str)}; pass output=<key> to pick one "
                                 f"(got output={output!r})")
            return result[output]
        if isinstance(result, (tuple, list)):
            if not isinstance(output, Integral) or not -len(result) <= output < len(result):
                raise ValueError(f"{name}: the module returned a {type(result).__name__} of "
                                 f"{len(result)}; pass output=0..{len(result) - 1} to pick one "
                                 f"(got output={output!r})")
            return result[output]
        if output is not None:
            raise ValueError(f"{name}: output={output!r}, but the module returned a single "
                             f"{type(result).__name__}; leave output=None")
        return result

    def _flatten(self, torch, result, rows):
        name = type(self).__name__
        if not isinstance(result, torch.Tensor):
            raise TypeError(f"{name}: the module returned {type(result).__name__}, expected a "
                            "torch.Tensor")
        if result.ndim == 0 or result.shape[0] != rows:
            raise ValueError(f"{name}: the module returned shape {tuple(result.shape)} for a "
                             f"batch of {rows} rows; its first dimension must be the batch")
        result = result.reshape(rows, -1)
        if str(result.dtype).removeprefix("torch.").startswith(_WIDENED_OUTPUTS):
            result = result.float()
        return result

    # -- conventions -------------------------------------------------------------------

    @property
    def _n_features_out(self):
        return self.n_features_out_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        parameter = _first_parameter(self.module)
        dtype = self.dtype if self.dtype is not None else (
            parameter.dtype if parameter is not None else "float32")
        tags.transformer_tags.preserves_dtype = [str(dtype).removeprefix("torch.")]
        return tags

    def __getstate__(self):
        # Modules are stored through torch.save, so that one fitted on a GPU
        # loads (onto the CPU) where no GPU exists.
        state = dict(super().__getstate__())  # may be our own __dict__: never mutate it
        for key in ("module", "module_"):
            if _is_torch_module(state.get(key)):
                buffer = io.BytesIO()
                import torch

                torch.save(state[key], buffer)
                state[key] = _SavedModule(buffer.getvalue())
        return state

    def __setstate__(self, state):
        import torch

        device = state.get("device_")
        if device is not None and device.type == "cuda" and not torch.cuda.is_available():
            state["device_"] = device = torch.device("cpu")
        for key in ("module", "module_"):
            if isinstance(state.get(key), _SavedModule):
                if key == "module_":
                    location = device
                else:  # the user's module: where it was, or the CPU when that is gone
                    location = None if torch.cuda.is_available() else "cpu"
                state[key] = torch.load(io.BytesIO(state[key].data), map_location=location,
                                        weights_only=False)
        super().__setstate__(state)


class _SavedModule:
    """A torch module serialised with torch.save, inside a pickled estimator."""

    def __init__(self, data: bytes):
        self.data = data


def _is_torch_module(value) -> bool:
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.nn.Module)


def _first_parameter(module):
    if not _is_torch_module(module):
        return None
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.is_floating_point():
            return tensor
    return None

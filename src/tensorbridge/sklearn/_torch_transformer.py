"""TorchTransformer: a torch module or function as a scikit-learn transformer.

The estimator only: X is read by ``_input.read`` (one ``Input`` whatever its
kind), the module is placed and pickled by ``_module``. Each batch is staged
on the module's device in memory the caller does not own, run, flattened and
written by one ``collect`` on every device (on a GPU overlapping downloads
with the next batch), or under array API dispatch by ``_output.fill``.
"""

from __future__ import annotations

import copy
import itertools
from numbers import Integral

import numpy as np
from sklearn import get_config
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    _fit_context,
    clone,
)
from sklearn.utils._param_validation import Interval, InvalidParameterError
from sklearn.utils.validation import check_is_fitted

from .. import _torch, collect, to_device, to_numpy
from .._dtypes import is_extended_torch_dtype, numpy_dtype
from . import _dask
from ._input import array_namespace, describe_batch, map_batch, read
from ._module import (
    LayerReached,
    Recreate,
    SavedModule,
    check_layer,
    check_not_meta,
    is_lazy,
    layer_capture,
    loaded_modules,
    placed,
    resolve_device,
    returned_dtype_name,
    same_weights,
    saved_modules,
    tensors_of,
    torch_dtype,
)
from ._output import Progress, array_api_target, fill

# The names pickles of earlier builds refer to (pickle records module and qualname).
_SavedModule, _Recreate = SavedModule, Recreate


class _Count(Interval):
    """An Interval of Integral that refuses bools (True is an Integral, and
    batch_size=True is a mistake, not 1 row)."""

    def is_satisfied_by(self, val):
        return not isinstance(val, (bool, np.bool_)) and super().is_satisfied_by(val)


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
        self.device_ = resolve_device(torch, self.device)
        # Under dispatch, transform then takes X of this namespace and device only, as
        # scikit-learn's own estimators do (a NumPy-fitted one takes any).
        self._fit_namespace = (array_namespace(X) if get_config().get("array_api_dispatch")
                               else None)
        source = read(self, X, reset=True)
        if net:
            self.net_ = self._train(torch, X, source, y, fit_params)
        else:
            self.__dict__.pop("net_", None)
        trained = self._source_module()
        check_not_meta(trained)
        self.dtype_ = self._resolve_dtype(torch, trained)
        check_layer(torch, trained, self.layer)
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
        if not is_lazy(torch, self.module_):
            return
        inputs = map_batch(head.data, lambda value, name: self._upload(torch, value, None))
        with torch.no_grad(), layer_capture(self.module_, self.layer) as capture:
            self._forward(inputs, capture)

    def _resolve_dtype(self, torch, module):
        if self.dtype is None:  # the module's floating dtype, float32 without one
            return next((tensor.dtype for tensor in tensors_of(module)
                         if tensor.is_floating_point()), torch.float32)
        dtype = torch_dtype(torch, self.dtype)
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
        return placed(torch, self._source_module(), self.device_, self._cast(), shared)

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
        return clone(self.module).fit(data, y, **fit_params)  # a NeuralNet's fit returns it

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
        target = array_api_target(self, torch, X)
        source = read(self, X, reset=False)
        return self._run(torch, source, target)

    def _run(self, torch, source, target, quiet=False):
        progress = Progress(source.batch_count(self.batch_size),
                            enabled=self.verbose > 0 and not quiet)
        # On a GPU the rows are known up front: the result is sized by the
        # first output, and collect downloads each output into its rows while
        # the next batch computes.
        rows_known = target is None and self.device_.type == "cuda" \
            and source.n_samples is not None
        generator = self._outputs(torch, source, progress,
                                  source.n_samples if rows_known else None,
                                  for_collect=target is None)
        try:
            if target is not None:
                device, wrap = target
                result = fill(torch, generator, source.n_samples, device)
                return result if wrap is None else wrap(result)
            outputs, out = generator, None
            if rows_known:
                first = next(generator)
                out = np.empty((source.n_samples, first.shape[1]), numpy_dtype(first.dtype))
                outputs = itertools.chain([first], generator)
            return collect(outputs, out=out)
        finally:
            generator.close()  # now, on an error too: it leaves its stream context at once
            progress.close()

    def _outputs(self, torch, source, progress, expected_rows=None, for_collect=False):
        """The flattened output of each batch, computed on device_; with
        `expected_rows`, X must bring exactly that many samples. `for_collect`:
        on a GPU, each output is yielded with a download stream current, where
        collect then copies it."""
        first, done = None, 0  # first: batch 0's (width, dtype), which every batch keeps
        compute = download = None
        if for_collect and self.device_.type == "cuda":
            compute = torch.cuda.current_stream(self.device_)
            download = torch.cuda.Stream(self.device_)
        with torch.inference_mode(), layer_capture(self.module_, self.layer) as capture:
            for index, (inputs, rows) in enumerate(self._staged(torch, source)):
                done += rows
                if expected_rows is not None and done > expected_rows:
                    raise ValueError(f"{_NAME}: X brought more than the {expected_rows} samples "
                                     "its length announced")
                output = self._flatten(torch, self._select(self._forward(inputs, capture)), rows)
                if first is None:
                    first = (output.shape[1], output.dtype)
                elif (output.shape[1], output.dtype) != first:
                    raise ValueError(f"{_NAME}: the module returned {output.shape[1]} features "
                                     f"of {output.dtype} for batch {index}, but {first[0]} "
                                     f"features of {first[1]} for batch 0; it must return one "
                                     "width and dtype for every batch")
                if download is None:
                    yield output
                else:
                    # collect copies a batch on the stream current when it reads it:
                    # this one, so the download overlaps the next batch's kernels.
                    download.wait_stream(compute)
                    output.record_stream(download)  # used there, freed here
                    with torch.cuda.stream(download):
                        yield output
                progress.step(rows)
        if expected_rows is not None and done != expected_rows:
            raise ValueError(f"{_NAME}: X brought {done} samples, but its length said "
                             f"{expected_rows}")

    def _staged(self, torch, source):
        """(inputs on device_, rows) for each batch of X. On a GPU the next
        batch is uploaded on a side stream while this one computes."""
        batches = source.batches(self.batch_size)
        if self.device_.type != "cuda":
            staging = {}
            for batch, rows, owned in batches:
                yield map_batch(batch, lambda value, name, owned=owned: self._stage(
                    torch, value, owned, staging, name)), rows
            return
        compute = torch.cuda.current_stream(self.device_)
        upload = torch.cuda.Stream(self.device_)
        upload.wait_stream(compute)  # X may still be being written on the current stream

        def send():
            item = next(batches, None)
            if item is None:
                return None
            batch, rows, _ = item
            with torch.cuda.stream(upload):
                return map_batch(batch, lambda value, _: self._upload(torch, value, upload)), rows

        incoming = send()
        while incoming is not None:
            compute.wait_stream(upload)
            inputs, rows = incoming
            for tensor in inputs.values() if isinstance(inputs, dict) else (inputs,):
                tensor.record_stream(compute)  # allocated on `upload`, used here
            incoming = send()
            yield inputs, rows

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
        except LayerReached:
            pass
        except Exception as error:
            raise RuntimeError(f"{_NAME}: the module raised {type(error).__name__} on a batch "
                               f"of {describe_batch(inputs)}: {error}") from error
        if capture is not None:
            if not capture:
                raise RuntimeError(f"{_NAME}: layer={self.layer!r} never ran in the module's "
                                   "forward pass; name a submodule that forward calls")
            result = capture[0]  # its first call, where the hook stopped the pass
            capture.clear()
        return result

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
        if is_extended_torch_dtype(result.dtype):
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
        import torch

        try:
            return returned_dtype_name(self._resolve_dtype(torch, self.module))
        except ValueError:  # not a dtype: fit names it; tags must not raise
            return str(self.dtype).removeprefix("torch.")

    def __getstate__(self):
        # module_ is left out when it can be made again from what the pickle holds.
        state = dict(super().__getstate__())  # may be our own __dict__: never mutate it
        if self._recreatable():
            state["module_"] = Recreate()
        return saved_modules(state)

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
        return isinstance(source, torch.nn.Module) and same_weights(torch, source, placed,
                                                                     self._cast())

    def __setstate__(self, state):
        import torch

        state.setdefault("verbose", 0)  # parameters added since older pickles were written
        state.setdefault("layer", None)
        super().__setstate__(loaded_modules(torch, state))
        if isinstance(state.get("module_"), Recreate):
            self.module_ = self._place(torch)

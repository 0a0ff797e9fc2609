"""AugmentedEstimator: fit on the data plus randomly augmented copies of it.

The rows reach the wrapped estimator through one preallocated array: the
original samples are copied into its head, and the augmented views are
written behind them by ``collect``, batch by batch, with no list of views and
no ``np.concatenate``.

``augment`` never sees the caller's ``X``. A batched augment gets batches of
that head (per sample: a copy of each chunk): copying every batch for it cost
more than 5% of a fit whose augment is cheap, and most augments write
nothing. One that works in place is caught instead: torch bumps the version
counter a tensor shares with its views at every in-place operation, and the
batch is then restored from ``X`` before the next one is made; a write that
torch does not see (through ``.numpy()`` or ``.data``) shows at the end, when
the head no longer equals ``X``, and the views are made again, the same ones,
from a copy of each batch.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import threading
from numbers import Integral

import numpy as np
from sklearn import get_config
from sklearn.base import BaseEstimator, MetaEstimatorMixin, _fit_context, clone
from sklearn.utils import Bunch, check_random_state, get_tags
from sklearn.utils._param_validation import Interval, InvalidParameterError
from sklearn.utils.metadata_routing import MetadataRouter, MethodMapping, process_routing
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import (
    _num_samples,
    check_consistent_length,
    check_is_fitted,
    validate_data,
)

from .. import _torch, collect
from ._input import on_host, sample_shape, validatable

_SEED_BOUND = 2**63 - 1
_STACKED_SAMPLES = 256  # per-sample results stacked into one batch for collect
# Generator-less augments draw from torch's one global CPU generator, reseeded
# per sample: fits in two threads would interleave their seeds.
_GLOBAL_GENERATOR_LOCK = threading.Lock()
_PREDICT_METHODS = ("predict", "predict_proba", "predict_log_proba", "decision_function",
                    "transform", "score")


def _estimator_has(method):
    return lambda self: hasattr(getattr(self, "estimator_", self.estimator), method)


class AugmentedEstimator(MetaEstimatorMixin, BaseEstimator):
    """Train ``estimator`` on the original samples plus ``n_views`` randomly
    augmented copies of them: ``(1 + n_views) * n_samples`` rows, with ``y``
    and every per-sample fit parameter (``sample_weight``...) repeated.

    Samples of any rank (images of shape (C, H, W), say) are augmented in
    their own shape, then reach the estimator as 2-D rows, flattened per
    sample, at fit and at predict alike (``flatten=False``: as they are).
    It takes its estimator's tags (classifier or regressor, multi-output
    targets, ...), so scikit-learn treats it as it treats the estimator.

    Parameters
    ----------
    estimator : estimator
        Fitted (as a clone, ``estimator_``) on the augmented rows.
    augment : callable
        One of:

        - ``augment(sample, generator) -> sample`` (``batch_size=None``): one
          sample, a torch tensor without the batch dimension, and a
          ``torch.Generator`` seeded for that sample and view. A callable
          takes a generator when it has a parameter named ``generator``
          (passed by keyword; keyword-only is fine) or a second positional
          parameter without a default, whatever its name (passed
          positionally).
        - ``augment(batch, generator) -> batch`` (``batch_size`` an int): up to
          ``batch_size`` samples at once, a tensor of shape
          ``(n, *sample_shape)``, and a generator seeded for that batch and view;
          it draws each sample's randomness itself, e.g. a mask from
          ``torch.rand(len(batch), generator=generator)``.
        - ``augment(sample) -> sample``, with one positional parameter (a
          torchvision transform): always called per sample, with torch's
          global CPU generator seeded for that sample inside
          ``torch.random.fork_rng``, so that the global state is the same
          afterwards. Fits in several threads take turns there (a lock), so
          that each sees the views of its own ``random_state``.

        Samples are CPU tensors (a tensor ``X`` on a GPU is copied to the
        host first; bfloat16 and float8 ``X`` are taken as float32, which
        holds their values exactly); the result may be a tensor on any device
        or an array, and must keep the shape (it is cast to the input's
        dtype). ``augment`` gets a copy of the samples: it may work in place
        (``sample.mul_(2)``) without changing the original rows or ``X``.
    n_views : int, default=1
        Augmented copies of each sample at fit.
    batch_size : int, default=None
        Samples per ``augment`` call for a callable with a ``generator``
        parameter; None calls it once per sample. The augmented data depend
        on ``random_state`` and on ``batch_size``: a generator is seeded per
        batch, so another batch size draws other views.
    flatten : bool, default=True
        Hand samples of more than one dimension to the estimator as 2-D rows
        of ``prod(sample_shape)`` features; False hands them over in their
        shape, for an estimator that takes them (a pipeline starting with
        ``TorchTransformer``). 2-D input is the same either way.
    test_views : int, default=0
        Test-time augmentation: ``predict_proba``, ``predict_log_proba`` and
        ``decision_function`` average the estimator's outputs over each
        sample and ``test_views`` augmented views of it, and ``predict``
        follows the average (for a classifier: the class of the averaged
        probabilities, else of the averaged decision function, else the most
        frequent prediction; for a regressor: the mean prediction); ``score``
        is then accuracy or R^2 of that ``predict``. The views are seeded at
        fit from ``random_state``, so two calls on the same ``X`` agree; a
        sample's views depend on its position in ``X`` (batched: on its
        batch), so a subset or a reordering of ``X`` gets other views.
        0: the data as given. ``transform`` always uses the data as given.
    random_state : int, RandomState or None
        Seeds every generator: two fits with the same seed (and batch size)
        see the same augmented data. Torch's global generator is never
        advanced.

    Attributes
    ----------
    estimator_ : estimator
        The fitted clone of ``estimator``.
    n_samples_seen_ : int
        Rows ``estimator_`` was fitted on: ``(1 + n_views) * n_samples``.
    sample_shape_in_ : tuple
        The shape of one sample seen at fit; with ``flatten``, predicting
        requires the same.
    classes_ : ndarray
        ``estimator_.classes_``, for a classifier.
    n_features_in_ : int
        ``X.shape[1]``, as scikit-learn counts features (1 for images of
        shape (n, 1, 8, 8)).
    feature_names_in_ : ndarray of str
        The column names of a DataFrame ``X``; predicting on columns in
        another order raises, as in scikit-learn.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sklearn.linear_model import LogisticRegression
    >>> from tensorbridge.sklearn import AugmentedEstimator
    >>> def flip(batch, generator):  # each sample negated with probability 1/2
    ...     negate = torch.rand(len(batch), generator=generator) < 0.5
    ...     return torch.where(negate.view(-1, *[1] * (batch.ndim - 1)), -batch, batch)
    >>> X, y = np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 2
    >>> model = AugmentedEstimator(LogisticRegression(), augment=flip, n_views=2,
    ...                            batch_size=8, random_state=0).fit(X, y)
    >>> model.n_samples_seen_
    60
    >>> images = np.random.default_rng(0).normal(size=(20, 1, 4, 4))
    >>> model.fit(images, y).estimator_.n_features_in_  # 16 pixels per row
    16
    """

    _parameter_constraints: dict = {
        "estimator": "no_validation",
        "augment": [callable],
        "n_views": [Interval(Integral, 0, None, closed="left")],
        "batch_size": [None, Interval(Integral, 1, None, closed="left")],
        "flatten": ["boolean"],
        "test_views": [Interval(Integral, 0, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(self, estimator, *, augment, n_views=1, batch_size=None, flatten=True,
                 test_views=0, random_state=None):
        self.estimator = estimator
        self.augment = augment
        self.n_views = n_views
        self.batch_size = batch_size
        self.flatten = flatten
        self.test_views = test_views
        self.random_state = random_state

    # -- fitting -----------------------------------------------------------------------

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None, **fit_params):
        """Fit a clone of ``estimator`` on ``X`` and ``n_views`` augmented views of it.

        Parameters
        ----------
        X : array-like, tensor or DataFrame of shape (n_samples, ...)
        y : array-like of shape (n_samples,) or (n_samples, n_outputs), default=None
        **fit_params : dict
            Passed to ``estimator.fit`` (with metadata routing enabled: those
            the estimator requests); each one with ``n_samples`` entries
            (``sample_weight``...) repeated with the rows.

        Returns
        -------
        self : AugmentedEstimator
        """
        if get_config()["enable_metadata_routing"]:
            fit_params = process_routing(self, "fit", **fit_params).estimator.fit
        _check_counts(self)
        X = self._validate(X, reset=True)
        n = X.shape[0]
        if y is not None:
            y = _as_array(y)
            check_consistent_length(X, y)
        rng = check_random_state(self.random_state)
        rows = self._with_views(X, self.n_views, rng)
        # Drawn after the training views', which stay those of a fit without it.
        self._test_seed = int(rng.randint(0, _SEED_BOUND, dtype=np.int64))
        repeat = np.tile(np.arange(n), 1 + self.n_views)
        fit_params = {key: _repeated(value, n, repeat) for key, value in fit_params.items()}
        self.estimator_ = clone(self.estimator).fit(
            rows, None if y is None else y[repeat], **fit_params)
        self.n_samples_seen_ = rows.shape[0]
        if hasattr(self.estimator_, "classes_"):
            self.classes_ = self.estimator_.classes_
        return self

    def _validate(self, X, reset):
        X = validatable(on_host(X))
        allow_nan = get_tags(self.estimator).input_tags.allow_nan
        X = validate_data(self, X, reset=reset, dtype="numeric", allow_nd=True,
                          ensure_min_samples=1, ensure_all_finite=not allow_nan)
        if reset or self.flatten:
            # Flattened, (n, 4, 16) and (n, 8, 8) would both pass as 64 features.
            sample_shape(self, X.shape[1:], reset)
        return X

    def _with_views(self, X, n_views, rng):
        """``X`` followed by ``n_views`` augmented views of it, in one array
        ((1 + n_views) * n rows; flattened per sample with ``flatten``)."""
        import torch

        n = X.shape[0]
        rows = np.empty(((1 + n_views) * n, *X.shape[1:]), X.dtype)
        rows[:n] = X
        if n_views:
            try:
                samples = torch.from_numpy(rows[:n])
            except TypeError as error:  # longdouble, for one
                raise TypeError(f"AugmentedEstimator: X has dtype {X.dtype}, which torch "
                                "cannot hold; convert X to float64 or float32") from error

            def restore(start, stop):
                rows[start:stop] = X[start:stop]

            state = rng.get_state()
            # Inference tensors (made under torch.inference_mode) count no versions.
            copies = torch.is_inference_mode_enabled()
            self._collect_views(torch, samples, n_views, rng, rows[n:], restore, copies)
            if not copies and not _same_bytes(rows[:n], X):  # a write torch did not see
                rows[:n] = X
                rng.set_state(state)
                self._collect_views(torch, samples, n_views, rng, rows[n:], restore, copies=True)
        return rows.reshape(len(rows), -1) if self.flatten else rows

    def _collect_views(self, torch, samples, n_views, rng, out, restore, copies):
        views = self._views(torch, samples, n_views, rng, restore, copies)
        try:
            collect(views, out=out)
        finally:
            views.close()  # restores torch's global state at once, even on an error

    def _views(self, torch, samples, n_views, rng, restore, copies):
        """The augmented batches of ``n_views`` views of ``samples``, in order.
        A batched augment gets the batches of ``samples`` themselves (a copy
        of each with ``copies``); after one that it changed in place (which
        ``collect`` has written by then), ``restore(start, stop)`` puts the
        samples back."""
        augment, batch_size = self.augment, self.batch_size
        passing = _generator_passing(augment)  # how it takes its generator
        call = augment if passing != "keyword" else (
            lambda samples, generator: augment(samples, generator=generator))
        if batch_size is not None and passing:
            starts = range(0, len(samples), batch_size)
            seeds = rng.randint(0, _SEED_BOUND, size=(n_views, len(starts)), dtype=np.int64)
            generator = torch.Generator()
            copied = _Copies(samples, batch_size) if copies else None
            for view_seeds in seeds:
                for start, seed in zip(starts, view_seeds.tolist()):
                    batch = copied.of(start) if copied else samples[start:start + batch_size]
                    # shared with its views, bumped by every in-place operation
                    version = None if copies else samples._version
                    generator.manual_seed(seed)
                    yield _checked(torch, call(batch, generator), batch, "batch")
                    if version is not None and samples._version != version:
                        restore(start, start + len(batch))
            return
        seeds = rng.randint(0, _SEED_BOUND, size=(n_views, len(samples)), dtype=np.int64)
        stacked = batch_size or _STACKED_SAMPLES
        if passing:
            generator = torch.Generator()

            def one(sample, seed):
                generator.manual_seed(seed)
                return call(sample, generator)
        else:
            def one(sample, seed):
                # Only the CPU generator: the samples live on the CPU, and
                # torch.manual_seed would also reseed CUDA's, which fork_rng
                # (devices=[]) does not restore.
                torch.default_generator.manual_seed(seed)
                return augment(sample)

        # One fork for the whole loop: the global state is saved once and
        # restored when this generator ends or is closed (which also releases
        # the lock that keeps other fits' seeds out of the global generator).
        copies = _Copies(samples, stacked)
        with (_GLOBAL_GENERATOR_LOCK if not passing else _NO_LOCK), \
                torch.random.fork_rng(devices=[]):
            for view_seeds in seeds:
                view_seeds = view_seeds.tolist()
                for start in range(0, len(samples), stacked):
                    chunk = copies.of(start)
                    yield torch.stack([
                        _checked(torch, one(sample, seed), sample, "sample")
                        for sample, seed in zip(chunk, view_seeds[start:start + stacked])])

    # -- predicting --------------------------------------------------------------------

    def _rows(self, X, views):
        """The rows the estimator predicts on: ``X`` as given, followed by
        ``views`` test-time views of it."""
        check_is_fitted(self)
        _check_counts(self)
        X = self._validate(X, reset=False)
        if views:
            return self._with_views(X, views, np.random.RandomState(
                np.random.MT19937(self._test_seed)))
        return X.reshape(len(X), -1) if self.flatten else X

    def _routed(self, method, params):
        if get_config()["enable_metadata_routing"]:
            return process_routing(self, method, **params).estimator
        # Without routing, the parameters go to the estimator's method as given.
        return Bunch(**{name: params for name in _PREDICT_METHODS})

    def _averaged(self, method, X, params, caller=None):
        """``estimator_.<method>`` over the rows of ``X``, averaged over the
        original and the test-time views of each sample; ``params`` are those
        of ``caller`` (by default ``method``), routed."""
        params = self._routed(caller or method, params)[method]
        rows = self._rows(X, self.test_views)
        result = getattr(self.estimator_, method)(rows, **params)
        if not self.test_views:
            return result
        views = 1 + self.test_views
        if isinstance(result, list):  # multi-output classifiers: one array per output
            return [_mean_over_views(part, views) for part in result]
        return _mean_over_views(result, views)

    @available_if(_estimator_has("predict"))
    def predict(self, X, **params):
        """``estimator_.predict`` on ``X``; with ``test_views``, the prediction
        of the outputs averaged over the views (see ``test_views``)."""
        check_is_fitted(self)
        if not self.test_views:
            routed = self._routed("predict", params).predict
            return self.estimator_.predict(self._rows(X, 0), **routed)
        tags = get_tags(self.estimator_)
        if tags.estimator_type == "regressor":
            return self._averaged("predict", X, params)
        if tags.estimator_type != "classifier":
            raise ValueError(f"{type(self).__name__}: test_views={self.test_views} averages "
                             "predictions of a classifier or a regressor, but "
                             f"{type(self.estimator_).__name__} is neither; use test_views=0")
        classes = self.classes_
        if hasattr(self.estimator_, "predict_proba"):
            scores = self._averaged("predict_proba", X, params, "predict")
            if isinstance(scores, list):
                return np.stack([c[np.argmax(s, axis=1)] for c, s in zip(classes, scores)],
                                axis=1)
            return classes[np.argmax(scores, axis=1)]
        if hasattr(self.estimator_, "decision_function"):
            scores = self._averaged("decision_function", X, params, "predict")
            if scores.ndim == 1:
                return classes[(scores > 0).astype(int)]
            return classes[np.argmax(scores, axis=1)]
        votes = self.estimator_.predict(self._rows(X, self.test_views),
                                        **self._routed("predict", params).predict)
        return _most_frequent(votes, 1 + self.test_views)

    @available_if(_estimator_has("predict_proba"))
    def predict_proba(self, X, **params):
        """``estimator_.predict_proba`` on ``X``, averaged over ``test_views``."""
        return self._averaged("predict_proba", X, params)

    @available_if(_estimator_has("predict_log_proba"))
    def predict_log_proba(self, X, **params):
        """The log of ``predict_proba`` (with ``test_views``: of the average)."""
        check_is_fitted(self)
        if not self.test_views:
            return self.estimator_.predict_log_proba(
                self._rows(X, 0), **self._routed("predict_log_proba", params).predict_log_proba)
        proba = self._averaged("predict_proba", X, params, "predict_log_proba")
        with np.errstate(divide="ignore"):  # a class no view gives any probability: -inf
            return [np.log(p) for p in proba] if isinstance(proba, list) else np.log(proba)

    @available_if(_estimator_has("decision_function"))
    def decision_function(self, X, **params):
        """``estimator_.decision_function`` on ``X``, averaged over ``test_views``."""
        return self._averaged("decision_function", X, params)

    @available_if(_estimator_has("transform"))
    def transform(self, X, **params):
        """``estimator_.transform`` on ``X`` as given (flattened per sample)."""
        check_is_fitted(self)
        return self.estimator_.transform(self._rows(X, 0),
                                         **self._routed("transform", params).transform)

    @available_if(_estimator_has("transform"))
    def fit_transform(self, X, y=None, **fit_params):
        """``fit(X, y, **fit_params).transform(X)``: the estimator fitted on the
        augmented rows, applied to ``X`` as given."""
        return self.fit(X, y, **fit_params).transform(X)

    @available_if(_estimator_has("score"))
    def score(self, X, y=None, **params):
        """``estimator_.score`` on ``X``; with ``test_views``, the accuracy
        (classifier) or R^2 (regressor) of ``predict``, weighted by a
        ``sample_weight`` in ``params``."""
        check_is_fitted(self)
        params = self._routed("score", params).score
        y = None if y is None else _as_array(y)
        if self.test_views:
            estimator_type = get_tags(self.estimator_).estimator_type
            if estimator_type in ("classifier", "regressor"):
                from sklearn.metrics import accuracy_score, r2_score

                metric = accuracy_score if estimator_type == "classifier" else r2_score
                return float(metric(y, self.predict(X),
                                    sample_weight=params.get("sample_weight")))
        return self.estimator_.score(self._rows(X, 0), y, **params)

    # -- conventions -------------------------------------------------------------------

    def get_metadata_routing(self):
        """The metadata routing of this meta-estimator: each method's
        parameters go to the estimator's method of that name (``predict``'s
        also to ``predict_proba`` and ``decision_function``, and
        ``predict_log_proba``'s to ``predict_proba``: the methods that
        test-time augmentation averages).

        Returns
        -------
        routing : sklearn.utils.metadata_routing.MetadataRouter
        """
        mapping = MethodMapping().add(caller="fit", callee="fit")
        for method in _PREDICT_METHODS:
            mapping.add(caller=method, callee=method)
        mapping.add(caller="predict", callee="predict_proba")
        mapping.add(caller="predict", callee="decision_function")
        mapping.add(caller="predict_log_proba", callee="predict_proba")
        return MetadataRouter(owner=type(self).__name__).add(estimator=self.estimator,
                                                              method_mapping=mapping)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        inner = get_tags(self.estimator)
        # The estimator gets y (repeated with the rows) and gives the results, so
        # what it says of targets (multi_output...), scores and outputs holds here.
        tags.estimator_type = inner.estimator_type
        tags.target_tags = copy.deepcopy(inner.target_tags)
        tags.classifier_tags = copy.deepcopy(inner.classifier_tags)
        tags.regressor_tags = copy.deepcopy(inner.regressor_tags)
        tags.transformer_tags = copy.deepcopy(inner.transformer_tags)
        tags.non_deterministic = inner.non_deterministic
        tags.input_tags.allow_nan = inner.input_tags.allow_nan
        tags.input_tags.positive_only = inner.input_tags.positive_only
        tags.input_tags.three_d_array = True  # samples of any rank
        return tags


_NO_LOCK = contextlib.nullcontext()
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


class _Copies:
    """Copies of ``size`` samples from ``start``, for ``augment`` to work on (in
    place, if it likes): one buffer, refilled per batch, so no batch pays for a
    new allocation. Safe because ``collect`` writes each batch before it asks
    for the next, and ``torch.stack`` copies the per-sample results."""

    def __init__(self, samples, size):
        self.samples, self.size = samples, size
        self.buffer = samples[:size].clone()

    def of(self, start):
        source = self.samples[start:start + self.size]
        copy = self.buffer[:len(source)]
        copy.copy_(source)
        return copy


def _generator_passing(augment):
    """How ``augment`` takes its generator: "keyword" (a parameter named
    ``generator``), "positional" (a second positional parameter without a
    default, named otherwise), or None (one positional parameter, ``*args``:
    generator-less)."""
    if _torch.is_module(augment):
        augment = augment.forward  # a module's __call__ takes (*args, **kwargs)
    try:
        parameters = inspect.signature(augment).parameters
    except (TypeError, ValueError):  # no signature to read (some builtins)
        return None
    named = parameters.get("generator")
    if named is not None and named.kind not in (named.VAR_POSITIONAL, named.VAR_KEYWORD):
        return "positional" if named.kind is named.POSITIONAL_ONLY else "keyword"
    positional = [p for p in parameters.values() if p.kind in _POSITIONAL]
    if len(positional) >= 2 and positional[1].default is inspect.Parameter.empty:
        return "positional"
    return None


def _check_counts(estimator):
    """bool is an Integral, so the Interval constraints let True through."""
    for name in ("n_views", "test_views"):
        value = getattr(estimator, name)
        if isinstance(value, (bool, np.bool_)):
            raise InvalidParameterError(
                f"The {name!r} parameter of {type(estimator).__name__} must be an int in the "
                f"range [0, inf), not a bool; got {value!r}. Pass {int(value)} for "
                f"{name}={value!r}.")


def _checked(torch, result, given, what):
    """``augment``'s result as a tensor of ``given``'s shape and dtype."""
    if not isinstance(result, torch.Tensor):
        try:
            result = torch.as_tensor(result)
        except (TypeError, RuntimeError, ValueError) as error:
            raise TypeError(f"AugmentedEstimator: augment returned {type(result).__name__}, "
                            f"expected a torch tensor of shape {tuple(given.shape)}") from error
    if result.shape != given.shape:
        raise ValueError(f"AugmentedEstimator: augment changed a {what}'s shape from "
                         f"{tuple(given.shape)} to {tuple(result.shape)}; it must keep it")
    return result if result.dtype == given.dtype else result.to(given.dtype)


def _same_bytes(head, X) -> bool:
    """Whether the rows' head still holds ``X`` bit for bit (NaN and -0.0 included)."""
    X = np.ascontiguousarray(X)
    word = next(w for w in (np.uint64, np.uint32, np.uint16, np.uint8)
                if X.nbytes % np.dtype(w).itemsize == 0)  # the widest compares fastest
    return np.array_equal(head.reshape(-1).view(np.uint8).view(word),
                          X.reshape(-1).view(np.uint8).view(word))


def _repeated(value, n, repeat):
    """A fit parameter with one entry per sample, repeated as the rows are;
    any other value as it is."""
    if value is None or isinstance(value, (str, bytes, dict)) or np.isscalar(value):
        return value
    try:
        if _num_samples(value) != n:
            return value
    except TypeError:  # not array-like
        return value
    if hasattr(value, "iloc"):  # pandas: keep the type (and the index, renumbered)
        return value.iloc[repeat].reset_index(drop=True)
    if hasattr(value, "tocsr"):  # scipy sparse
        return value.tocsr()[repeat]
    return _as_array(value)[repeat]


def _as_array(value):
    return np.asarray(on_host(value))


def _mean_over_views(result, views):
    result = np.asarray(result)
    return result.reshape(views, len(result) // views, *result.shape[1:]).mean(axis=0)


def _most_frequent(predictions, views):
    """Per sample, the prediction most of its views agree on (on a tie, the
    smallest such label)."""
    predictions = np.asarray(predictions)
    per_view = predictions.reshape(views, len(predictions) // views, *predictions.shape[1:])
    labels, codes = np.unique(per_view, return_inverse=True)
    codes = codes.reshape(per_view.shape)
    counts = np.stack([(codes == code).sum(axis=0) for code in range(len(labels))])
    return labels[np.argmax(counts, axis=0)]

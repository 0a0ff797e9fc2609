"""AugmentedEstimator: fit on the data plus randomly augmented copies of it."""

from __future__ import annotations

import inspect
import sys

import numpy as np
from sklearn.base import BaseEstimator, MetaEstimatorMixin, clone
from sklearn.base import _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted
from numbers import Integral

from .._core import to_numpy  # the native fast path, as tensorbridge.to_numpy


def _estimator_has(method):
    def check(self):
        source = getattr(self, "estimator_", self.estimator)
        return hasattr(source, method)

    return check


class AugmentedEstimator(MetaEstimatorMixin, BaseEstimator):
    """Train ``estimator`` on the original rows plus ``n_views`` augmented
    copies of them: ``(1 + n_views) * n_samples`` rows, ``y`` repeated.

    Parameters
    ----------
    estimator : estimator
        Fitted (as a clone, ``estimator_``) on the augmented data; predicts,
        scores and transforms the data as given.
    augment : callable
        ``augment(sample, generator) -> sample``: one sample (a torch tensor
        without the batch dimension) and a ``torch.Generator`` to draw its
        randomness from. A callable without a ``generator`` parameter (a
        torchvision transform) is run with torch's global generator seeded
        for that sample inside ``torch.random.fork_rng``, so the global state
        is the same afterwards.
    n_views : int, default=1
        Augmented copies of each sample.
    random_state : int, RandomState or None
        Seeds one generator per sample and view: two fits with the same seed
        see the same augmented data.

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sklearn.linear_model import LogisticRegression
    >>> from tensorbridge.sklearn import AugmentedEstimator
    >>> flip = lambda x, generator: -x if torch.rand((), generator=generator) < 0.5 else x
    >>> X, y = np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 2
    >>> model = AugmentedEstimator(LogisticRegression(), augment=flip, n_views=2,
    ...                            random_state=0).fit(X, y)
    >>> model.n_samples_seen_
    60
    """

    _parameter_constraints: dict = {
        "estimator": "no_validation",
        "augment": [callable],
        "n_views": [Interval(Integral, 0, None, closed="left")],
        "random_state": ["random_state"],
    }

    def __init__(self, estimator, *, augment, n_views=1, random_state=None):
        self.estimator = estimator
        self.augment = augment
        self.n_views = n_views
        self.random_state = random_state

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None, **fit_params):
        """Fit a clone of ``estimator`` on ``X`` and its augmented views."""
        import torch

        rng = check_random_state(self.random_state)
        samples = torch.as_tensor(_as_array(X))
        views = [samples]
        seeds = rng.randint(0, 2**63 - 1, size=(self.n_views, len(samples)), dtype=np.int64)
        for view in range(self.n_views):
            views.append(torch.stack([self._augment_one(torch, sample, int(seed))
                                      for sample, seed in zip(samples, seeds[view])]))
        X_all = to_numpy(torch.cat(views))
        y_all = None if y is None else np.concatenate([_as_array(y)] * (1 + self.n_views))
        self.estimator_ = clone(self.estimator).fit(X_all, y_all, **fit_params)
        self.n_samples_seen_ = len(X_all)
        if hasattr(self.estimator_, "classes_"):
            self.classes_ = self.estimator_.classes_
        return self

    def _augment_one(self, torch, sample, seed):
        if _takes_generator(self.augment):
            generator = torch.Generator().manual_seed(seed)
            result = self.augment(sample, generator=generator)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                result = self.augment(sample)
        result = torch.as_tensor(result)
        if result.shape != sample.shape:
            raise ValueError(f"AugmentedEstimator: augment changed a sample's shape from "
                             f"{tuple(sample.shape)} to {tuple(result.shape)}; it must keep it")
        return result.to(sample.dtype)

    @available_if(_estimator_has("predict"))
    def predict(self, X):
        check_is_fitted(self)
        return self.estimator_.predict(_as_array(X))

    @available_if(_estimator_has("predict_proba"))
    def predict_proba(self, X):
        check_is_fitted(self)
        return self.estimator_.predict_proba(_as_array(X))

    @available_if(_estimator_has("decision_function"))
    def decision_function(self, X):
        check_is_fitted(self)
        return self.estimator_.decision_function(_as_array(X))

    @available_if(_estimator_has("transform"))
    def transform(self, X):
        check_is_fitted(self)
        return self.estimator_.transform(_as_array(X))

    @available_if(_estimator_has("score"))
    def score(self, X, y=None, **kwargs):
        check_is_fitted(self)
        return self.estimator_.score(_as_array(X), None if y is None else _as_array(y), **kwargs)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        inner = self.estimator.__sklearn_tags__()
        tags.estimator_type = inner.estimator_type
        tags.classifier_tags = inner.classifier_tags
        tags.regressor_tags = inner.regressor_tags
        tags.target_tags.required = inner.target_tags.required
        return tags


def _takes_generator(augment) -> bool:
    try:
        return "generator" in inspect.signature(augment).parameters
    except (TypeError, ValueError):
        return False


def _as_array(X):
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(X, torch.Tensor):
        return to_numpy(X)
    if hasattr(X, "to_numpy") and hasattr(X, "columns"):
        return X.to_numpy()
    return np.asarray(X)

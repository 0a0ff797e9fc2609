"""ToNumpy: a pipeline step that turns tensors in X into NumPy arrays."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from .. import _torch, to_numpy
from . import _dask


class ToNumpy(TransformerMixin, BaseEstimator):
    """Convert ``X`` (torch tensors on any device, CuPy, any DLPack producer,
    array-likes) to a NumPy array, zero-copy for CPU memory.

    A stateless first step for pipelines fed tensors. ``y`` never reaches
    pipeline steps: a CPU tensor ``y`` works as it is (scikit-learn converts
    it through NumPy); convert any other with ``tensorbridge.to_numpy(y)``.

    Examples
    --------
    >>> import torch
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> from tensorbridge.sklearn import ToNumpy
    >>> make_pipeline(ToNumpy(), StandardScaler()).fit_transform(torch.ones(3, 2)).shape
    (3, 2)
    """

    def fit(self, X, y=None):
        """Record ``n_features_in_`` (and ``feature_names_in_``)."""
        if _dask.is_dask_collection(X):  # metadata and one row only: see _dask.py
            return _dask.fit(self, X, y)
        self._validate(X, reset=True)
        return self

    def transform(self, X):
        """``X`` as a NumPy array: a view of CPU tensors and arrays wherever
        possible, whatever their dtype (bfloat16 and float8 included); a lazy
        dask array of them, block by block, for a dask array or Dask DataFrame."""
        if _dask.is_dask_collection(X):
            return _dask.transform(self, X)
        if "n_features_in_" not in self.__dict__:
            check_is_fitted(self)  # raises NotFittedError, worded as scikit-learn does
        if is_tensor_like(X):
            X = to_numpy(X)
        if (type(X) is np.ndarray and X.ndim == 2 and X.dtype.kind in "biuf" and len(X) > 0
                and X.shape[1] == self.n_features_in_ > 0
                and "feature_names_in_" not in self.__dict__):
            # What validate_data concludes for a plain 2-D numeric array of the
            # fitted width (fitted without column names), without its ~50 us.
            return X
        return self._validate(X, reset=False)

    def _validate(self, X, reset):
        if is_tensor_like(X):
            X = to_numpy(X)
        # Keep any numeric dtype as it is (no copy); only text and objects
        # go through scikit-learn's numeric conversion, which refuses strings.
        keep = isinstance(X, np.ndarray) and X.dtype.kind not in "OUS"
        return validate_data(self, X, reset=reset, dtype=None if keep else "numeric",
                             ensure_all_finite=False, allow_nd=False)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


def is_tensor_like(X) -> bool:
    """A torch tensor, or any DLPack producer that is not a NumPy array."""
    if _torch.is_tensor(X):
        return True
    return hasattr(type(X), "__dlpack__") and type(X).__module__.split(".")[0] != "numpy"

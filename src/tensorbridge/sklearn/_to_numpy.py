"""ToNumpy: a pipeline step that turns tensors in X into NumPy arrays."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator, OneToOneFeatureMixin, TransformerMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from .. import to_numpy
from . import _dask
from ._input import fitted_sample_shape, is_tensor_like, sample_shape, validatable
from ._output import wrap_in_container

# set_output puts 2-D results in a DataFrame, and leaves n-D ones (images, for a
# next step that takes them) as they are: transform wraps its own results, when
# scikit-learn's wrapper can be called (else it wraps every result itself).
_OWN_WRAPPING = wrap_in_container is not None
_AUTO_WRAP = None if _OWN_WRAPPING else ("transform",)


class _Step(OneToOneFeatureMixin, TransformerMixin, BaseEstimator,
            auto_wrap_output_keys=_AUTO_WRAP):
    """What ToNumpy and ToDevice share: features one to one, images passed
    through, and 2-D results wrapped by set_output."""

    def __init_subclass__(cls, auto_wrap_output_keys=_AUTO_WRAP, **kwargs):
        super().__init_subclass__(auto_wrap_output_keys=auto_wrap_output_keys, **kwargs)
        if _OWN_WRAPPING:  # set_output and the wrapper's check look for this key
            cls._sklearn_auto_wrap_output_keys = {"transform"}

    def _wrapped(self, result, X):
        if _OWN_WRAPPING and getattr(result, "ndim", 2) == 2:
            return wrap_in_container("transform", result, X, self)
        return result

    def fit_transform(self, X, y=None):
        """``fit(X).transform(X)``."""
        return self.fit(X, y).transform(X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # No array API support, on purpose: ToNumpy leaves the array API for NumPy,
        # whatever array_api_dispatch says; ToDevice moves X into its namespace, not
        # X's (scikit-learn's array API checks expect results in X's).
        tags.array_api_support = False
        tags.input_tags.allow_nan = True
        tags.input_tags.three_d_array = True  # images pass through, to a next step
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


class ToNumpy(_Step):
    """Convert ``X`` (torch tensors on any device, CuPy, any DLPack producer,
    array-likes) to a NumPy array, zero-copy for CPU memory.

    A stateless first step for pipelines fed tensors. ``y`` never reaches
    pipeline steps: a plain CPU tensor ``y`` works as it is (scikit-learn
    converts it with ``Tensor.numpy()``); convert any other (on a GPU, one
    that requires grad, bfloat16) with ``tensorbridge.to_numpy(y)``.

    A tensor becomes whatever ``tensorbridge.to_numpy`` gives (complex stays
    complex), except bfloat16 and float8, which scikit-learn's estimators
    refuse: they are widened to float32 (one copy; float32 holds each value
    exactly). ``tb.to_numpy`` itself keeps its zero-copy ml_dtypes view. Other
    input is validated as scikit-learn validates it (a complex NumPy array is
    refused, as scikit-learn's checks require). ``X`` may have any rank of at least 2:
    images of shape (n, C, H, W) pass as they are, for a next step that takes
    them (``TorchTransformer``), and scikit-learn counts their features as
    ``X.shape[1]``; ``transform`` takes samples of the shape seen by ``fit``.
    Features pass one to one: ``get_feature_names_out`` gives the input's
    names, and ``set_output(transform="pandas")`` puts 2-D results in a
    DataFrame (n-D ones stay arrays, which a DataFrame cannot hold). It
    declares no array API support: leaving the array API for NumPy is its
    purpose, under ``array_api_dispatch=True`` too.

    Attributes
    ----------
    sample_shape_in_ : tuple
        The shape of one sample seen at fit; ``transform`` requires the same.
    n_features_in_ : int
        ``X.shape[1]``.
    feature_names_in_ : ndarray of str
        The column names of a DataFrame ``X``.

    Examples
    --------
    >>> import torch
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> from tensorbridge.sklearn import ToNumpy
    >>> make_pipeline(ToNumpy(), StandardScaler()).fit_transform(torch.ones(3, 2)).shape
    (3, 2)
    >>> ToNumpy().fit_transform(torch.ones(4, 1, 8, 8)).shape  # images, as they are
    (4, 1, 8, 8)
    >>> ToNumpy().fit(torch.ones(3, 2)).get_feature_names_out()
    array(['x0', 'x1'], dtype=object)
    """

    def fit(self, X, y=None):
        """Record ``n_features_in_`` (and ``feature_names_in_``)."""
        if _dask.is_dask_collection(X):  # metadata and one row only: see _dask.py
            return _dask.fit(self, X, y)
        self._validate(X, reset=True)
        return self

    def transform(self, X):
        """``X`` as a NumPy array: a view of CPU tensors and arrays wherever
        possible (bfloat16 and float8 are widened to float32, a copy); a lazy
        dask array of them, block by block, for a dask array or Dask DataFrame."""
        return self._wrapped(self._transform(X), X)

    def _transform(self, X):
        if _dask.is_dask_collection(X):
            return _dask.transform(self, X)
        if "n_features_in_" not in self.__dict__:
            check_is_fitted(self)  # raises NotFittedError, worded as scikit-learn does
        from_tensor = is_tensor_like(X)
        if from_tensor:
            X = to_numpy(X)
        if (type(X) is np.ndarray and X.ndim == 2 and X.dtype.kind in "biuf" and len(X) > 0
                and X.shape[1] == self.n_features_in_ > 0
                and "feature_names_in_" not in self.__dict__
                and len(fitted_sample_shape(self) or ()) < 2):
            # What validate_data concludes for a plain 2-D numeric array of the
            # fitted width (fitted without column names), without its ~50 us.
            return X
        return self._validate(X, reset=False, from_tensor=from_tensor)

    def _validate(self, X, reset, from_tensor=False):
        if is_tensor_like(X):
            X, from_tensor = to_numpy(X), True
        # bfloat16 and float8 (ml_dtypes, which scikit-learn's estimators refuse as
        # not numeric) widened to float32: the one copy this step makes.
        X = validatable(X)
        if from_tensor and X.dtype.kind == "c":
            # scikit-learn refuses complex data, which a conversion step passes
            # through: its checks (shape, samples, width) run on the real part,
            # a view, and the complex array is returned.
            validate_data(self, X.real, reset=reset, dtype=None, ensure_all_finite=False,
                          allow_nd=True)
        else:
            # Keep any numeric dtype as it is (no copy); only text and objects
            # go through scikit-learn's numeric conversion, which refuses strings.
            keep = isinstance(X, np.ndarray) and X.dtype.kind not in "OUS"
            X = validate_data(self, X, reset=reset, dtype=None if keep else "numeric",
                              ensure_all_finite=False, allow_nd=True)
        sample_shape(self, X.shape[1:], reset)
        return X

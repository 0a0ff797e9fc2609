"""The container scikit-learn's ``set_output`` asks an estimator's ``transform`` for."""

from __future__ import annotations

from sklearn import get_config

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

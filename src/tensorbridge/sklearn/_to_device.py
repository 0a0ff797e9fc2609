"""ToDevice: a pipeline step that moves X to a device, for the array API
estimators after it (the mirror of ToNumpy)."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn import get_config
from sklearn.base import _fit_context
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from .. import _dlpack, _torch, to_device
from .._dtypes import is_extended_torch_dtype
from ._input import array_namespace, is_tensor_like, on_device, on_host, sample_shape
from ._module import cuda_is_unusable, resolve_device
from ._output import transform_output
from ._to_numpy import ToNumpy, _Step


class ToDevice(_Step):
    """Move ``X`` to `device`, as a torch tensor or a CuPy array, so that the
    steps after it run there under scikit-learn's array API dispatch.

    The mirror of :class:`ToNumpy`: a stateless first step. Under
    ``sklearn.set_config(array_api_dispatch=True)``, ``transform`` gives ``X``
    (a NumPy array, a pandas DataFrame, a torch tensor, a CuPy array, any
    array API array) as a torch tensor on `device` (``namespace="torch"``) or
    a CuPy array on it (``namespace="cupy"``): host data through pinned
    staging (:func:`tensorbridge.to_device`; on the CPU a tensor sharing the
    array's memory where it can), device data through DLPack without a host
    copy. The estimators scikit-learn runs on the array API (PCA, LDA, Ridge,
    StandardScaler, ...) then run on that device.

    Without dispatch, scikit-learn's estimators take NumPy only, so
    ``transform`` returns NumPy, as :class:`ToNumpy` does (with a warning when
    `device` is not the CPU). ``set_output(transform="pandas")`` also gets
    NumPy, in a DataFrame. ``X`` is validated as :class:`ToNumpy` validates it
    (any rank of at least 2, features one to one, bfloat16 and float8 widened
    to float32). ``y`` never reaches pipeline steps: an estimator that needs
    it on the device too (LinearDiscriminantAnalysis) takes
    ``tensorbridge.to_device(y, device)``. ``inverse_transform`` brings a
    result back to NumPy. ``check_estimator(ToDevice("cpu"))`` passes, save
    for the array API check it adds under ``SCIPY_ARRAY_API=1``, which
    expects results in ``X``'s namespace: a step that leaves it on purpose
    fails it by design.

    Parameters
    ----------
    device : str or torch.device
        Where ``X`` goes: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (or any device
        torch can allocate on, for ``namespace="torch"``; CUDA only for CuPy).
        ``fit`` raises ``ValueError`` for a device the namespace cannot
        allocate on here, saying why, with dispatch on or off.
    namespace : {"torch", "cupy"}, default="torch"
        The array namespace of the result under dispatch.

    Attributes
    ----------
    device_ : torch.device or cupy.cuda.Device
        `device`, as the namespace names it.
    sample_shape_in_ : tuple
        The shape of one sample seen at fit; ``transform`` requires the same.
    n_features_in_ : int
        ``X.shape[1]``.
    feature_names_in_ : ndarray of str
        The column names of a DataFrame ``X``.

    See Also
    --------
    ToNumpy : the way back, to NumPy.

    Examples
    --------
    >>> import numpy as np, sklearn, torch  # torch: the default namespace
    >>> from sklearn.pipeline import make_pipeline
    >>> from sklearn.preprocessing import StandardScaler
    >>> from tensorbridge.sklearn import ToDevice
    >>> X = np.arange(6.0).reshape(3, 2)
    >>> ToDevice("cpu").fit_transform(X)  # without dispatch: NumPy
    array([[0., 1.],
           [2., 3.],
           [4., 5.]])
    >>> with sklearn.config_context(array_api_dispatch=True):  # doctest: +SKIP
    ...     make_pipeline(ToDevice("cuda"), StandardScaler()).fit_transform(X).device
    device(type='cuda', index=0)
    """

    _parameter_constraints: dict = {
        "device": "no_validation",  # checked in fit, where torch or CuPy is imported
        "namespace": [StrOptions({"torch", "cupy"})],
    }

    def __init__(self, device, *, namespace="torch"):
        self.device = device
        self.namespace = namespace

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Check that the namespace can allocate on `device`, and record
        ``n_features_in_`` (and ``feature_names_in_``)."""
        self.device_ = (_torch_device(self.device) if self.namespace == "torch"
                        else _cupy_device(self.device))
        self._validate(X, reset=True)
        return self

    def transform(self, X):
        """``X`` on ``device_`` under array API dispatch, else NumPy."""
        return self._wrapped(self._transform(X), X)

    def inverse_transform(self, X):
        """``X`` (a result of ``transform``, on any device) as a NumPy array."""
        check_is_fitted(self)
        return np.asarray(on_host(X))

    def _transform(self, X):
        check_is_fitted(self)
        dispatch = get_config().get("array_api_dispatch", False)
        if not dispatch and getattr(self.device_, "type", "cuda") != "cpu":  # CuPy's: a GPU
            warnings.warn(
                f"ToDevice(device={self.device!r}) returns NumPy: scikit-learn's "
                "array_api_dispatch is off, and its estimators then take NumPy only. "
                "Turn it on (sklearn.set_config(array_api_dispatch=True), with "
                "SCIPY_ARRAY_API=1 set before SciPy is imported) to move X there",
                UserWarning, stacklevel=3)
        X = self._validate(X, reset=False)
        # Without dispatch, or when a container was asked for: NumPy (it goes in it).
        if not dispatch or transform_output(self) != "default":
            return on_host(X)
        return _to_torch(X, self.device_) if self.namespace == "torch" else \
            _to_cupy(X, self.device_)

    def _validate(self, X, reset):
        """``X`` validated: an array API array (torch, CuPy...) where it is,
        under dispatch; anything else as NumPy, as ToNumpy validates it."""
        if not get_config().get("array_api_dispatch", False) or array_namespace(X) is None:
            return ToNumpy._validate(self, X, reset)
        if _torch.is_tensor(X):
            X = X.detach()  # steps take values; autograd stays with the caller
        X = validate_data(self, X, reset=reset, dtype=None, ensure_all_finite=False,
                          allow_nd=True)
        sample_shape(self, X.shape[1:], reset)
        return X


def _torch_device(device):
    try:
        import torch
    except ImportError as error:
        raise ImportError("ToDevice: namespace='torch' needs torch, which is not installed "
                          "here; install it, or use namespace='cupy'") from error
    return resolve_device(torch, device, "ToDevice", auto=False)


def _cupy_device(device):
    kind, _, number = str(device).partition(":")  # "cuda", "cuda:N" or a torch.device
    if kind == "cpu":
        raise ValueError(f"ToDevice: CuPy arrays live on CUDA devices only, not on "
                         f"device={device!r}; use namespace='torch' for the CPU")
    if kind != "cuda" or not (number == "" or number.isdigit()):
        raise ValueError(f"ToDevice: device={device!r} is not a CUDA device, which CuPy "
                         "needs; use 'cuda' or 'cuda:N'")
    index = int(number) if number else None  # None: the current device
    try:
        import cupy
    except ImportError as error:
        raise ImportError("ToDevice: namespace='cupy' needs CuPy, which is not installed "
                          "here: pip install cupy-cuda12x, or use namespace='torch'") from error
    if not cupy.cuda.is_available():
        raise ValueError(f"ToDevice: CuPy cannot allocate on device={device!r} here: "
                         + cuda_is_unusable("cupy.cuda.is_available()",
                                            "use namespace='torch' with device='cpu'"))
    count = cupy.cuda.runtime.getDeviceCount()
    if index is not None and index >= count:
        raise ValueError(f"ToDevice: device={device!r} does not exist here ({count} CUDA "
                         "devices); use 'cuda'")
    return cupy.cuda.Device(index)


def _to_torch(X, device):
    import torch

    X = on_device(X)  # CUDA memory of another producer (CuPy): a tensor over it
    if not isinstance(X, torch.Tensor):
        return to_device(X, device)  # host data: pinned staging, or shared on the CPU
    if is_extended_torch_dtype(X.dtype):
        X = X.float()  # bfloat16 and float8, as ToNumpy widens them for the estimators
    return X.to(device)


def _to_cupy(X, device):
    import cupy

    with device:
        if (not isinstance(X, cupy.ndarray) and is_tensor_like(X)
                and (_dlpack.device_of(X) or (1, 0))[0] in _dlpack.CUDA_DEVICE_TYPES):
            X = cupy.from_dlpack(X)  # CUDA memory of another producer (torch): no copy
        if isinstance(X, cupy.ndarray):
            return X if X.device == device else cupy.array(X)  # copied to `device`
        return cupy.asarray(on_host(X))

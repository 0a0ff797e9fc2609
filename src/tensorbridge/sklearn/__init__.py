"""scikit-learn estimators over torch modules and functions, and the steps
that move X between NumPy and a device.

Imported only when used (``from tensorbridge.sklearn import ...``): importing
tensorbridge itself pulls in neither scikit-learn nor torch.
"""

try:
    import sklearn  # noqa: F401
except ImportError as error:
    raise ImportError("tensorbridge.sklearn needs scikit-learn, which is not installed: "
                      "pip install 'tensorbridge[sklearn]' (or scikit-learn>=1.6)") from error

from ._augmented import AugmentedEstimator
from ._to_device import ToDevice
from ._to_numpy import ToNumpy
from ._torch_transformer import TorchTransformer

__all__ = ["AugmentedEstimator", "ToDevice", "ToNumpy", "TorchTransformer"]

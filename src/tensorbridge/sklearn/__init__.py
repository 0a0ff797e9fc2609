"""scikit-learn estimators over torch modules and functions.

Imported only when used (``from tensorbridge.sklearn import ...``): importing
tensorbridge itself pulls in neither scikit-learn nor torch.
"""

from ._augmented import AugmentedEstimator
from ._to_numpy import ToNumpy
from ._torch_transformer import TorchTransformer

__all__ = ["AugmentedEstimator", "ToNumpy", "TorchTransformer"]

"""tensorbridge: move data between PyTorch (and any DLPack producer) and NumPy,
as fast as the hardware allows, with nothing lost and nothing surprising.

Importing tensorbridge imports neither torch nor CUDA: tensors are recognised
through ``sys.modules``, and the CUDA driver is loaded on first GPU use.
"""

__version__ = "0.1.0"

from ._core import to_numpy
from . import _convert

_convert.install()

__all__ = ["to_numpy", "__version__"]

"""tensorbridge: move data between PyTorch (and any DLPack producer) and NumPy,
as fast as the hardware allows, with nothing lost and nothing surprising.

Importing tensorbridge imports neither torch nor CUDA: tensors are recognised
through ``sys.modules``, and the CUDA driver is loaded on first GPU use.
"""

__version__ = "0.1.0"

from . import _convert
from ._collect import collect
from ._convert import to_numpy_async
from ._core import to_numpy
from ._driver import cuda_available, cuda_status
from ._pinned import (
    PinHandle,
    empty_pinned,
    empty_pinned_cache,
    pin,
    pinned_memory_stats,
    set_pinned_memory_limit,
)
from ._to_device import to_device
from ._transfer import Transfer

_convert.install()

__all__ = [
    "PinHandle",
    "Transfer",
    "__version__",
    "collect",
    "cuda_available",
    "cuda_status",
    "empty_pinned",
    "empty_pinned_cache",
    "pin",
    "pinned_memory_stats",
    "set_pinned_memory_limit",
    "to_device",
    "to_numpy",
    "to_numpy_async",
]

"""torch as tensorbridge sees it without importing it: a tensor can exist only
once torch is imported, so ``sys.modules`` answers "is this a tensor?"."""

from __future__ import annotations

import sys


def imported():
    """The torch module if something imported it, else None."""
    return sys.modules.get("torch")


def is_tensor(x) -> bool:
    """Whether `x` is a torch tensor (subclasses included)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)

"""torch (and skorch) as tensorbridge sees them without importing them: a
tensor can exist only once torch is imported, so ``sys.modules`` answers "is
this a tensor?"."""

from __future__ import annotations

import sys


def imported():
    """The torch module if something imported it, else None."""
    return sys.modules.get("torch")


def is_tensor(x) -> bool:
    """Whether `x` is a torch tensor (subclasses included)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def is_module(x) -> bool:
    """Whether `x` is a torch.nn.Module."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.nn.Module)


def is_skorch_net(x) -> bool:
    """Whether `x` is a skorch NeuralNet (skorch, like torch, seen through sys.modules)."""
    skorch = sys.modules.get("skorch")
    return skorch is not None and isinstance(x, skorch.NeuralNet)


def is_masked(x) -> bool:
    """Whether `x` is a torch.masked.MaskedTensor."""
    masked = sys.modules.get("torch.masked")
    return masked is not None and isinstance(x, masked.MaskedTensor)


def is_functorch_wrapped(x) -> bool:
    """Whether `x` is a tensor inside a torch.func transform (vmap's batched
    tensor, grad's tracking tensor): a wrapper with no memory of its own."""
    functorch = getattr(getattr(sys.modules.get("torch"), "_C", None), "_functorch", None)
    wrapped = getattr(functorch, "is_functorch_wrapped_tensor", None)
    return wrapped is not None and bool(wrapped(x))

"""torch (and skorch) as tensorbridge sees them without importing them: a
tensor can exist only once torch is imported, so ``sys.modules`` answers "is
this a tensor?"."""

from __future__ import annotations

import re
import sys

# The first torch release that publishes the DLPack C exchange API (its
# tensors are then read with no Python-level call), for saying so without
# importing torch; with torch imported, the native core's own probe answers.
EXCHANGE_API_SINCE = (2, 10)


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


def reads_exchange_api(version: str | None) -> bool | None:
    """Whether tensorbridge reads this torch's tensors through the DLPack C
    exchange API: the native core's answer once torch is imported, else what
    `version` (the installed torch's, None: no torch) says; None without torch."""
    torch = sys.modules.get("torch")
    if torch is not None:
        from . import _core

        return _core.exchange_api_usable(torch.Tensor)
    if version is None:
        return None
    match = re.match(r"(\d+)\.(\d+)", version)
    return bool(match) and (int(match[1]), int(match[2])) >= EXCHANGE_API_SINCE

"""The DLPack protocol as a consumer uses it: which devices the CPU reads,
the version we ask for, and how a producer is asked for its capsule."""

from __future__ import annotations

import sys

from . import _core

# The native core's definitions (csrc/dlpack.h), not copies of them.
CPU_READABLE_DEVICES = _core.CPU_READABLE_DEVICES  # CPU, CUDA host (pinned), ROCm host
CUDA_DEVICE_TYPES = _core.CUDA_DEVICE_TYPES  # CUDA, CUDA managed
CUDA = 2  # kDLCUDA, the device type of the memory the native core describes
MAX_VERSION = _core.DLPACK_MAX_VERSION  # the newest DLPack ABI we read


def device_of(x):
    """`x`'s (DLPack device type, device id), or None when it is no producer."""
    if not hasattr(type(x), "__dlpack__"):
        return None
    if not hasattr(x, "__dlpack_device__"):
        return (1, 0)
    device_type, device_id = x.__dlpack_device__()
    return int(device_type), int(device_id)


def request_capsule(x, **kwargs):
    """`x.__dlpack__(**kwargs)`, asking for a versioned capsule first:
    producers older than DLPack 1.0 do not take max_version."""
    try:
        return x.__dlpack__(max_version=MAX_VERSION, **kwargs)
    except TypeError:
        return x.__dlpack__(**kwargs)


def is_immutable(x) -> bool:
    """Whether `x` is an array its library never lets anyone write (a JAX
    array), whose capsule cannot say so: JAX makes only legacy capsules, which
    carry no READ_ONLY flag."""
    jax = sys.modules.get("jax")  # a JAX array exists only once jax is imported
    return jax is not None and isinstance(x, getattr(jax, "Array", ()))

"""``out=`` arrays: the checks every route makes before writing into one."""

from __future__ import annotations

import numpy as np


def check_out_array(out) -> None:
    if not isinstance(out, np.ndarray):
        raise TypeError(
            f"to_numpy: out must be a numpy.ndarray, got {type(out).__name__}; "
            "allocate one with numpy.empty(shape, dtype) or tensorbridge.empty_pinned"
        )
    if not out.flags.writeable:
        raise ValueError("to_numpy: out is read-only; pass a writeable array")


def check_out_matches(out: np.ndarray, shape, dtype) -> None:
    if out.shape != tuple(shape):
        raise ValueError(
            f"to_numpy: out has shape {out.shape}, but the result has shape {tuple(shape)}; "
            "pass an array of exactly that shape"
        )
    if out.dtype != dtype:
        raise ValueError(
            f"to_numpy: out has dtype {out.dtype}, but the result has dtype {dtype}; "
            "pass an array of exactly that dtype"
        )

"""Which NumPy dtype each torch dtype becomes, and why some have none."""

from __future__ import annotations

import numpy as np

from . import _core

# The one torch -> NumPy table, shared with the native core: (torch name,
# NumPy or ml_dtypes name, kind). "native": NumPy has it; "extended":
# ml_dtypes has it (zero-copy views like the native ones); "widened": NumPy
# holds its values only after a widening copy.
_NATIVE = {t: np.dtype(n) for t, n, kind in _core.TORCH_DTYPES if kind == "native"}
_EXTENDED = tuple(t for t, _, kind in _core.TORCH_DTYPES if kind == "extended")
_WIDENED = {t: np.dtype(n) for t, n, kind in _core.TORCH_DTYPES if kind == "widened"}

_cache: dict[str, np.dtype] = {}


def torch_dtype_name(dtype) -> str:
    return str(dtype).removeprefix("torch.")


def numpy_dtype(torch_dtype) -> np.dtype:
    """The dtype of ``to_numpy``'s result for a tensor of ``torch_dtype``.

    Raises TypeError, naming the dtype and the fix, for dtypes NumPy cannot hold.
    """
    name = torch_dtype_name(torch_dtype)
    found = _cache.get(name)
    if found is not None:
        return found
    if name in _NATIVE:
        found = _NATIVE[name]
    elif name in _WIDENED:
        found = _WIDENED[name]
    elif name in _EXTENDED:
        found = _extended(name)
    else:
        raise TypeError(f"to_numpy: torch.{name} has no NumPy dtype; {_fix_for(name)}")
    _cache[name] = found
    return found


def needs_widening(torch_dtype) -> bool:
    """True for dtypes whose values NumPy can only hold in a wider copy."""
    return torch_dtype_name(torch_dtype) in _WIDENED


def is_extended_torch_dtype(torch_dtype) -> bool:
    """True for torch dtypes that NumPy holds only as ml_dtypes (bfloat16, float8)."""
    return torch_dtype_name(torch_dtype) in _EXTENDED


def is_extended(dtype: np.dtype) -> bool:
    """True for the ml_dtypes dtypes torch also has (NumPy has none of these
    names), which torch.from_numpy and .numpy() refuse."""
    return dtype.name in _EXTENDED


def same_size_integer(dtype: np.dtype) -> np.dtype:
    """An integer dtype of ``dtype``'s size, to move ml_dtypes data through torch."""
    return np.dtype(f"i{dtype.itemsize}")


def _extended(name: str) -> np.dtype:
    import ml_dtypes

    scalar = getattr(ml_dtypes, name, None)
    if scalar is None:
        raise TypeError(
            f"to_numpy: torch.{name} needs ml_dtypes.{name}, which ml_dtypes "
            f"{ml_dtypes.__version__} lacks; upgrade with 'pip install -U ml_dtypes'"
        )
    return np.dtype(scalar)


def _fix_for(name: str) -> str:
    if name.startswith(("qint", "quint")):
        return "call t.dequantize() for the values or t.int_repr() for the stored integers"
    if name.startswith("bits"):
        return "call t.view(torch.uint8) (or another integer type of the same size) for the bits"
    if name.startswith("float4"):
        return "two values are packed per byte: call t.view(torch.uint8) for the packed bytes"
    if name.startswith(("int", "uint")):
        return "sub-byte integers have no NumPy layout: call t.to(torch.int8) or t.to(torch.uint8)"
    return "convert it first, for example with t.float()"


def tensor_over(torch, array: np.ndarray):
    """A CPU tensor over `array`'s memory (non-negative strides), ml_dtypes
    through a same-size integer, which torch.from_numpy takes."""
    if is_extended(array.dtype):
        bits = torch.from_numpy(array.view(same_size_integer(array.dtype)))
        return bits.view(getattr(torch, array.dtype.name))
    return torch.from_numpy(array)

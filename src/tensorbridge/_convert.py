"""``to_numpy`` beyond the native fast path.

``tensorbridge._core.to_numpy`` handles NumPy arrays and plain CPU tensors in
C and hands every other case here, arguments untouched: other producers, the
cases that need a copy, ``out=``, ``copy=True`` and every error. Each source
kind yields either a *view* of its memory, finished by ``_finish_view``, or is
copied straight into NumPy-owned memory (one copy, never two).
"""

from __future__ import annotations

import sys

import numpy as np

from . import _core, _cuda, _dlpack, _dtypes
from ._out import check_out_array, check_out_matches



def install() -> None:
    """Register this module's implementation as the native fast path's fallback."""
    _core.set_fallback(to_numpy)


def to_numpy(x, *, copy=None, out=None, stream=None):
    if copy is not None and not isinstance(copy, bool):
        raise TypeError(f"to_numpy: copy must be None, True or False, got {copy!r}")
    if out is not None:
        if copy is False:
            raise ValueError(
                "to_numpy: copy=False cannot be combined with out=, which always copies; "
                "drop one of them"
            )
        check_out_array(out)

    if isinstance(x, np.ndarray):
        return _finish_view(x, copy, out)
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return _from_tensor(torch, x, copy, out, stream)
    if hasattr(type(x), "__dlpack__"):
        return _from_dlpack(x, copy, out, stream)
    if hasattr(type(x), "__array__"):
        return _from_array_like(x, copy, out)
    buffer = _buffer_of(x)
    if buffer is not None:
        # The buffer itself, in its format, as memoryview(x) shows it: NumPy
        # would read bytes as a 0-d string, and copy them.
        return _finish_view(np.asarray(buffer), copy, out)
    raise TypeError(
        f"to_numpy: cannot convert an object of type {type(x).__name__!r}; pass a "
        "torch tensor, a NumPy array, or an object with __dlpack__, __array__ or the "
        "buffer protocol (for a Python sequence, call numpy.asarray on it first)"
    )


# -- torch -------------------------------------------------------------------


def to_numpy_async(x, *, out=None, stream=None):
    """Start copying `x` to a NumPy array and return a :class:`Transfer` at once.

    Device memory is copied in stream order (after the work queued on
    ``stream``, default the producer's current stream, at call time) without
    blocking; ``Transfer.wait()`` returns the array. Anything else is
    converted by :func:`to_numpy` and given as an already-finished Transfer.
    """
    if out is not None:
        check_out_array(out)
    memory = _cuda.device_memory(x, stream)
    if memory is not None:
        return _cuda.copy_device_memory(memory, out, asynchronous=True)
    return _cuda.Transfer.finished(to_numpy(x, out=out, stream=stream))


def _from_tensor(torch, t, copy, out, stream):
    if t.device.type == "meta":
        raise TypeError(
            "to_numpy: x is a meta tensor, which has shape and dtype but no data; "
            "materialise it first (for example with torch.empty_like(x, device='cpu'))"
        )
    result_dtype = _dtypes.numpy_dtype(t.dtype)  # refuses dtypes NumPy cannot hold
    # A ZeroTensor has no memory on any device: zeros are written below.
    if t.device.type == "cuda" and not _has_own_dispatch(torch, t) and not (
            t.layout == torch.strided and t._is_zerotensor()):
        if copy is False:
            raise BufferError(f"to_numpy: copy=False, but its memory is on {t.device}, so NumPy "
                              "cannot view it; pass copy=None to allow the copy")
        memory = _cuda.DeviceMemory.of_tensor(torch, t, stream)
        return _cuda.copy_device_memory(memory, out, asynchronous=False)
    if t.requires_grad:
        t = t.detach()  # views must not hold the autograd graph

    why_copy = _why_tensor_needs_copy(torch, t)
    if why_copy is None and (copy or out is not None):
        return _finish_view(_view_to_copy(t, result_dtype), copy, out)
    if why_copy is None:
        return _finish_view(_view_cpu_tensor(t, result_dtype), copy, out)
    if copy is False:
        raise BufferError(
            f"to_numpy: copy=False, but {why_copy}, so NumPy cannot view it; "
            "pass copy=None to allow the copy"
        )
    if out is None:
        out = np.empty(tuple(t.shape), result_dtype)
    else:
        check_out_matches(out, tuple(t.shape), result_dtype)
    try:
        _copy_tensor_into(torch, out, t)
    except Exception as error:
        if not _has_own_dispatch(torch, t):
            raise
        raise TypeError(
            f"to_numpy: cannot read the values of this {type(t).__name__} (a tensor subclass "
            f"with its own __torch_dispatch__): {error}; convert it to a plain tensor first"
        ) from error
    return out


def _has_own_dispatch(torch, t) -> bool:
    return type(t).__torch_dispatch__ is not torch.Tensor.__torch_dispatch__


def _why_tensor_needs_copy(torch, t):
    if _has_own_dispatch(torch, t):
        return (f"it is a {type(t).__name__}, a tensor subclass with its own "
                "__torch_dispatch__, whose memory is not plain")
    if t.layout != torch.strided:
        return f"its layout is {t.layout} (it must be densified)"
    if t.device.type != "cpu":
        return f"its memory is on {t.device}"
    if t._is_zerotensor():
        return "it is a ZeroTensor (zeros with no memory behind them)"
    if t.is_conj():
        return "it has the conjugate bit set (x.resolve_conj() materialises it)"
    if t.is_neg():
        return "it has the negative bit set (x.resolve_neg() materialises it)"
    if _dtypes.needs_widening(t.dtype):
        return f"{t.dtype} has no NumPy dtype and is widened to complex64"
    return None


def _view_cpu_tensor(t, result_dtype: np.dtype) -> np.ndarray:
    view = _core.fast_view(t)  # the native route, when it applies
    if view is not None:
        return view
    # ml_dtypes go through a same-size integer, which Tensor.numpy() takes.
    if _dtypes.is_extended(result_dtype):
        return t.view(_torch_dtype_of(result_dtype)).numpy().view(result_dtype)
    return t.numpy()


def _view_to_copy(t, result_dtype: np.dtype) -> np.ndarray:
    """A view of `t` that is only copied: read through the exchange API or a
    DLPack capsule, never Tensor.numpy(), which would leave the tensor
    unresizable for good (and copy=True is the remedy for the resize hazard)."""
    view = _core.fast_view(t, numpy_method=False)
    if view is not None:
        return view
    # Through a same-size integer where older torch's DLPack lacks the dtype.
    through_integer = _dtypes.is_extended(result_dtype) or result_dtype == np.bool_
    source = t.view(_torch_dtype_of(result_dtype)) if through_integer else t
    view = _core.array_from_capsule(_dlpack.request_capsule(source))
    return view.view(result_dtype) if through_integer else view


def view_to_copy(x) -> np.ndarray:
    """What `to_numpy(x)` gives, for a caller that only copies it (collect):
    a plain CPU tensor is read without Tensor.numpy(), as for copy=True, so
    that it stays resizable on torch < 2.10 too."""
    view = _core.fast_view(x, numpy_method=False)  # C: the exchange route
    if view is not None:
        return view
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor) and x.device.type == "cpu":
        t = x.detach() if x.requires_grad else x
        if _why_tensor_needs_copy(torch, t) is None:
            return _view_to_copy(t, _dtypes.numpy_dtype(t.dtype))
    return to_numpy(x)


def _torch_dtype_of(numpy_dtype: np.dtype):
    import torch

    return torch.from_numpy(np.empty(0, _dtypes.same_size_integer(numpy_dtype))).dtype


def _copy_tensor_into(torch, dst: np.ndarray, t) -> None:
    """Copy ``t`` into ``dst`` in one pass; torch resolves conj/neg bits,
    widens complex32 and reads any device."""
    if t.layout == torch.strided and t._is_zerotensor():
        dst[...] = 0  # its data pointer is NULL: there is nothing to read
        return
    target = dst
    if any(s < 0 for s in dst.strides):  # torch cannot wrap negative strides
        target = np.empty(dst.shape, dst.dtype)
    if t.layout == torch.strided:
        _dtypes.tensor_over(torch, target).copy_(t)
    else:
        _densify_into(torch, _dtypes.tensor_over(torch, target), t)
    if target is not dst:
        np.copyto(dst, target)


def _densify_into(torch, dense, t) -> None:
    """Write sparse `t` (any sparse layout) into `dense` with no dense
    temporary (``t.to_dense()`` would be a second result-sized buffer): zeros,
    then each stored value at its index."""
    coo = t if t.layout == torch.sparse_coo else t.to_sparse_coo()
    coo = coo.coalesce()  # O(nnz); duplicates summed, as to_dense sums them
    dense.zero_()
    dense.index_put_(tuple(coo.indices()), coo.values().to(dense.dtype), accumulate=True)


# -- other producers -----------------------------------------------------------


def _from_dlpack(x, copy, out, stream):
    device_type, device_id = _dlpack.device_of(x)
    if device_type in _dlpack.CPU_READABLE_DEVICES:
        # Held in a local, the capsule outlives an error raised while reading
        # it: its producer's destructor then never runs with an exception pending.
        capsule = _dlpack.request_capsule(x)
        return _finish_view(_core.array_from_capsule(capsule), copy, out)
    if copy is False:
        raise BufferError(
            f"to_numpy: copy=False, but this {type(x).__name__} lives on DLPack device "
            f"type {device_type}, which the CPU cannot read; pass copy=None to allow the copy"
        )
    if device_type in _cuda.CUDA_DEVICE_TYPES:
        memory = _cuda.DeviceMemory.of_dlpack(x, device_id, stream)
        return _cuda.copy_device_memory(memory, out, asynchronous=False)
    # Ask the producer itself for a host copy (DLPack >= 1.0 `dl_device`).
    try:
        capsule = x.__dlpack__(max_version=_dlpack.MAX_VERSION, dl_device=(1, 0), copy=True)
    except (TypeError, BufferError, NotImplementedError) as error:
        raise BufferError(
            f"to_numpy: this {type(x).__name__} lives on DLPack device type "
            f"{device_type} and its producer cannot copy it to the CPU ({error}); "
            "copy it to host memory with the producer's own API first"
        ) from error
    return _finish_view(_core.array_from_capsule(capsule), copy, out)


def _buffer_of(x):
    """A memoryview of `x`'s buffer, or None when `x` has no buffer protocol."""
    try:
        return memoryview(x)
    except TypeError:
        return None


def _from_array_like(x, copy, out):
    if copy is False and np.lib.NumpyVersion(np.__version__) >= "2.0.0":
        try:
            view = np.asarray(x, copy=False)
        except ValueError as error:
            raise BufferError(
                f"to_numpy: copy=False, but this {type(x).__name__} can only be "
                f"converted by copying ({error}); pass copy=None to allow the copy"
            ) from error
    else:
        view = np.asarray(x)
    return _finish_view(view, copy, out)


# -- results -----------------------------------------------------------------


def _finish_view(view: np.ndarray, copy, out):
    if out is not None:
        check_out_matches(out, view.shape, view.dtype)
        np.copyto(out, view, casting="no")
        return out
    if copy:
        return view.copy(order="K")
    return view

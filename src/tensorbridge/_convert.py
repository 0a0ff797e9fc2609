"""The routes of ``to_numpy`` that need Python.

The native core (``csrc/to_numpy.cpp``) classifies every input once into a
``_core.Route`` and finishes itself the routes that need no Python: a view of
host memory, one copy of compact CUDA memory. Every other call reaches
:func:`convert` with its route and the caller's arguments untouched: ``out=``,
``copy=`` checks, torch tensors that need a torch operation first, other DLPack
producers, array-likes, buffers, and every error. Each yields either a *view*,
finished by ``_finish_view``, or is copied straight into NumPy-owned memory
(one copy, never two).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _core, _device_memory, _dlpack, _dtypes, _torch
from ._out import check_out_array, check_out_matches
from ._transfer import Transfer

_MISSING = object()


def install() -> None:
    """Register :func:`convert` as the native front door's fallback."""
    _core.set_fallback(convert)


def convert(route, x=_MISSING, /, *extra, copy=None, out=None, stream=None, **unknown):
    """``to_numpy(x, ...)`` for the routes the native core leaves to Python;
    `route` is what it found of `x` (None when the arguments are wrong).
    Callers use ``tensorbridge.to_numpy``, whose front door calls this."""
    # Python's own wording, for the public signature to_numpy(x, *, copy, out, stream)
    if "x" in unknown:
        if x is not _MISSING:
            raise TypeError("to_numpy() got multiple values for argument 'x'")
        x = unknown.pop("x")
    if unknown:
        raise TypeError(f"to_numpy() got an unexpected keyword argument {next(iter(unknown))!r}")
    if extra:
        raise TypeError(f"to_numpy() takes 1 positional argument but {1 + len(extra)} were given")
    if x is _MISSING:
        raise TypeError("to_numpy() missing 1 required positional argument: 'x'")
    if copy is not None and not isinstance(copy, bool):
        raise TypeError(f"to_numpy: copy must be None, True or False, got {copy!r}")
    _check_out(out, copy)
    if route is None:  # the front door leaves out= and wrong arguments to be checked first
        route = _core.route(x, numpy_method=not copy and out is None)
    return _convert_route(route, x, copy, out, stream)


def _check_out(out, copy) -> None:
    """The checks of `out` that need no result, made once per call before
    anything of `x` is read or copied (by to_numpy_async before `x` is even
    classified)."""
    if out is None:
        return
    if copy is False:
        raise ValueError(
            "to_numpy: copy=False cannot be combined with out=, which always copies; "
            "drop one of them"
        )
    check_out_array(out)


def _convert_route(route, x, copy, out, stream):
    """`x` by its route, with arguments already checked."""
    kind = route.kind
    if kind == "view":
        return _finish_view(route.view, copy, out)
    if route.torch_device is not None:
        return _from_tensor(route, x, copy, out, stream)
    if kind in ("device", "dlpack"):
        return _from_dlpack(route, x, copy, out, stream)
    if kind == "array":
        return _from_array_like(x, copy, out)
    if kind == "buffer":
        # The buffer itself, in its format, as memoryview(x) shows it: NumPy
        # would read bytes as a 0-d string, and copy them.
        return _finish_view(np.asarray(memoryview(x)), copy, out)
    raise TypeError(
        f"to_numpy: cannot convert an object of type {type(x).__name__!r}; pass a "
        "torch tensor, a NumPy array, or an object with __dlpack__, __array__ or the "
        "buffer protocol (for a Python sequence, call numpy.asarray on it first)"
    )


def to_numpy_async(x: Any, *, out: np.ndarray | None = None, stream: Any = None) -> Transfer:
    """Start copying `x` to a NumPy array and return a :class:`Transfer` at once.

    Device memory is copied in stream order (after the work queued on
    ``stream``, default the producer's current stream, at call time) without
    blocking; ``Transfer.wait()`` returns the array. Anything else is
    converted by :func:`to_numpy` and given as an already-finished Transfer.

    Parameters
    ----------
    x : torch.Tensor, DLPack producer or array-like
        What :func:`to_numpy` takes.
    out : numpy.ndarray, optional
        Writeable array of the result's exact shape and dtype (pinned, from
        :func:`empty_pinned`, for the fastest copy).
    stream : optional
        The stream to order a device copy on.

    Returns
    -------
    Transfer

    Examples
    --------
    >>> import torch, tensorbridge as tb
    >>> transfer = tb.to_numpy_async(torch.arange(3))
    >>> transfer.done(), transfer.wait()
    (True, array([0, 1, 2]))
    """
    _check_out(out, None)
    route = _core.route(x, numpy_method=out is None)
    memory = _device_memory.of_route(route, x, stream)
    if memory is not None:
        return _device_memory.copy_device_memory(memory, out, asynchronous=True)
    return Transfer.finished(_convert_route(route, x, None, out, stream))


def as_callers_error(error: Exception, caller: str) -> Exception | None:
    """to_numpy's own `error` (exactly a TypeError, ValueError or BufferError)
    reworded to name `caller`, the call the user made ("collect: batch 3");
    None for any other exception, a producer's own type, which goes on as it is
    (its arguments cannot be remade)."""
    if type(error) not in (TypeError, ValueError, BufferError):
        return None
    return type(error)(f"{caller}: {str(error).removeprefix('to_numpy: ')}")


def view_to_copy(route, x) -> np.ndarray:
    """What ``to_numpy(x)`` gives, for a caller that only copies it
    (collect), from `x`'s route taken with ``numpy_method=False``: a plain
    CPU tensor is read without Tensor.numpy(), as for copy=True, so that it
    stays resizable on torch < 2.10 too."""
    if route.kind == "view":
        return route.view
    if route.torch_device == "cpu" and route.why is None:
        _refuse_tensors_without_an_array(route, x)
        t = x.detach() if x.requires_grad else x
        return _view_to_copy(t, _dtypes.numpy_dtype(t.dtype))
    return convert(route, x)


# -- torch -------------------------------------------------------------------


# The most dimensions a NumPy array has (NPY_MAXDIMS of the NumPy running).
_NUMPY_MAXDIMS = 64 if np.lib.NumpyVersion(np.__version__) >= "2.0.0" else 32


def _refuse_tensors_without_an_array(route, t) -> None:
    """The torch tensors no NumPy array can hold, each with its own error."""
    if route.torch_device == "meta":
        raise TypeError(
            "to_numpy: x is a meta tensor, which has shape and dtype but no data; "
            "materialise it first (for example with torch.empty_like(x, device='cpu'))"
        )
    if t.is_nested:
        raise TypeError(
            "to_numpy: x is a nested tensor, whose components differ in shape, so no one "
            "array holds it; call x.to_padded_tensor(0.0) for a padded array, or convert "
            "each tensor of x.unbind()"
        )
    if _torch.is_masked(t):
        raise TypeError(
            "to_numpy: x is a MaskedTensor, and a NumPy array cannot mark its masked-out "
            "elements; convert x.get_data() (every value, masked ones included) and "
            "x.get_mask() (True where a value is kept): numpy.ma.masked_array(data, "
            "mask=~mask) holds both"
        )
    if _torch.is_functorch_wrapped(t):
        raise TypeError(
            "to_numpy: x is a tensor inside a torch.func transform (vmap, grad, jacrev ...), "
            "which has no memory of its own; convert the transform's inputs or results, "
            "outside it"
        )
    if t.dim() > _NUMPY_MAXDIMS:
        raise ValueError(
            f"to_numpy: x has ndim={t.dim()}, outside [0, {_NUMPY_MAXDIMS}], the dimensions "
            f"a NumPy array can have; reshape it to {_NUMPY_MAXDIMS} dimensions or fewer"
        )


def _from_tensor(route, t, copy, out, stream):
    _refuse_tensors_without_an_array(route, t)
    result_dtype = _dtypes.numpy_dtype(t.dtype)  # refuses dtypes NumPy cannot hold
    if _device_memory.is_torch_device_copy(route):
        if copy is False:
            raise BufferError(f"to_numpy: copy=False, but {route.reason}, so NumPy "
                              "cannot view it; pass copy=None to allow the copy")
        memory = _device_memory.of_route(route, t, stream)
        return _device_memory.copy_device_memory(memory, out, asynchronous=False)
    if t.requires_grad:
        t = t.detach()  # views must not hold the autograd graph

    if route.why is None:  # plain memory the native core did not view (copy=True, out=, ml_dtypes)
        view = _view_to_copy(t, result_dtype) if copy or out is not None \
            else _view_cpu_tensor(t, result_dtype)
        return _finish_view(view, copy, out)
    if copy is False:
        raise BufferError(
            f"to_numpy: copy=False, but {route.reason}, so NumPy cannot view it; "
            "pass copy=None to allow the copy"
        )
    if out is None:
        out = np.empty(tuple(t.shape), result_dtype)
    else:
        check_out_matches(out, tuple(t.shape), result_dtype)
    try:
        _copy_tensor_into(_torch.imported(), out, t, zeros=route.why == "zerotensor")
    except Exception as error:
        if route.why != "dispatch":
            raise
        raise TypeError(
            f"to_numpy: cannot read the values of this {type(t).__name__} (a tensor subclass "
            f"with its own __torch_dispatch__): {error}; convert it to a plain tensor first"
        ) from error
    return out


def _view_cpu_tensor(t, result_dtype: np.dtype) -> np.ndarray:
    """A view of plain CPU `t` that the native core left to Python:
    ml_dtypes (torch < 2.10) go through a same-size integer, which
    Tensor.numpy() takes."""
    if _dtypes.is_extended(result_dtype):
        return t.view(_torch_dtype_of(result_dtype)).numpy().view(result_dtype)
    return t.numpy()


def _view_to_copy(t, result_dtype: np.dtype) -> np.ndarray:
    """A view of `t` that is only copied: read through the exchange API or a
    DLPack capsule, never Tensor.numpy(), which would leave the tensor
    unresizable for good (and copy=True is the remedy for the resize hazard)."""
    # Through a same-size integer where older torch's DLPack lacks the dtype.
    through_integer = _dtypes.is_extended(result_dtype) or result_dtype == np.bool_
    source = t.view(_torch_dtype_of(result_dtype)) if through_integer else t
    view = _core.array_from_capsule(_dlpack.request_capsule(source))
    return view.view(result_dtype) if through_integer else view


def _torch_dtype_of(numpy_dtype: np.dtype):
    import torch

    return torch.from_numpy(np.empty(0, _dtypes.same_size_integer(numpy_dtype))).dtype


def _copy_tensor_into(torch, dst: np.ndarray, t, zeros: bool) -> None:
    """Copy ``t`` into ``dst`` in one pass; torch resolves conj/neg bits,
    widens complex32 and reads any device. `zeros`: `t` is a ZeroTensor."""
    if zeros:
        dst[...] = 0  # its data pointer is NULL: there is nothing to read
        return
    target = dst
    if any(s < 0 for s in dst.strides):  # torch cannot wrap negative strides
        target = np.empty(dst.shape, dst.dtype)
    if t.layout == torch.strided:
        _dtypes.tensor_over(torch, target).copy_(t)
    elif t.layout in _sparse_layouts(torch):
        _densify_into(torch, _dtypes.tensor_over(torch, target), t)
    else:  # an opaque layout (MKL-DNN's blocked one): only its own to_dense() reads it
        _dtypes.tensor_over(torch, target).copy_(t.to_dense())
    if target is not dst:
        np.copyto(dst, target)


def _sparse_layouts(torch) -> tuple:
    return (torch.sparse_coo, torch.sparse_csr, torch.sparse_csc, torch.sparse_bsr,
            torch.sparse_bsc)


def _densify_into(torch, dense, t) -> None:
    """Write sparse `t` (any sparse layout) into `dense` with no dense
    temporary (``t.to_dense()`` would be a second result-sized buffer): zeros,
    then each stored value at its index."""
    coo = t if t.layout == torch.sparse_coo else t.to_sparse_coo()
    coo = coo.coalesce()  # O(nnz); duplicates summed, as to_dense sums them
    dense.zero_()
    dense.index_put_(tuple(coo.indices()), coo.values().to(dense.dtype), accumulate=True)


# -- other producers -----------------------------------------------------------


def _from_dlpack(route, x, copy, out, stream):
    if route.kind == "device":  # compact CUDA memory, described by the native core
        device_type, device_id = _dlpack.CUDA, route.memory.device
    else:
        device_type, device_id = _dlpack.device_of(x)
    if device_type in _dlpack.CPU_READABLE_DEVICES:
        # Held in a local, the capsule outlives an error raised while reading
        # it: its producer's destructor then never runs with an exception pending.
        capsule = _dlpack.request_capsule(x)
        view = _core.array_from_capsule(capsule)
        if _dlpack.is_immutable(x):
            view.flags.writeable = False  # writes would change an immutable array
        return _finish_view(view, copy, out)
    if copy is False:
        raise BufferError(
            f"to_numpy: copy=False, but this {type(x).__name__} lives on DLPack device "
            f"type {device_type}, which the CPU cannot read; pass copy=None to allow the copy"
        )
    if device_type in _dlpack.CUDA_DEVICE_TYPES:
        memory = _device_memory.of_producer(route, x, device_id, stream)
        return _device_memory.copy_device_memory(memory, out, asynchronous=False)
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

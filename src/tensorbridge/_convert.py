"""The routes of ``to_numpy`` that need Python.

The native core (``csrc/to_numpy.cpp``) parses the arguments, classifies
every input once into a :class:`Route` and finishes itself the routes that
need no Python: a view of host memory, one copy of compact CUDA memory. Every
other call reaches :func:`convert` with what it found (a ``_core.Found``) and
the parsed arguments. :func:`source_of` is the one place that branches on the
route: it says what `x` is read from (a NumPy array viewing host memory,
``DeviceMemory`` the engine copies, or ``TorchValues`` torch writes) and
raises the route's errors; ``to_numpy``, ``to_numpy_async`` and ``collect``
then each finish that source their own way, with one copy at most.
"""

from __future__ import annotations

import enum
from typing import Any

import numpy as np

from . import _core, _dlpack, _dtypes, _torch
from ._device_memory import DeviceMemory, copy_device_memory
from ._out import check_out_array, check_out_matches
from ._transfer import Transfer

# The native core's closed set of routes (csrc/to_numpy.h), by name.
Route = enum.IntEnum("Route", {name: value for value, name in enumerate(_core.ROUTES)})
_TORCH_ROUTES = frozenset({Route.TORCH_PLAIN, Route.TORCH_CUDA, Route.TORCH_COPY,
                           Route.TORCH_ZEROS, Route.TORCH_DISPATCH, Route.TORCH_META})


def install() -> None:
    """Register :func:`convert` as the native front door's fallback."""
    _core.set_fallback(convert)


def convert(found, x, copy, out, stream):
    """``to_numpy(x, copy=copy, out=out, stream=stream)`` for the routes the
    native core leaves to Python; `found` is what it found of `x` (None when
    out= is given: out= is checked before anything of `x` is asked). Callers
    use ``tensorbridge.to_numpy``, whose front door calls this."""
    if found is None:
        _check_out(out, copy)
        found = _core.route(x, numpy_method=False)
    return finish(source_of(found, x, copy, stream, view_returned=not copy and out is None),
                  copy, out)


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


def source_of(found, x, copy, stream, view_returned):
    """What `x` is read from, by its route: a NumPy array viewing host memory,
    ``DeviceMemory`` the engine copies, or ``TorchValues`` torch writes.
    `view_returned`: the view is the caller's result as it is (only then may
    a torch tensor be viewed through Tensor.numpy(), which leaves it
    unresizable for good). Raises each route's errors, and BufferError for
    copy=False where a copy is needed."""
    route = Route(found.route)
    if route is Route.VIEW:
        return found.view
    if route in _TORCH_ROUTES:
        _refuse_tensors_without_an_array(x)
        dtype = _dtypes.numpy_dtype(x.dtype)  # refuses dtypes NumPy cannot hold
        if x.requires_grad:
            x = x.detach()  # neither a view nor a copy may hold the autograd graph
    if route in (Route.DEVICE, Route.TORCH_CUDA, Route.TORCH_COPY, Route.TORCH_ZEROS,
                 Route.TORCH_DISPATCH) and copy is False:
        raise copy_forbidden(found.reason if found.torch_device is None
                             else f"{found.reason}, so NumPy cannot view it")
    if route is Route.DEVICE:
        if stream is None:
            return DeviceMemory.described(found.memory, x)
        if found.torch_device is not None:
            return DeviceMemory.of_tensor(_torch.imported(), x, stream)
        return DeviceMemory.of_dlpack(x, found.memory.device, stream)
    if route is Route.TORCH_PLAIN:
        return _view_cpu_tensor(x, dtype) if view_returned else _view_to_copy(x, dtype)
    if route is Route.TORCH_CUDA:
        return DeviceMemory.of_tensor(_torch.imported(), x, stream)
    if route in (Route.TORCH_COPY, Route.TORCH_ZEROS, Route.TORCH_DISPATCH):
        return TorchValues(x, dtype, route)
    if route is Route.DLPACK:
        return _from_dlpack(x, copy, stream)
    if route is Route.ARRAY:
        return _from_array_like(x, copy)
    if route is Route.BUFFER:
        # The buffer itself, in its format, as memoryview(x) shows it: NumPy
        # would read bytes as a 0-d string, and copy them.
        return np.asarray(memoryview(x))
    raise TypeError(
        f"to_numpy: cannot convert an object of type {type(x).__name__!r}; pass a "
        "torch tensor, a NumPy array, or an object with __dlpack__, __array__ or the "
        "buffer protocol (for a Python sequence, call numpy.asarray on it first)"
    )


def finish(source, copy, out):
    """``to_numpy``'s result from `x`'s source: the view, or one copy."""
    if isinstance(source, np.ndarray):
        return _finish_view(source, copy, out)
    if isinstance(source, DeviceMemory):
        return copy_device_memory(source, out, asynchronous=False)
    return source.into(out)


def copy_forbidden(why: str) -> BufferError:
    """The error for copy=False where a copy is needed, saying `why`."""
    return BufferError(f"to_numpy: copy=False, but {why}; pass copy=None to allow the copy")


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
        :func:`empty_pinned` or by :func:`pin`, for the fastest copy).
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
    source = source_of(_core.route(x, numpy_method=out is None), x, None, stream,
                       view_returned=out is None)
    if isinstance(source, DeviceMemory):
        return copy_device_memory(source, out, asynchronous=True)
    return Transfer.finished(finish(source, None, out))


def as_callers_error(error: Exception, caller: str) -> Exception | None:
    """to_numpy's own `error` (exactly a TypeError, ValueError or BufferError)
    reworded to name `caller`, the call the user made ("collect: batch 3");
    None for any other exception, a producer's own type, which goes on as it is
    (its arguments cannot be remade)."""
    if type(error) not in (TypeError, ValueError, BufferError):
        return None
    return type(error)(f"{caller}: {str(error).removeprefix('to_numpy: ')}")


# -- torch -------------------------------------------------------------------


def _refuse_tensors_without_an_array(t) -> None:
    """The torch tensors no NumPy array can hold, each with its own error."""
    if t.is_meta:
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
    if t.dim() > _core.NUMPY_MAXDIMS:
        raise ValueError(
            f"to_numpy: x has ndim={t.dim()}, outside [0, {_core.NUMPY_MAXDIMS}], the "
            f"dimensions a NumPy array can have; reshape it to {_core.NUMPY_MAXDIMS} "
            "dimensions or fewer"
        )


class TorchValues:
    """A tensor whose values torch itself writes to the host, in one pass:
    conj/neg bits resolved, complex32 widened, sparse layouts densified, a
    ZeroTensor's zeros, a dispatch subclass read through its own operations,
    any device torch reads."""

    __slots__ = ("tensor", "shape", "dtype", "route")

    def __init__(self, tensor, dtype: np.dtype, route: Route):
        self.tensor, self.shape, self.dtype, self.route = tensor, tuple(tensor.shape), dtype, route

    def into(self, out: np.ndarray | None = None) -> np.ndarray:
        """The values, in `out` (checked to fit) or a new array."""
        if out is None:
            out = np.empty(self.shape, self.dtype)
        else:
            check_out_matches(out, self.shape, self.dtype)
        try:
            _copy_tensor_into(_torch.imported(), out, self.tensor,
                              zeros=self.route is Route.TORCH_ZEROS)
        except Exception as error:
            if self.route is not Route.TORCH_DISPATCH:
                raise
            raise TypeError(
                f"to_numpy: cannot read the values of this {type(self.tensor).__name__} (a "
                f"tensor subclass with its own __torch_dispatch__): {error}; convert it to a "
                "plain tensor first"
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


def _from_dlpack(x, copy, stream):
    device_type, device_id = _dlpack.device_of(x)
    if device_type in _dlpack.CPU_READABLE_DEVICES:
        # Held in a local, the capsule outlives an error raised while reading
        # it: its producer's destructor then never runs with an exception pending.
        capsule = _dlpack.request_capsule(x)
        view = _core.array_from_capsule(capsule)
        if _dlpack.is_immutable(x):
            view.flags.writeable = False  # writes would change an immutable array
        return view
    if copy is False:
        raise copy_forbidden(f"this {type(x).__name__} lives on DLPack device type "
                             f"{device_type}, which the CPU cannot read")
    if device_type in _dlpack.CUDA_DEVICE_TYPES:
        return DeviceMemory.of_dlpack(x, device_id, stream)
    # Ask the producer itself for a host copy (DLPack >= 1.0 `dl_device`).
    try:
        capsule = x.__dlpack__(max_version=_dlpack.MAX_VERSION, dl_device=(1, 0), copy=True)
    except (TypeError, BufferError, NotImplementedError) as error:
        raise BufferError(
            f"to_numpy: this {type(x).__name__} lives on DLPack device type "
            f"{device_type} and its producer cannot copy it to the CPU ({error}); "
            "copy it to host memory with the producer's own API first"
        ) from error
    return _core.array_from_capsule(capsule)


def _from_array_like(x, copy):
    if copy is False and np.lib.NumpyVersion(np.__version__) >= "2.0.0":
        try:
            return np.asarray(x, copy=False)
        except ValueError as error:
            raise copy_forbidden(f"this {type(x).__name__} can only be converted by copying "
                                 f"({error})") from error
    return np.asarray(x)


# -- results -----------------------------------------------------------------


def _finish_view(view: np.ndarray, copy, out):
    if out is not None:
        check_out_matches(out, view.shape, view.dtype)
        np.copyto(out, view, casting="no")
        return out
    if copy:
        return view.copy(order="K")
    return view

"""The torch module inside an estimator: where it runs, in which dtype,
when it is shared rather than copied, and how it is pickled.

``placed`` makes ``module_`` (each tensor copied once, straight onto the
device, cast when asked); ``same_weights`` tells whether it can be made again
from what a pickle holds anyway; ``saved_modules``/``loaded_modules`` put
modules through ``torch.save`` so that one fitted on a GPU loads where no GPU
exists. Which outputs are widened to float32 is the dtype table's answer: the
dtypes only ml_dtypes has ("extended": bfloat16, float8).
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import threading
import warnings

from sklearn.utils._param_validation import InvalidParameterError

from .. import _driver, _torch
from .._dtypes import is_extended_torch_dtype, numpy_dtype

_NAME = "TorchTransformer"


def returned_dtype_name(dtype) -> str:
    """The NumPy name of the dtype an output of torch `dtype` is returned in:
    float32 for those NumPy has no dtype of its own for (bfloat16, float8),
    which holds each of their values."""
    if is_extended_torch_dtype(dtype):
        return "float32"
    try:
        return numpy_dtype(dtype).name
    except TypeError:
        return str(dtype).removeprefix("torch.")


def resolve_device(torch, given, name=_NAME, *, auto=True):
    """`given` (a ``device`` parameter) as a torch device this machine has.
    With `auto` (TorchTransformer's), "auto" means CUDA when available, else
    the CPU; without it (ToDevice's), CUDA where torch has none is refused
    with the driver's reason (cuda_status)."""
    if auto and isinstance(given, str) and given == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    usable = "'auto', 'cpu' or 'cuda:N'" if auto else "'cpu', 'cuda' or 'cuda:N'"
    try:
        device = torch.device(given)
    except (RuntimeError, TypeError, ValueError) as error:
        raise ValueError(f"{name}: device={given!r} is not a torch device; use {usable}") \
            from error
    if device.type == "cuda":
        if not auto and not torch.cuda.is_available():
            raise ValueError(f"{name}: torch cannot allocate on device={given!r} here: "
                             + cuda_is_unusable("torch.cuda.is_available()",
                                                "use device='cpu'"))
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            raise ValueError(f"{name}: device={given!r} does not exist here ({count} CUDA "
                             f"devices); use {usable}")
    elif device.type == "meta":
        raise ValueError(f"{name}: device={given!r} holds no data, so nothing can come "
                         f"from it; use {usable}")
    elif device.type != "cpu":
        try:  # mps, xpu, ...: only torch knows whether this build and machine have one
            torch.empty(1, device=device)
        except Exception as error:  # torch raises several kinds
            raise ValueError(f"{name}: device={given!r} cannot be used here (torch says: "
                             f"{str(error).splitlines()[0]}); use {usable}") from error
    return device


def cuda_is_unusable(owner: str, available: str) -> str:
    """Why CUDA cannot be used: the namespace's own answer, and tensorbridge's."""
    status = _driver.cuda_status()
    ours = "CUDA usable" if status["available"] else status["reason"]
    return f"{owner} is False (tensorbridge.cuda_status(): {ours}); {available}"


def check_layer(torch, module, layer):
    """A ValueError unless `layer` names a submodule of `module` (or is None)."""
    if layer is None:
        return
    if not isinstance(module, torch.nn.Module):
        raise ValueError(f"{_NAME}: layer={layer!r} needs a torch.nn.Module, but module "
                         f"is a {type(module).__name__}; leave layer=None")
    names = [name for name, _ in module.named_modules() if name]
    if layer not in names:
        listed = ", ".join(repr(name) for name in names) if names else "none"
        raise ValueError(f"{_NAME}: layer={layer!r} is not a submodule of "
                         f"{type(module).__name__}; its submodules are: {listed}")


@contextlib.contextmanager
def layer_capture(module, layer):
    """With `layer`: a list that receives the layer's output, taken by a
    forward hook that then stops the forward pass (by an exception,
    LayerReached, that the estimator catches). The hook acts only in the
    thread that set it: other threads transforming with the same module_
    meanwhile have their own."""
    if layer is None:
        yield None
        return
    captured = []
    owner = threading.get_ident()

    def hook(submodule, args, output):
        if threading.get_ident() == owner:
            captured.append(output)
            raise LayerReached

    handle = module.get_submodule(layer).register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def torch_dtype(torch, value):
    """`value` (a torch dtype or its name: 'float64', 'torch.half', 'float') as a
    floating or complex torch dtype, or None when it is not one."""
    dtype = getattr(torch, value.removeprefix("torch."), None) if isinstance(value, str) \
        else value
    if not isinstance(dtype, torch.dtype) or not (dtype.is_floating_point or dtype.is_complex):
        return None
    return dtype


def check_not_meta(module):
    """A module whose weights are on the meta device has no values to copy."""
    if not _torch.is_module(module):
        return
    for name, tensor in itertools.chain(module.named_parameters(), module.named_buffers()):
        if tensor.is_meta:
            # both a ValueError (a bad module) and a TypeError (as to_numpy's for meta)
            raise InvalidParameterError(
                f"{_NAME}: the module's {name!r} is on the meta device (a shape without data), "
                "so it cannot run; load or materialise its weights first "
                "(module.to_empty(device='cpu') then load_state_dict, or "
                "load_state_dict(..., assign=True))")


def placed(torch, module, device, cast, shared):
    """A copy of `module` on `device` (floating tensors cast to `cast` unless
    None), in eval mode, each tensor copied once, straight to where it goes;
    `module` itself when `shared` and it is already there as it should be."""
    if not isinstance(module, torch.nn.Module):
        return module  # a plain function: nothing to place
    if shared and cast is None:
        where = next((tensor.device for tensor in tensors_of(module)), torch.device("cpu"))
        if where.type == device.type and (where.index or 0) == (device.index or 0):
            return module.eval()
    memo = {}
    with torch.no_grad():
        for tensor in tensors_of(module):
            if id(tensor) in memo:
                continue
            dtype = cast if cast is not None and tensor.is_floating_point() else None
            if torch.nn.parameter.is_lazy(tensor):  # no data to copy: a new one, made there
                memo[id(tensor)] = type(tensor)(requires_grad=tensor.requires_grad,
                                                device=device, dtype=dtype or tensor.dtype)
                continue
            placed = tensor.detach().to(device=device, dtype=dtype, copy=True)
            if isinstance(tensor, torch.nn.Parameter):
                placed = torch.nn.Parameter(placed, requires_grad=tensor.requires_grad)
            memo[id(tensor)] = placed
    return copy.deepcopy(module, memo).eval()  # the rest (structure, attributes) as it is


def tensors_of(module):
    """A torch module's parameters and buffers; nothing for anything else."""
    if not _torch.is_module(module):
        return ()
    return itertools.chain(module.parameters(), module.buffers())


def is_lazy(torch, module) -> bool:
    """Whether `module` has parameters or buffers whose shape is not known yet."""
    return any(torch.nn.parameter.is_lazy(tensor) for tensor in tensors_of(module))


def same_weights(torch, source, module_, cast) -> bool:
    """Whether `module_`'s parameters and buffers are `source`'s, on its
    device, with floating ones cast to `cast` (unless None) and the rest in
    their own dtype: then ``placed`` makes it again from `source`."""
    if type(source) is not type(module_) or is_lazy(torch, source):
        return False  # a lazy source's module_ was materialised on X: not made again from it
    ours, theirs = source.state_dict(), module_.state_dict()
    if ours.keys() != theirs.keys():
        return False
    with torch.no_grad():
        for name, tensor in ours.items():
            other = theirs[name]
            if not isinstance(tensor, torch.Tensor) or not isinstance(other, torch.Tensor):
                if tensor is not other:
                    return False
                continue
            dtype = cast if cast is not None and tensor.is_floating_point() else tensor.dtype
            if tensor.shape != other.shape or other.dtype != dtype or not torch.equal(
                    tensor.to(device=other.device, dtype=dtype), other):
                return False
    return True


def saved_modules(state):
    """`state` (a copy) with its modules stored through torch.save (a
    TorchScript one through torch.jit.save, which alone can)."""
    for key in ("module", "module_"):
        if _torch.is_module(state.get(key)):
            import torch

            buffer = io.BytesIO()
            script = isinstance(state[key], torch.jit.ScriptModule)  # traced or scripted
            with quiet_torchscript():
                (torch.jit.save if script else torch.save)(state[key], buffer)
            state[key] = SavedModule(buffer.getvalue(), script)
    return state


def loaded_modules(torch, state):
    """`state` of a pickle with its modules loaded: module_ onto device_ (the
    CPU when that GPU is gone here), the user's module where it was."""
    device = state.get("device_")
    if device is not None and device.type == "cuda" and (
            not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        state["device_"] = device = torch.device("cpu")
    for key in ("module", "module_"):
        if isinstance(state.get(key), SavedModule):
            # the user's module: where it was, or the CPU when that is gone
            location = device if key == "module_" else \
                (None if torch.cuda.is_available() else "cpu")
            saved = io.BytesIO(state[key].data)
            with quiet_torchscript():
                state[key] = (
                    torch.jit.load(saved, map_location=location) if state[key].script
                    else torch.load(saved, map_location=location, weights_only=False))
    return state


class LayerReached(Exception):
    """Raised by the layer hook: the rest of the forward pass is not needed."""


@contextlib.contextmanager
def quiet_torchscript():
    """torch.jit's deprecation warning, silenced: saving the user's own
    TorchScript module is the only way to pickle it, and no choice of theirs."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=DeprecationWarning)
        yield


class SavedModule:
    """A torch module inside a pickled estimator, as ``saved_modules`` saved it."""

    script = False  # what pickles written before TorchScript modules were saved mean

    def __init__(self, data: bytes, script: bool = False):
        self.data = data
        self.script = script


class Recreate:
    """Stands for module_ in a pickle: made again on load by placed, from what
    the pickle holds (net_ or module, device_, dtype and dtype_). One written
    by an earlier development build has `source` and `cast` attributes: the
    same facts, which the rest of that pickle implies, so they are ignored."""

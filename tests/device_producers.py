"""DLPack producers in (stand-in) CUDA memory, for the engine tests."""

from __future__ import annotations

import ctypes

import numpy as np
from dlpack_producer import _DESTRUCTOR, DLPackVersion, DLTensor, Producer
from dlpack_producer import _api as pythonapi

LEGACY_STREAM = 1
_EXPORTED = set()  # producers with capsules outstanding: their callbacks must stay alive


class DeviceArray(Producer):
    """`array`'s values in device memory of the stand-in driver.

    Its "current stream" is the legacy default stream, where `fill_later`
    queues fake kernels. Asked for a capsule on another stream, it first
    waits for its own work, as the DLPack stream contract requires. Its
    memory is unmapped as soon as the object is unreachable and every capsule
    it exported has been deleted, so a consumer that deleted a capsule before
    its copy completed would read unmapped memory.
    """

    def __init__(self, standin, array, device=0, **overrides):
        array = np.ascontiguousarray(array)
        self.standin = standin
        self.address = standin.malloc(device, max(array.nbytes, 1))
        standin.write(self.address, array.ctypes.data, array.nbytes)
        super().__init__(np.empty(array.shape, array.dtype), data=self.address,
                         device=(2, device), **overrides)
        self.exported = 0

    def __dlpack__(self, **kwargs):
        stream = kwargs.get("stream")
        if stream is not None and stream != LEGACY_STREAM:
            self.standin.synchronize(None)
        capsule = super().__dlpack__(**kwargs)
        self.exported += 1
        _EXPORTED.add(self)
        return capsule

    def _on_delete(self, managed):
        super()._on_delete(managed)
        self.exported -= 1
        if self.exported == 0:
            _EXPORTED.discard(self)

    def __del__(self):
        self.standin.free(self.address)

    def fill_later(self, value: int, delay_us: int) -> None:
        """Queue a fake kernel setting every byte to `value` after `delay_us`."""
        self.standin.enqueue_fill(None, self.address, value, self.array.nbytes, delay_us)

    def read(self) -> np.ndarray:
        out = np.empty_like(self.array)
        self.standin.synchronize(None)
        self.standin.read(out.ctypes.data, self.address, out.nbytes)
        return out


# -- the DLPack C exchange API, as torch >= 2.10 publishes it ------------------

class _ExchangeAPIHeader(ctypes.Structure):
    _fields_ = [("version", DLPackVersion), ("prev_api", ctypes.c_void_p)]


_FROM_PY_OBJECT = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(DLTensor))
_CURRENT_WORK_STREAM = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int32, ctypes.c_int32,
                                        ctypes.POINTER(ctypes.c_void_p))


class _ExchangeAPI(ctypes.Structure):
    _fields_ = [("header", _ExchangeAPIHeader),
                ("managed_tensor_allocator", ctypes.c_void_p),
                ("managed_tensor_from_py_object_no_sync", ctypes.c_void_p),
                ("managed_tensor_to_py_object_no_sync", ctypes.c_void_p),
                ("dltensor_from_py_object_no_sync", _FROM_PY_OBJECT),
                ("current_work_stream", _CURRENT_WORK_STREAM)]


# The "current stream" of each device for exchange producers (0: the legacy
# default stream, where DeviceArray.fill_later queues its fake kernels).
CURRENT_STREAMS: dict = {}


def _from_py_object(address, out):
    x = ctypes.cast(address, ctypes.py_object).value
    x.exchange_calls += 1
    if x.refuse_exchange:
        return -1
    tensor, arrays = x.dltensor()
    x._keep.append(arrays)  # valid while `x` lives, as the API promises
    out[0] = tensor
    return 0


def _current_work_stream(device_type, device_id, out):
    out[0] = CURRENT_STREAMS.get(device_id, 0)
    return 0


_API = _ExchangeAPI(_ExchangeAPIHeader(DLPackVersion(1, 3), None), None, None, None,
                    _FROM_PY_OBJECT(_from_py_object), _CURRENT_WORK_STREAM(_current_work_stream))
_API_NAME = ctypes.create_string_buffer(b"dlpack_exchange_api")  # capsules keep the pointer


class ExchangeDeviceArray(DeviceArray):
    """A DeviceArray whose type also publishes the DLPack C exchange API, as
    torch tensors do: to_numpy reads it with no Python-level DLPack call
    (``requests`` stays empty) and orders the copy on ``CURRENT_STREAMS``.
    ``refuse_exchange=True`` makes the API fail, as for a tensor it cannot
    describe."""

    __dlpack_c_exchange_api__ = pythonapi.PyCapsule_New(ctypes.addressof(_API), _API_NAME,
                                                        _DESTRUCTOR())  # no destructor

    def __init__(self, standin, array, device=0, *, refuse_exchange=False, **overrides):
        super().__init__(standin, array, device, **overrides)
        self.exchange_calls = 0
        self.refuse_exchange = refuse_exchange


def values(shape, dtype="float32", seed=0):
    """Reproducible random values of `shape` and `dtype`."""
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)

"""A DLPack producer written with ctypes, to drive the consumer rules from tests.

It builds DLManagedTensor(Versioned) structs over a NumPy buffer and hands
them out in capsules, counting every deleter call, so that tests can break any
field of the contract on purpose.
"""

from __future__ import annotations

import ctypes

import numpy as np

c_int64_p = ctypes.POINTER(ctypes.c_int64)


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", DLDataType),
        ("shape", c_int64_p),
        ("strides", c_int64_p),
        ("byte_offset", ctypes.c_uint64),
    ]


class DLManagedTensor(ctypes.Structure):
    pass


LEGACY_DELETER = ctypes.CFUNCTYPE(None, ctypes.POINTER(DLManagedTensor))
DLManagedTensor._fields_ = [
    ("dl_tensor", DLTensor),
    ("manager_ctx", ctypes.c_void_p),
    ("deleter", LEGACY_DELETER),
]


class DLPackVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class DLManagedTensorVersioned(ctypes.Structure):
    pass


VERSIONED_DELETER = ctypes.CFUNCTYPE(None, ctypes.POINTER(DLManagedTensorVersioned))
DLManagedTensorVersioned._fields_ = [
    ("version", DLPackVersion),
    ("manager_ctx", ctypes.c_void_p),
    ("deleter", VERSIONED_DELETER),
    ("flags", ctypes.c_uint64),
    ("dl_tensor", DLTensor),
]

READ_ONLY = 1

_api = ctypes.pythonapi
_DESTRUCTOR = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_api.PyCapsule_New.restype = ctypes.py_object
_api.PyCapsule_New.argtypes = [ctypes.c_void_p, ctypes.c_char_p, _DESTRUCTOR]
_api.PyCapsule_IsValid.restype = ctypes.c_int
_api.PyCapsule_IsValid.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_api.PyCapsule_GetPointer.restype = ctypes.c_void_p
_api.PyCapsule_GetPointer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
_api.PyCapsule_GetName.restype = ctypes.c_char_p
_api.PyCapsule_GetName.argtypes = [ctypes.py_object]

_TYPE_CODES = {"i": 0, "u": 1, "f": 2, "c": 5, "b": 6}


def capsule_name(capsule) -> str:
    return _api.PyCapsule_GetName(capsule).decode()


class Producer:
    """One tensor over `array`'s memory; each __dlpack__ call makes a capsule.

    Keyword arguments override what goes into the struct: version, flags,
    ndim, shape, strides (None: NULL), byte_offset, data (None: NULL), dtype
    (code, bits, lanes), device (type, id). `versioned=False` makes a legacy
    producer that rejects max_version like pre-1.0 libraries.
    """

    def __init__(self, array: np.ndarray, *, versioned=True, **overrides):
        self.array = array
        self.versioned = versioned
        self.overrides = overrides
        self.deleted = 0
        self.requests = []
        self._keep = []

    def __dlpack_device__(self):
        return self.overrides.get("device", (1, 0))

    def __dlpack__(self, **kwargs):
        self.requests.append(kwargs)
        if not self.versioned and kwargs:
            raise TypeError("__dlpack__() got an unexpected keyword argument")
        return self.capsule(versioned=self.versioned and "max_version" in kwargs)

    def dltensor(self):
        """The DLTensor this producer describes, and what must outlive it."""
        a, o = self.array, self.overrides
        shape_value = o.get("shape", a.shape)
        strides_value = o.get("strides", tuple(s // a.itemsize for s in a.strides))
        shape = (ctypes.c_int64 * max(len(shape_value), 1))(*shape_value)
        strides = None if strides_value is None else (
            ctypes.c_int64 * max(len(strides_value), 1))(*strides_value)
        code = _TYPE_CODES[a.dtype.kind]
        dtype = DLDataType(*o.get("dtype", (code, a.itemsize * 8, 1)))
        data = o.get("data", a.__array_interface__["data"][0])
        tensor = DLTensor(
            data, DLDevice(*o.get("device", (1, 0))), o.get("ndim", a.ndim), dtype,
            ctypes.cast(shape, c_int64_p),
            None if strides is None else ctypes.cast(strides, c_int64_p),
            o.get("byte_offset", 0),
        )
        return tensor, (shape, strides)

    def capsule(self, versioned=True):
        tensor, arrays = self.dltensor()
        o = self.overrides
        if versioned:
            managed = DLManagedTensorVersioned()
            managed.version = DLPackVersion(*o.get("version", (1, 1)))
            managed.flags = o.get("flags", 0)
            managed.deleter = deleter = VERSIONED_DELETER(self._on_delete)
            name = b"dltensor_versioned"
        else:
            managed = DLManagedTensor()
            managed.deleter = deleter = LEGACY_DELETER(self._on_delete)
            name = b"dltensor"
        managed.dl_tensor = tensor
        # The producer's capsule destructor frees the tensor only when nobody
        # consumed it (the consumer renames it).
        destructor = _DESTRUCTOR(lambda ptr: self._on_capsule_free(ptr, name))
        self._keep.append((arrays, managed, deleter, destructor))
        return _api.PyCapsule_New(ctypes.addressof(managed), name, destructor)

    def _on_capsule_free(self, ptr, name):
        if _api.PyCapsule_IsValid(ptr, name):
            self._on_delete(None)

    def _on_delete(self, _managed):
        self.deleted += 1

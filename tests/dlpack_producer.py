"""A DLPack producer written with ctypes, to drive the consumer rules from tests.

It builds DLManagedTensor(Versioned) structs over a NumPy buffer and hands
them out in capsules, counting every deleter call, so that tests can break any
field of the contract on purpose.
"""

from __future__ import annotations

import ctypes
import weakref

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


# What a capsule or a consumer may still call back into, and the struct it
# points at, are kept here rather than by the producer: a capsule, or an array
# viewing a consumed tensor, can outlive the producer that made it (both
# garbage in one reference cycle, freed in any order), and then called a freed
# ctypes callback. An entry lives until its deleter runs (or its unconsumed
# capsule is freed), then as long as its producer, as the struct would.
_PENDING: dict = {}  # address of a managed struct -> (producer, what must outlive it)
_MADE_BY = weakref.WeakValueDictionary()  # address -> producer: a second deleter call counts


def _release(address):
    entry = _PENDING.pop(address, None)
    producer = entry[0] if entry is not None else _MADE_BY.get(address)
    if producer is None:
        return
    if entry is not None:
        producer._keep.append(entry[1])
    producer._on_delete(None)


def _capsule_freed(capsule):
    # Only a capsule nobody consumed still has its name (a consumer renames it).
    for name in (b"dltensor_versioned", b"dltensor"):
        if _api.PyCapsule_IsValid(capsule, name):
            _release(_api.PyCapsule_GetPointer(capsule, name))
            return


_VERSIONED_DELETER = VERSIONED_DELETER(lambda m: _release(ctypes.addressof(m.contents)))
_LEGACY_DELETER = LEGACY_DELETER(lambda m: _release(ctypes.addressof(m.contents)))
_CAPSULE_FREED = _DESTRUCTOR(_capsule_freed)


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

    def managed(self):
        """A DLManagedTensorVersioned (kept alive here) for a consumer that
        takes it without a capsule (the C exchange API); its deleter counts."""
        tensor, arrays = self.dltensor()
        managed = DLManagedTensorVersioned()
        managed.version = DLPackVersion(*self.overrides.get("version", (1, 1)))
        managed.flags = self.overrides.get("flags", 0)
        managed.deleter = _VERSIONED_DELETER
        managed.dl_tensor = tensor
        self._pending(managed, arrays)
        return managed

    def _pending(self, managed, arrays):
        address = ctypes.addressof(managed)
        _PENDING[address] = (self, (arrays, managed))
        _MADE_BY[address] = self

    def capsule(self, versioned=True):
        tensor, arrays = self.dltensor()
        o = self.overrides
        if versioned:
            managed = DLManagedTensorVersioned()
            managed.version = DLPackVersion(*o.get("version", (1, 1)))
            managed.flags = o.get("flags", 0)
            managed.deleter = _VERSIONED_DELETER
            name = b"dltensor_versioned"
        else:
            managed = DLManagedTensor()
            managed.deleter = _LEGACY_DELETER
            name = b"dltensor"
        managed.dl_tensor = tensor
        self._pending(managed, arrays)
        # The capsule's destructor frees the tensor only when nobody consumed
        # it (the consumer renames it).
        return _api.PyCapsule_New(ctypes.addressof(managed), name, _CAPSULE_FREED)

    def _on_delete(self, _managed):
        self.deleted += 1


# -- the DLPack C exchange API (__dlpack_c_exchange_api__ on the type) ------------

_DLTENSOR_FROM = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.POINTER(DLTensor))
_MANAGED_FROM = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p,
                                 ctypes.POINTER(ctypes.POINTER(DLManagedTensorVersioned)))


class _ExchangeApi(ctypes.Structure):
    _fields_ = [
        ("version", DLPackVersion),
        ("prev_api", ctypes.c_void_p),
        ("managed_tensor_allocator", ctypes.c_void_p),
        ("managed_tensor_from_py_object_no_sync", _MANAGED_FROM),
        ("managed_tensor_to_py_object_no_sync", ctypes.c_void_p),
        ("dltensor_from_py_object_no_sync", _DLTENSOR_FROM),
        ("current_work_stream", ctypes.c_void_p),
    ]


def _producer_of(address):
    return ctypes.cast(ctypes.c_void_p(address), ctypes.py_object).value.producer


def _dltensor_from(address, out):
    tensor, arrays = (producer := _producer_of(address)).dltensor()
    producer._keep.append(arrays)
    out[0] = tensor
    return 0


def _managed_from(address, out):
    out[0] = ctypes.pointer(_producer_of(address).managed())
    return 0


_CALLBACKS = (_MANAGED_FROM(_managed_from), _DLTENSOR_FROM(_dltensor_from))
# A capsule keeps a pointer to its name, not a copy: the name must live as long.
_EXCHANGE_API_NAME = ctypes.create_string_buffer(b"dlpack_exchange_api")
_TABLES = []  # every table made lives as long as the process (types keep their capsules)


def exchange_api_capsule(version=(1, 3)):
    """A `__dlpack_c_exchange_api__` capsule over a table of that version."""
    table = _ExchangeApi(DLPackVersion(*version), None, None, _CALLBACKS[0], None,
                         _CALLBACKS[1], None)
    _TABLES.append(table)
    return _api.PyCapsule_New(ctypes.addressof(table),
                              ctypes.cast(_EXCHANGE_API_NAME, ctypes.c_char_p), _DESTRUCTOR(0))


class ExchangeProducer:
    """A CPU producer that publishes the C exchange API, as torch does, over a
    `Producer` (keyword arguments as there: flags=READ_ONLY, ...); its
    `__dlpack__` is the same producer's, for the Python route."""

    __dlpack_c_exchange_api__ = exchange_api_capsule()

    def __init__(self, array: np.ndarray, **overrides):
        self.producer = Producer(array, **overrides)

    def __dlpack_device__(self):
        return self.producer.__dlpack_device__()

    def __dlpack__(self, **kwargs):
        return self.producer.__dlpack__(**kwargs)

#include "dlpack_import.h"

#include <cstdint>
#include <string>

#include "dtypes.h"
#include "python_helpers.h"

namespace tensorbridge {
namespace {

PyTypeObject* g_capsule_memory_type = nullptr;

using namespace dlpack;

constexpr const char* kOwnerName = "tensorbridge.dlpack_owner";
constexpr const char* kVersionedOwnerName = "tensorbridge.dlpack_owner_versioned";

// The owner capsules hand the managed tensor back to its producer when the
// array that uses it is freed. Capsule destructors run with the GIL held, but
// possibly while an exception propagates (an array dropped during unwinding):
// the producer's deleter may run Python code, so the pending exception is set
// aside around it and restored after.
template <class Managed>
void release(PyObject* owner, const char* name) {
  PyObject *type, *value, *traceback;
  PyErr_Fetch(&type, &value, &traceback);
  auto* managed = static_cast<Managed*>(PyCapsule_GetPointer(owner, name));
  if (managed != nullptr && managed->deleter != nullptr) managed->deleter(managed);
  PyErr_Restore(type, value, traceback);
}

void release_legacy(PyObject* owner) { release<DLManagedTensor>(owner, kOwnerName); }
void release_versioned(PyObject* owner) {
  release<DLManagedTensorVersioned>(owner, kVersionedOwnerName);
}

}  // namespace

PyObject* owner_of(DLManagedTensorVersioned* managed) {
  PyObject* owner = PyCapsule_New(managed, kVersionedOwnerName, release_versioned);
  if (owner == nullptr && managed->deleter != nullptr) managed->deleter(managed);
  return owner;
}

namespace {

std::string int64_overflow(const std::string& what) {
  return what +
         " overflows int64, so its bytes have no address; the producer's tensor is "
         "malformed (ask the producer for a compact copy)";
}

// Every byte a sound tensor reaches has an address: its element count, the
// byte size of each stride, and the lowest and highest byte offsets its
// shape reaches from data + byte_offset fit int64 (NumPy's npy_intp, the
// device copy's offsets), and those addresses do not wrap. An empty tensor
// reaches nothing, but its strides must still fit NumPy's.
std::string extent_violation(const DLTensor& t, bool empty) {
  const int64_t itemsize = (static_cast<int64_t>(t.dtype.bits) * t.dtype.lanes + 7) / 8;
  int64_t elements = 1;
  for (int i = 0; i < t.ndim; ++i) {
    if (__builtin_mul_overflow(elements, t.shape[i], &elements)) {
      return int64_overflow("the element count of dimensions 0.." + std::to_string(i));
    }
  }
  int64_t bytes = 0;
  if (__builtin_mul_overflow(elements, itemsize, &bytes)) {
    return int64_overflow(std::to_string(elements) + " elements of " + std::to_string(itemsize) +
                          " bytes");
  }
  int64_t low = 0, high = 0;  // byte offsets of the extreme elements reached
  if (t.strides != nullptr) {
    for (int i = 0; i < t.ndim; ++i) {
      int64_t step = 0, reach = 0;
      if (__builtin_mul_overflow(t.strides[i], itemsize, &step)) {
        return int64_overflow("stride " + std::to_string(t.strides[i]) + " of dimension " +
                              std::to_string(i) + ", scaled by " + std::to_string(itemsize) +
                              " bytes per element,");
      }
      if (empty) continue;
      if (__builtin_mul_overflow(t.shape[i] - 1, step, &reach) ||
          __builtin_add_overflow(reach < 0 ? low : high, reach, reach < 0 ? &low : &high)) {
        return int64_overflow("the byte offset that dimension " + std::to_string(i) +
                              " reaches (shape " + std::to_string(t.shape[i]) + " x stride " +
                              std::to_string(t.strides[i]) + " x " + std::to_string(itemsize) +
                              " bytes)");
      }
    }
  } else if (!empty) {
    high = bytes - itemsize;
  }
  if (empty || t.data == nullptr) return {};
  const uint64_t start = reinterpret_cast<uintptr_t>(t.data);
  const uint64_t below = uint64_t{0} - static_cast<uint64_t>(low);  // |low|, even for INT64_MIN
  uint64_t origin = 0, first = 0, last = 0, end = 0;
  if (t.byte_offset > static_cast<uint64_t>(INT64_MAX) ||
      __builtin_add_overflow(start, t.byte_offset, &origin) ||
      __builtin_sub_overflow(origin, below, &first) ||
      __builtin_add_overflow(origin, static_cast<uint64_t>(high), &last) ||
      __builtin_add_overflow(last, static_cast<uint64_t>(itemsize), &end)) {
    return "data + byte_offset (" + std::to_string(start) + " + " + std::to_string(t.byte_offset) +
           ") and the strides reach past the address space; " +
           "the producer's tensor is malformed (ask the producer for a compact copy)";
  }
  return {};
}

}  // namespace

std::string contract_violation(const DLTensor& t) {
  if (t.ndim < 0 || t.ndim > numpy_max_dims()) {
    return "ndim=" + std::to_string(t.ndim) + " is outside [0, " +
           std::to_string(numpy_max_dims()) + "]";
  }
  if (t.ndim > 0 && t.shape == nullptr) return "shape is NULL with ndim=" + std::to_string(t.ndim);
  bool empty = false;
  for (int i = 0; i < t.ndim; ++i) {
    if (t.shape[i] < 0) {
      return "shape[" + std::to_string(i) + "]=" + std::to_string(t.shape[i]) + " is negative";
    }
    empty = empty || t.shape[i] == 0;
  }
  if (t.data == nullptr && !empty) return "data is NULL for a non-empty tensor";
  return extent_violation(t, empty);
}

bool is_row_major(const DLTensor& t) {
  if (t.strides == nullptr) return true;
  for (int i = 0; i < t.ndim; ++i) {
    if (t.shape[i] == 0) return true;
  }
  int64_t step = 1;
  for (int i = t.ndim - 1; i >= 0; --i) {
    if (t.shape[i] != 1 && t.strides[i] != step) return false;
    step *= t.shape[i];
  }
  return true;
}

ViewStatus view_dltensor(const DLTensor& t, bool writeable, PyObject* base, PyObject** out) {
  if (!cpu_readable(t.device.device_type) || t.ndim < 0 || t.ndim > NPY_MAXDIMS) {
    return ViewStatus::kUnsupported;
  }
  PyArray_Descr* descr = descr_for(t.dtype);
  if (descr == nullptr) return ViewStatus::kUnsupported;

  const npy_intp itemsize = PyDataType_ELSIZE(descr);
  npy_intp shape[NPY_MAXDIMS];
  npy_intp strides[NPY_MAXDIMS];
  npy_intp row_major = itemsize;
  for (int i = t.ndim - 1; i >= 0; --i) {
    shape[i] = static_cast<npy_intp>(t.shape[i]);
    // contract_violation has checked these products; checked again here,
    // for callers that did not ask it.
    bool overflow = false;
    if (t.strides == nullptr) {  // NULL strides mean compact row-major
      strides[i] = row_major;
      overflow = __builtin_mul_overflow(row_major, shape[i] > 0 ? shape[i] : 1, &row_major);
    } else {
      overflow = __builtin_mul_overflow(static_cast<npy_intp>(t.strides[i]), itemsize, &strides[i]);
    }
    if (overflow) {
      Py_DECREF(descr);
      PyErr_Format(PyExc_BufferError,
                   "to_numpy: the byte stride of dimension %d (shape %lld, stride %lld) "
                   "overflows int64; the producer's tensor is malformed",
                   i, static_cast<long long>(t.shape[i]),
                   static_cast<long long>(t.strides ? t.strides[i] : 0));
      return ViewStatus::kError;
    }
  }
  char* data = static_cast<char*>(t.data);
  if (data != nullptr) data += t.byte_offset;

  // An empty tensor may have no memory at all (data == NULL); NumPy then
  // allocates a placeholder, exactly as for Tensor.numpy().

  PyObject* array = PyArray_NewFromDescr(&PyArray_Type, descr /* stolen */, t.ndim, shape, strides,
                                         data, writeable ? NPY_ARRAY_WRITEABLE : 0, nullptr);
  if (array == nullptr) return ViewStatus::kError;
  // NumPy ignores the flags when it allocates (data == NULL): read-only still.
  if (!writeable) PyArray_CLEARFLAGS(reinterpret_cast<PyArrayObject*>(array), NPY_ARRAY_WRITEABLE);
  Py_INCREF(base);
  if (PyArray_SetBaseObject(reinterpret_cast<PyArrayObject*>(array), base) < 0) {
    Py_DECREF(array);
    return ViewStatus::kError;
  }
  *out = array;
  return ViewStatus::kOk;
}

namespace {

// A consumed capsule: `owner` (a new reference) holds the managed tensor and
// calls its deleter when dropped; `tensor` points into it.
struct Taken {
  PyObject* owner = nullptr;  // nullptr: a Python error is set
  const DLTensor* tensor = nullptr;
  bool writeable = true;
};

PyObject* refuse(PyObject* type, const std::string& why) {
  PyErr_Format(type, "to_numpy: cannot import this DLPack tensor: %s", why.c_str());
  return nullptr;
}

Taken take_capsule(PyObject* capsule) {
  Taken taken;
  if (PyCapsule_IsValid(capsule, kVersionedCapsuleName)) {
    auto* managed = static_cast<DLManagedTensorVersioned*>(
        PyCapsule_GetPointer(capsule, kVersionedCapsuleName));
    // Renamed before anything else, so that the capsule's own destructor
    // never calls the deleter a second time.
    if (PyCapsule_SetName(capsule, kVersionedCapsuleNameUsed) < 0) return taken;
    if (managed->version.major != kMajorVersion) {
      const uint32_t major = managed->version.major;
      if (managed->deleter != nullptr) managed->deleter(managed);
      refuse(PyExc_BufferError,
             "its DLPack major version is " + std::to_string(major) +
                 ", tensorbridge reads version " + std::to_string(kMajorVersion) +
                 "; upgrade tensorbridge or ask the producer for an older version");
      return taken;
    }
    taken.owner = owner_of(managed);
    if (taken.owner == nullptr) return taken;
    taken.tensor = &managed->dl_tensor;
    taken.writeable = (managed->flags & kFlagReadOnly) == 0;
  } else if (PyCapsule_IsValid(capsule, kCapsuleName)) {
    auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule, kCapsuleName));
    if (PyCapsule_SetName(capsule, kCapsuleNameUsed) < 0) return taken;
    taken.owner = PyCapsule_New(managed, kOwnerName, release_legacy);
    if (taken.owner == nullptr) {
      if (managed->deleter != nullptr) managed->deleter(managed);
      return taken;
    }
    taken.tensor = &managed->dl_tensor;
  } else {
    PyErr_Clear();
    if (!PyCapsule_CheckExact(capsule)) {
      PyErr_Format(PyExc_TypeError, "to_numpy: expected a DLPack capsule, got %.200s",
                   Py_TYPE(capsule)->tp_name);
      return taken;
    }
    const char* name = PyCapsule_GetName(capsule);
    PyErr_Clear();
    PyErr_Format(PyExc_BufferError,
                 "to_numpy: expected a capsule named 'dltensor_versioned' or 'dltensor', got "
                 "'%.200s' (a capsule named 'used_...' was already consumed: call __dlpack__ "
                 "again for a fresh one)",
                 name ? name : "NULL");
    return taken;
  }
  // From here on `owner` holds the tensor: dropping it calls the deleter.
  const std::string broken = contract_violation(*taken.tensor);
  if (!broken.empty()) {
    Py_CLEAR(taken.owner);
    refuse(PyExc_BufferError, broken);
  }
  return taken;
}

}  // namespace

PyObject* array_from_capsule(PyObject* capsule) {
  Taken taken = take_capsule(capsule);
  if (taken.owner == nullptr) return nullptr;
  PyObject* array = nullptr;
  const ViewStatus status = view_dltensor(*taken.tensor, taken.writeable, taken.owner, &array);
  const DLTensor t = *taken.tensor;
  Py_DECREF(taken.owner);  // on success the array holds its own reference
  if (status != ViewStatus::kUnsupported) return array;
  if (!cpu_readable(t.device.device_type)) {
    return refuse(PyExc_BufferError,
                  "its memory is on DLPack device type " + std::to_string(t.device.device_type) +
                      ", which the CPU cannot read; ask the producer for a CPU copy");
  }
  return refuse(PyExc_TypeError, "its element type " + dtype_name(t.dtype) +
                                     " has no NumPy dtype; convert it in the producer first "
                                     "(bfloat16 and float8 need ml_dtypes >= 0.5)");
}

PyObject* describe_capsule(PyObject* capsule) {
  Taken taken = take_capsule(capsule);
  if (taken.owner == nullptr) return nullptr;
  const DLTensor& t = *taken.tensor;
  PyObject* shape = PyTuple_New(t.ndim);
  const bool strided = !is_row_major(t);
  PyObject* strides = strided ? PyTuple_New(t.ndim) : (Py_INCREF(Py_None), Py_None);
  for (int i = 0; i < t.ndim && shape && strides; ++i) {
    PyTuple_SET_ITEM(shape, i, PyLong_FromLongLong(t.shape[i]));
    if (strided) PyTuple_SET_ITEM(strides, i, PyLong_FromLongLong(t.strides[i]));
  }
  PyObject* descr = reinterpret_cast<PyObject*>(descr_for(t.dtype));
  if (descr == nullptr) descr = (Py_INCREF(Py_None), Py_None);
  const auto address = reinterpret_cast<uintptr_t>(t.data) + t.byte_offset;
  PyObject* items =
      Py_BuildValue("(NiiKNNNs)", taken.owner, static_cast<int>(t.device.device_type),
                    static_cast<int>(t.device.device_id), static_cast<unsigned long long>(address),
                    shape, strides, descr, dtype_name(t.dtype).c_str());
  PyObject* result = items == nullptr ? nullptr : PyStructSequence_New(g_capsule_memory_type);
  for (Py_ssize_t i = 0; result != nullptr && i < PyTuple_GET_SIZE(items); ++i) {
    PyObject* item = PyTuple_GET_ITEM(items, i);
    Py_INCREF(item);
    PyStructSequence_SetItem(result, i, item);
  }
  Py_XDECREF(items);
  return result;
}

bool add_capsule_types(PyObject* module) {
  static PyStructSequence_Field fields[] = {
      {"owner", "keeps the memory alive; calls the producer's deleter when dropped"},
      {"device_type", "the DLPack device type"},
      {"device", "the device id"},
      {"address", "the address of the first element"},
      {"shape", "the shape"},
      {"strides", "the strides in elements, or None when compact row-major"},
      {"dtype", "the NumPy dtype, or None when NumPy has none"},
      {"dtype_name", "a readable name of the element type"},
      {nullptr, nullptr}};
  static PyStructSequence_Desc desc = {"tensorbridge._core.CapsuleMemory",
                                       "Where a consumed DLPack capsule's memory is.", fields, 8};
  g_capsule_memory_type = add_struct_sequence(module, &desc);
  return g_capsule_memory_type != nullptr;
}

}  // namespace tensorbridge

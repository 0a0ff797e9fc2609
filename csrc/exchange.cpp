#include "exchange.h"

#include <new>
#include <string>

#include "cuda_driver.h"
#include "dlpack.h"
#include "dlpack_import.h"
#include "dtypes.h"
#include "interrupt.h"
#include "transfer.h"

namespace tensorbridge {
namespace {

using namespace dlpack;

PyObject* g_fallback = nullptr;  // strong reference, set once at import
PyObject* g_driver_error = PyExc_RuntimeError;  // the type a driver failure raises
bool g_fast_path = true;
bool g_exchange_api = true;
// torch dtypes that Tensor.numpy() accepts (strong references, looked up with
// the first torch type seen; torch dtypes are singletons, compared by
// identity). torch reports its sub-byte integer dtypes (int1-int7,
// uint1-uint7) to DLPack as 8-bit integers, so those two are also kept apart.
constexpr const char* kNumpyNativeTorchDtypes[] = {
    "int8", "uint8", "bool", "int16", "int32", "int64", "uint16", "uint32", "uint64",
    "float16", "float32", "float64", "complex64", "complex128"};
constexpr int kNumpyNativeCount = sizeof(kNumpyNativeTorchDtypes) / sizeof(const char*);
PyObject* g_numpy_native[kNumpyNativeCount] = {};
PyObject*& g_torch_int8 = g_numpy_native[0];
PyObject*& g_torch_uint8 = g_numpy_native[1];

bool load_torch_dtypes(PyObject* torch) {
  if (g_numpy_native[0] != nullptr) return true;
  for (int i = 0; i < kNumpyNativeCount; ++i) {
    g_numpy_native[i] = PyObject_GetAttrString(torch, kNumpyNativeTorchDtypes[i]);
    if (g_numpy_native[i] == nullptr) {
      for (int j = 0; j < i; ++j) Py_CLEAR(g_numpy_native[j]);
      return false;
    }
  }
  return true;
}

bool is_numpy_native(PyObject* torch_dtype) {
  for (PyObject* native : g_numpy_native) {
    if (native == torch_dtype) return true;
  }
  return false;
}

// A question put to a torch tensor: a no-argument method (is_neg(),
// is_conj(), untyped_storage()) or an attribute (requires_grad). Resolved
// once per type to torch's own C implementation, which the call then reaches
// directly, skipping Python's attribute lookup (a third of the fast path's
// time); a type that overrides it in Python gets the generic call.
struct TorchQuery {
  PyObject* name = nullptr;  // interned, immortal for us
  bool is_method = false;
  PyCFunction method = nullptr;  // METH_NOARGS implementation, or nullptr
  getter get = nullptr;          // getset implementation, or nullptr
  void* closure = nullptr;

  // The answer (new reference), or nullptr with a Python error set.
  PyObject* call(PyObject* x) const {
    return method != nullptr ? method(x, nullptr)
           : get != nullptr  ? get(x, closure)
           : is_method ? PyObject_VectorcallMethod(name, &x, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                                   nullptr)
                       : PyObject_GetAttr(x, name);
  }

  // 1 or 0; -1 with a Python error set.
  int ask(PyObject* x) const {
    PyObject* answer = call(x);
    if (answer == nullptr) return -1;
    const int truth = PyObject_IsTrue(answer);
    Py_DECREF(answer);
    return truth;
  }
};

TorchQuery resolve_query(PyTypeObject* type, PyObject* name, bool is_method) {
  TorchQuery query;
  query.name = name;
  query.is_method = is_method;
  PyObject* descriptor = PyObject_GetAttr(reinterpret_cast<PyObject*>(type), name);
  if (descriptor != nullptr && is_method && Py_IS_TYPE(descriptor, &PyMethodDescr_Type)) {
    PyMethodDef* def = reinterpret_cast<PyMethodDescrObject*>(descriptor)->d_method;
    if ((def->ml_flags & ~(METH_CLASS | METH_STATIC | METH_COEXIST)) == METH_NOARGS) {
      query.method = def->ml_meth;
    }
  } else if (descriptor != nullptr && !is_method &&
             Py_IS_TYPE(descriptor, &PyGetSetDescr_Type)) {
    PyGetSetDef* def = reinterpret_cast<PyGetSetDescrObject*>(descriptor)->d_getset;
    query.get = def->get;
    query.closure = def->closure;
  }
  Py_XDECREF(descriptor);  // the definitions are static in torch: they outlive it
  PyErr_Clear();
  return query;
}

// What we learnt about a Python type: whether it publishes the exchange API
// and whether it is a torch tensor (whose conj/neg bits and autograd state
// the exchange API does not report, so they are asked). Types are held by a
// strong reference so that a cached address can never be reused by another
// type. All guarded by the GIL.
struct TypeInfo {
  PyTypeObject* type;
  const DLPackExchangeAPI* api;  // nullptr: no usable exchange API
  bool is_torch;
  TorchQuery is_neg, is_conj, requires_grad, untyped_storage;  // set for torch types
};
constexpr int kTypeCacheSize = 16;
TypeInfo g_types[kTypeCacheSize];
int g_type_count = 0;

PyObject* intern(const char* text) {
  PyObject* s = PyUnicode_InternFromString(text);
  if (s == nullptr) Py_FatalError("tensorbridge: out of memory interning a name");
  return s;
}

// The exchange API a type publishes, if it is one we can call.
const DLPackExchangeAPI* exchange_api_of(PyTypeObject* type) {
  static PyObject* api_name = intern("__dlpack_c_exchange_api__");
  PyObject* capsule = PyObject_GetAttr(reinterpret_cast<PyObject*>(type), api_name);
  if (capsule == nullptr) {
    PyErr_Clear();
    return nullptr;
  }
  auto* api = static_cast<const DLPackExchangeAPI*>(
      PyCapsule_IsValid(capsule, kExchangeApiCapsuleName)
          ? PyCapsule_GetPointer(capsule, kExchangeApiCapsuleName)
          : nullptr);
  // The capsule lives on the type, which the cache keeps alive: the pointer stays valid.
  Py_DECREF(capsule);
  const bool usable = api != nullptr && api->header.version.major == kMajorVersion &&
                      api->dltensor_from_py_object_no_sync != nullptr;
  return usable ? api : nullptr;
}

enum class TorchKind {
  kNotTorch,
  kPlain,     // torch.Tensor or a subclass whose memory is the tensor's own
  kDispatch,  // a subclass with its own __torch_dispatch__ (a wrapper,
              // FakeTensor, DTensor): the exchange API would hand out a
              // meaningless pointer, so Python copies it through torch
};

TorchKind torch_kind(PyTypeObject* type) {
  static PyObject* torch_name = intern("torch");
  static PyObject* tensor_name = intern("Tensor");
  static PyObject* dispatch_name = intern("__torch_dispatch__");
  // torch is necessarily imported when one of its tensors exists.
  PyObject* torch = PyImport_GetModule(torch_name);
  if (torch == nullptr) {
    PyErr_Clear();
    return TorchKind::kNotTorch;
  }
  TorchKind kind = TorchKind::kNotTorch;
  PyObject* tensor_type = PyObject_GetAttr(torch, tensor_name);
  if (tensor_type != nullptr && PyType_Check(tensor_type) &&
      PyType_IsSubtype(type, reinterpret_cast<PyTypeObject*>(tensor_type))) {
    PyObject* own = PyObject_GetAttr(reinterpret_cast<PyObject*>(type), dispatch_name);
    PyObject* inherited = PyObject_GetAttr(tensor_type, dispatch_name);
    // Without torch's dtypes the checks cannot run: treat it as not plain.
    const bool plain = own != nullptr && own == inherited && load_torch_dtypes(torch);
    kind = plain ? TorchKind::kPlain : TorchKind::kDispatch;
    Py_XDECREF(own);
    Py_XDECREF(inherited);
  }
  Py_XDECREF(tensor_type);
  Py_DECREF(torch);
  PyErr_Clear();
  return kind;
}

TypeInfo inspect_type(PyTypeObject* type) {
  switch (torch_kind(type)) {
    case TorchKind::kPlain: {
      static PyObject* is_neg = intern("is_neg");
      static PyObject* is_conj = intern("is_conj");
      static PyObject* requires_grad = intern("requires_grad");
      static PyObject* untyped_storage = intern("untyped_storage");
      return TypeInfo{type,
                      exchange_api_of(type),
                      true,
                      resolve_query(type, is_neg, true),
                      resolve_query(type, is_conj, true),
                      resolve_query(type, requires_grad, false),
                      resolve_query(type, untyped_storage, true)};
    }
    case TorchKind::kDispatch: return TypeInfo{type, nullptr, false};
    case TorchKind::kNotTorch: break;
  }
  return TypeInfo{type, exchange_api_of(type), false};
}

TypeInfo lookup_type(PyTypeObject* type) {
  for (int i = 0; i < g_type_count; ++i) {
    if (g_types[i].type == type) return g_types[i];
  }
  TypeInfo info = inspect_type(type);
  if (g_type_count < kTypeCacheSize) {  // beyond that, inspect each time
    Py_INCREF(type);
    g_types[g_type_count++] = info;
  }
  return info;
}

// What the arguments ask of the fast path: `x` alone, or with copy=None,
// True or False, out=None and stream=None or any stream (streams do not
// apply to CPU memory; a device copy with a stream is left to Python).
// Anything else, unknown keywords included, goes to Python.
enum class Request { kPython, kView, kCopy };

struct Arguments {
  Request request = Request::kView;
  bool copy_forbidden = false;  // copy=False
  bool stream_given = false;
};

Arguments classify(PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  Arguments parsed;
  if (PyVectorcall_NARGS(nargs) != 1) return {Request::kPython};
  const Py_ssize_t count = kwnames == nullptr ? 0 : PyTuple_GET_SIZE(kwnames);
  for (Py_ssize_t i = 0; i < count; ++i) {
    PyObject* name = PyTuple_GET_ITEM(kwnames, i);
    PyObject* value = args[1 + i];
    if (PyUnicode_CompareWithASCIIString(name, "copy") == 0) {
      if (value == Py_True) {
        parsed.request = Request::kCopy;
      } else if (value == Py_False) {
        parsed.copy_forbidden = true;
      } else if (value != Py_None) {
        return {Request::kPython};
      }
    } else if (PyUnicode_CompareWithASCIIString(name, "out") == 0) {
      if (value != Py_None) return {Request::kPython};
    } else if (PyUnicode_CompareWithASCIIString(name, "stream") == 0) {
      parsed.stream_given = value != Py_None;
    } else {
      return {Request::kPython};
    }
  }
  return parsed;
}

// Whether the exchange API's raw view of a torch tensor shows its values: it
// reports conj- and neg-bit tensors as their raw memory (the values would be
// silently wrong), and sub-byte integer dtypes as 8-bit ones.
bool torch_memory_is_plain(PyObject* x, const TypeInfo& info, const DLTensor& tensor) {
  static PyObject* dtype_name = intern("dtype");

  if ((tensor.dtype.code == kDLInt || tensor.dtype.code == kDLUInt) && tensor.dtype.bits == 8) {
    PyObject* dtype = PyObject_GetAttr(x, dtype_name);
    Py_XDECREF(dtype);  // torch dtypes are singletons that outlive us: compare by identity
    if (dtype != g_torch_int8 && dtype != g_torch_uint8) return false;
  }
  if (info.is_neg.ask(x) != 0) return false;
  return tensor.dtype.code != kDLComplex || info.is_conj.ask(x) == 0;
}

// The tensor Tensor.numpy() is asked for a view of: `x` itself, or a
// detached alias when `x` requires grad (which Tensor.numpy() refuses, and
// whose graph the view must not hold). New reference; nullptr on error.
PyObject* torch_view_base(PyObject* x, const TypeInfo& info) {
  static PyObject* detach = intern("detach");

  const int needs_grad = info.requires_grad.ask(x);
  if (needs_grad < 0) return nullptr;
  if (needs_grad == 0) {
    Py_INCREF(x);
    return x;
  }
  return PyObject_VectorcallMethod(detach, &x, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, nullptr);
}

// torch without the exchange API (< 2.10): Tensor.numpy() views exactly what
// a plain view is right for, and refuses the rest (conj/neg bits, devices,
// layouts), which the fallback then handles. A refusal costs a C++ exception
// (tens of microseconds), so the common ones, grad and dtype, are screened
// here first.
PyObject* numpy_method_view(PyObject* x, const TypeInfo& info) {
  static PyObject* numpy_name = intern("numpy");
  static PyObject* dtype_name = intern("dtype");

  PyObject* dtype = PyObject_GetAttr(x, dtype_name);
  Py_XDECREF(dtype);
  if (!is_numpy_native(dtype)) return nullptr;
  PyObject* base = torch_view_base(x, info);
  PyObject* array =
      base == nullptr ? nullptr
                      : PyObject_VectorcallMethod(numpy_name, &base,
                                                  1 | PY_VECTORCALL_ARGUMENTS_OFFSET, nullptr);
  // Recent torch makes the view's base a detached alias of its own, which
  // holds the storage whatever is later done to `x` (`x.data = ...`,
  // `x.set_(...)`). Where the base is `x` itself, the view is remade over the
  // same memory with the storage as its base.
  if (array != nullptr && base == x &&
      PyArray_BASE(reinterpret_cast<PyArrayObject*>(array)) == x) {
    PyObject* storage = info.untyped_storage.call(x);
    auto* tensor_view = reinterpret_cast<PyArrayObject*>(array);
    PyArray_Descr* descr = PyArray_DESCR(tensor_view);
    Py_INCREF(descr);
    PyObject* rebased =
        storage == nullptr
            ? nullptr
            : PyArray_NewFromDescr(&PyArray_Type, descr /* stolen */, PyArray_NDIM(tensor_view),
                                   PyArray_DIMS(tensor_view), PyArray_STRIDES(tensor_view),
                                   PyArray_DATA(tensor_view), NPY_ARRAY_WRITEABLE, nullptr);
    if (storage == nullptr) {
      Py_DECREF(descr);
    } else if (rebased == nullptr) {
      Py_DECREF(storage);
    } else if (PyArray_SetBaseObject(reinterpret_cast<PyArrayObject*>(rebased), storage) < 0) {
      Py_CLEAR(rebased);  // the storage reference was stolen all the same
    }
    Py_SETREF(array, rebased);
  }
  Py_XDECREF(base);
  return array;
}

// Reads `x` through its type's exchange API into `tensor`; false (no Python
// error set) when that is not possible, when the tensor breaks the DLPack
// contract (a torch ZeroTensor has NULL data: its zeros are not in memory)
// or when the raw memory of a torch tensor does not show its values. `wanted`, when given,
// picks the device types worth reading: others are refused before the torch
// questions are asked.
bool read_exchanged(PyObject* x, const TypeInfo& info, DLTensor* tensor,
                    bool (*wanted)(DLDeviceType) = nullptr) {
  if (info.api->dltensor_from_py_object_no_sync(x, tensor) != 0) {
    PyErr_Clear();
    return false;
  }
  if (wanted != nullptr && !wanted(tensor->device.device_type)) return false;
  if (!contract_violation(*tensor).empty()) return false;
  if (info.is_torch && !torch_memory_is_plain(x, info, *tensor)) {
    PyErr_Clear();
    return false;
  }
  return true;
}

bool is_cuda_memory(DLDeviceType type) { return type == kDLCUDA || type == kDLCUDAManaged; }

// What keeps the memory of CPU `tensor`, read from `x` through the exchange
// API, alive for as long as a view of it lives (new reference; nullptr, with
// no Python error set, when there is nothing safe). Not `x` itself: `x.data =
// ...` or `x.set_(...)` give a torch tensor other memory and free what it had.
// For torch, the tensor's storage, which holds the memory and no autograd
// graph; for other producers, the managed tensor the API hands out (whose
// deleter runs when the view dies), or `x` when the API has none.
PyObject* exchanged_memory_owner(PyObject* x, const TypeInfo& info, const DLTensor& tensor) {
  if (info.is_torch) {
    PyObject* storage = info.untyped_storage.call(x);
    if (storage == nullptr) PyErr_Clear();
    return storage;
  }
  if (info.api->managed_tensor_from_py_object_no_sync == nullptr) {
    Py_INCREF(x);
    return x;
  }
  DLManagedTensorVersioned* managed = nullptr;
  if (info.api->managed_tensor_from_py_object_no_sync(x, &managed) != 0 || managed == nullptr) {
    PyErr_Clear();
    return nullptr;
  }
  const DLTensor& owned = managed->dl_tensor;
  if (managed->version.major != kMajorVersion ||
      static_cast<char*>(owned.data) + owned.byte_offset !=
          static_cast<char*>(tensor.data) + tensor.byte_offset) {
    if (managed->deleter != nullptr) managed->deleter(managed);  // not the memory read
    return nullptr;
  }
  PyObject* owner = owner_of(managed);
  if (owner == nullptr) PyErr_Clear();
  return owner;
}

// A zero-copy view of CPU memory read through the exchange API, or nullptr
// (no Python error set) when NumPy cannot view it.
PyObject* view_exchanged(PyObject* x, const TypeInfo& info, const DLTensor& tensor) {
  if (tensor.device.device_type != kDLCPU) return nullptr;
  PyObject* owner = exchanged_memory_owner(x, info, tensor);
  PyObject* array = nullptr;
  if (owner != nullptr &&
      view_dltensor(tensor, /*writeable=*/true, owner, &array) != ViewStatus::kOk) {
    PyErr_Clear();
  }
  Py_XDECREF(owner);
  return array;
}

// CUDA memory of an exchange-API producer that one plain copy reads whole.
struct DeviceTensor {
  DeviceSpan span;
  void* stream;           // the producer's current stream on that device
  PyArray_Descr* descr;   // new reference
};

// Fills `out` when `tensor` is sound, compact row-major CUDA memory of an
// element type NumPy has, and the producer names its current stream; false
// (no Python error set) for whatever needs more than one plain copy.
bool device_tensor_of(const DLTensor& tensor, const DLPackExchangeAPI& api, DeviceTensor* out) {
  if (!is_cuda_memory(tensor.device.device_type) || api.current_work_stream == nullptr ||
      !contract_violation(tensor).empty() || !is_row_major(tensor)) {
    return false;
  }
  void* stream = nullptr;
  if (api.current_work_stream(kDLCUDA, tensor.device.device_id, &stream) != 0) {
    PyErr_Clear();
    return false;
  }
  PyArray_Descr* descr = descr_for(tensor.dtype);
  if (descr == nullptr) return false;
  size_t bytes = static_cast<size_t>(PyDataType_ELSIZE(descr));
  for (int i = 0; i < tensor.ndim; ++i) {
    // contract_violation checked the size; a product that overflows declines all the same
    if (__builtin_mul_overflow(bytes, static_cast<size_t>(tensor.shape[i]), &bytes)) {
      Py_DECREF(descr);
      return false;
    }
  }
  out->span = DeviceSpan{
      tensor.device.device_id,
      reinterpret_cast<cuda::CUdeviceptr>(static_cast<char*>(tensor.data) + tensor.byte_offset),
      bytes};
  out->stream = stream;
  out->descr = descr;
  return true;
}

// What the fast path did with memory in a CUDA device.
enum class DeviceCopy { kDeclined, kCopied, kFailed };

// Copies what device_tensor_of accepts into a new NumPy array, on the
// producer's current stream, with the GIL released: the same copy as the
// Python route, without its Python calls, so that a small tensor costs little
// more than the copy itself. Declines (no Python error set) the rest, which
// the Python route then handles.
DeviceCopy copy_exchanged(const DLTensor& tensor, const DLPackExchangeAPI& api, PyObject** out) {
  DeviceTensor device;
  if (!device_tensor_of(tensor, api, &device)) return DeviceCopy::kDeclined;
  npy_intp shape[NPY_MAXDIMS];
  for (int i = 0; i < tensor.ndim; ++i) shape[i] = static_cast<npy_intp>(tensor.shape[i]);
  PyObject* array = PyArray_NewFromDescr(&PyArray_Type, device.descr /* stolen */, tensor.ndim,
                                         shape, nullptr, nullptr, 0, nullptr);
  if (array == nullptr) return DeviceCopy::kFailed;

  void* destination = PyArray_DATA(reinterpret_cast<PyArrayObject*>(array));
  PyObject* error_type = nullptr;
  std::string error;
  bool interrupted = false;
  const InterruptCheck check = python_interrupt_check();
  Py_BEGIN_ALLOW_THREADS
  try {
    copy_to_host(device.span, static_cast<cuda::CUstream>(device.stream), destination,
                 /*dst_pinned=*/false, check);
  } catch (const CopyInterrupted&) {
    // KeyboardInterrupt is set. The copies still in flight write only into
    // staging blocks, which the pool keeps until they complete; the source is
    // the producer's, freed in stream order (torch's allocator) or after a
    // device synchronisation (cudaFree).
    interrupted = true;
  } catch (const cuda::DriverError& failure) {
    error_type = g_driver_error;
    error = failure.what();
  } catch (const std::bad_alloc&) {
    error_type = PyExc_MemoryError;
    error = "to_numpy: out of memory while staging a device copy";
  } catch (const std::exception& failure) {
    error_type = PyExc_RuntimeError;
    error = failure.what();
  }
  Py_END_ALLOW_THREADS
  if (interrupted) {
    Py_DECREF(array);
    return DeviceCopy::kFailed;
  }
  if (error_type != nullptr) {
    Py_DECREF(array);
    PyErr_SetString(error_type, error.c_str());
    return DeviceCopy::kFailed;
  }
  *out = array;
  return DeviceCopy::kCopied;
}

// The view of a type without a usable exchange API (or with it turned off):
// torch tensors through Tensor.numpy(), nothing for other types; nullptr with
// no Python error set when there is none.
PyObject* view_without_exchange(PyObject* x, const TypeInfo& info) {
  PyObject* array = info.is_torch ? numpy_method_view(x, info) : nullptr;
  if (array == nullptr) PyErr_Clear();
  return array;
}

}  // namespace

PyObject* describe_device(PyObject* x) {
  const TypeInfo info = PyArray_CheckExact(x) ? TypeInfo{} : lookup_type(Py_TYPE(x));
  DLTensor tensor;
  DeviceTensor device;
  if (info.api == nullptr || !g_exchange_api ||
      !read_exchanged(x, info, &tensor, is_cuda_memory) ||
      !device_tensor_of(tensor, *info.api, &device)) {
    Py_RETURN_NONE;
  }
  PyObject* shape = PyTuple_New(tensor.ndim);
  for (int i = 0; i < tensor.ndim && shape != nullptr; ++i) {
    PyTuple_SET_ITEM(shape, i, PyLong_FromLongLong(tensor.shape[i]));
  }
  return Py_BuildValue("(iKKNN)", device.span.device,
                       static_cast<unsigned long long>(reinterpret_cast<uintptr_t>(device.stream)),
                       static_cast<unsigned long long>(device.span.data), shape, device.descr);
}

PyObject* fast_view(PyObject* x, bool numpy_method) {
  const TypeInfo info = lookup_type(Py_TYPE(x));
  if (info.api == nullptr || !g_exchange_api) {
    return numpy_method ? view_without_exchange(x, info) : nullptr;
  }
  DLTensor tensor;
  return read_exchanged(x, info, &tensor) ? view_exchanged(x, info, tensor) : nullptr;
}

const char* const kToNumpyDoc =
    "to_numpy(x, *, copy=None, out=None, stream=None)\n--\n\n"
    "Convert a tensor or array-like to a NumPy array, without a copy when possible.\n\n"
    "A drop-in for ``Tensor.numpy()`` that always works: CPU tensors of every\n"
    "dtype (bfloat16 and float8 through ml_dtypes), tensors that require grad,\n"
    "conj/neg-bit tensors, sparse tensors, GPU tensors, any ``__dlpack__``\n"
    "producer, ``__array__`` objects and buffers.\n\n"
    "Parameters\n----------\n"
    "x : torch.Tensor, numpy.ndarray, DLPack producer, array-like with\n"
    "    ``__array__`` or the buffer protocol.\n"
    "copy : bool or None\n"
    "    None: view when possible, copy when unavoidable. True: always return\n"
    "    memory NumPy owns. False: raise BufferError if a copy would be needed.\n"
    "out : numpy.ndarray, optional\n"
    "    Writeable array of the result's exact shape and dtype to copy into.\n"
    "stream : optional\n"
    "    Stream to order a device copy on; ignored for CPU memory.\n\n"
    "Returns\n-------\n"
    "numpy.ndarray\n"
    "    Same shape, dtype and strides as ``x.numpy()`` wherever that works; a\n"
    "    view keeps the memory it views alive (a torch tensor's storage), whatever\n"
    "    is later done to ``x``, and never holds an autograd graph.\n\n"
    "Notes\n-----\n"
    "A view does not stop ``x.resize_()`` from moving the tensor's memory, as\n"
    "with ``np.from_dlpack``; ``x.numpy()`` forbids that resize. Do not grow a\n"
    "tensor in place while a view of it is in use, or pass ``copy=True``.\n";

PyObject* to_numpy(PyObject*, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  const Arguments arguments =
      g_fast_path ? classify(args, nargs, kwnames) : Arguments{Request::kPython};
  if (arguments.request != Request::kPython) {
    PyObject* x = args[0];
    PyObject* view = nullptr;
    if (PyArray_CheckExact(x)) {
      Py_INCREF(x);
      view = x;
    } else if (const TypeInfo info = lookup_type(Py_TYPE(x));
               info.api == nullptr || !g_exchange_api) {
      // A copy is left to Python, which reads the memory without
      // Tensor.numpy(): that would leave the tensor unresizable for good.
      if (arguments.request == Request::kView) view = view_without_exchange(x, info);
    } else if (DLTensor tensor; read_exchanged(x, info, &tensor)) {
      view = view_exchanged(x, info, tensor);
      if (view == nullptr && !arguments.copy_forbidden && !arguments.stream_given) {
        PyObject* copy = nullptr;
        switch (copy_exchanged(tensor, *info.api, &copy)) {
          case DeviceCopy::kCopied: return copy;  // memory NumPy owns, whatever `copy` says
          case DeviceCopy::kFailed: return nullptr;
          case DeviceCopy::kDeclined: break;
        }
      }
    }
    if (view != nullptr && arguments.request == Request::kView) return view;
    if (view != nullptr) {  // copy=True: memory NumPy owns, in the view's order
      PyObject* copy =
          PyArray_NewCopy(reinterpret_cast<PyArrayObject*>(view), NPY_KEEPORDER);
      Py_DECREF(view);
      return copy;
    }
  }
  if (g_fallback == nullptr) {
    PyErr_SetString(PyExc_RuntimeError, "to_numpy: tensorbridge was not initialised");
    return nullptr;
  }
  return PyObject_Vectorcall(g_fallback, args, nargs, kwnames);
}

void set_fallback(PyObject* fallback) {
  Py_XINCREF(fallback);
  Py_XSETREF(g_fallback, fallback);
}

void set_driver_error_type(PyObject* type) {
  Py_INCREF(type);
  g_driver_error = type;  // kept for the life of the process
}

void set_fast_path(bool enabled) { g_fast_path = enabled; }
void set_exchange_api(bool enabled) { g_exchange_api = enabled; }

}  // namespace tensorbridge

#include "exchange.h"

#include <new>
#include <string>

#include "cuda_driver.h"
#include "dlpack_import.h"
#include "dtypes.h"
#include "interrupt.h"

namespace tensorbridge {

using namespace dlpack;

namespace {

PyObject* g_driver_error = PyExc_RuntimeError;

// What keeps the memory of CPU `tensor`, read from `x` through the exchange
// API, alive for as long as a view of it lives (new reference; nullptr, with
// no Python error set, when there is nothing safe). Not `x` itself: `x.data =
// ...` or `x.set_(...)` give a torch tensor other memory and free what it had.
// For torch, the tensor's storage, which holds the memory and no autograd
// graph; for other producers, the managed tensor the API hands out (whose
// deleter runs when the view dies, and whose READ_ONLY flag clears
// `*writeable`), or `x` when the API has none.
PyObject* exchanged_memory_owner(PyObject* x, const TypeInfo& info, const DLTensor& tensor,
                                 bool* writeable) {
  if (info.is_plain_torch()) {
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
  *writeable = (managed->flags & kFlagReadOnly) == 0;
  PyObject* owner = owner_of(managed);
  if (owner == nullptr) PyErr_Clear();
  return owner;
}

}  // namespace

bool read_exchanged(PyObject* x, const TypeInfo& info, DLTensor* tensor) {
  if (info.api->dltensor_from_py_object_no_sync(x, tensor) != 0) {
    PyErr_Clear();
    return false;
  }
  if (!contract_violation(*tensor).empty()) return false;
  if (info.is_plain_torch() && !torch_memory_is_plain(x, info, *tensor)) {
    PyErr_Clear();
    return false;
  }
  return true;
}

PyObject* view_exchanged(PyObject* x, const TypeInfo& info, const DLTensor& tensor) {
  if (tensor.device.device_type != kDLCPU) return nullptr;
  bool writeable = true;
  PyObject* owner = exchanged_memory_owner(x, info, tensor, &writeable);
  PyObject* array = nullptr;
  if (owner != nullptr && view_dltensor(tensor, writeable, owner, &array) != ViewStatus::kOk) {
    PyErr_Clear();
  }
  Py_XDECREF(owner);
  return array;
}

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

PyObject* copy_exchanged(const DLTensor& tensor, DeviceTensor& device) {
  npy_intp shape[NPY_MAXDIMS];
  for (int i = 0; i < tensor.ndim; ++i) shape[i] = static_cast<npy_intp>(tensor.shape[i]);
  PyArray_Descr* descr = device.descr;
  device.descr = nullptr;
  PyObject* array = PyArray_NewFromDescr(&PyArray_Type, descr /* stolen */, tensor.ndim, shape,
                                         nullptr, nullptr, 0, nullptr);
  if (array == nullptr) return nullptr;

  void* destination = PyArray_DATA(reinterpret_cast<PyArrayObject*>(array));
  PyObject* error_type = nullptr;
  std::string error;
  bool interrupted = false;
  const InterruptCheck check = python_interrupt_check();
  Py_BEGIN_ALLOW_THREADS try {
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
  Py_END_ALLOW_THREADS if (interrupted || error_type != nullptr) {
    Py_DECREF(array);
    if (error_type != nullptr) PyErr_SetString(error_type, error.c_str());
    return nullptr;
  }
  return array;
}

void set_driver_error_type(PyObject* type) {
  Py_INCREF(type);
  g_driver_error = type;  // kept for the life of the process
}

}  // namespace tensorbridge

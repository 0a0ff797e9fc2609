// Reading a producer through the DLPack C exchange API: a view of its CPU
// memory, or one copy of its compact CUDA memory, with no Python-level
// DLPack call.
#pragma once

#include "dlpack.h"
#include "numpy_api.h"
#include "torch_probe.h"
#include "transfer.h"

namespace tensorbridge {

// Reads `x` through its type's exchange API (`info.api`, not nullptr) into
// `tensor`; false (no Python error set) when that is not possible, when the
// tensor breaks the DLPack contract (a torch ZeroTensor has NULL data: its
// zeros are not in memory) or when the raw memory of a torch tensor does not
// show its values.
bool read_exchanged(PyObject* x, const TypeInfo& info, dlpack::DLTensor* tensor);

// A zero-copy view of CPU memory read through the exchange API, or nullptr
// (no Python error set) when NumPy cannot view it.
PyObject* view_exchanged(PyObject* x, const TypeInfo& info, const dlpack::DLTensor& tensor);

// CUDA memory of an exchange-API producer that one plain copy reads whole.
struct DeviceTensor {
  DeviceSpan span;
  void* stream = nullptr;          // the producer's current stream on that device
  PyArray_Descr* descr = nullptr;  // new reference
};

// Fills `out` when `tensor` is sound, compact row-major CUDA memory of an
// element type NumPy has, and the producer names its current stream; false
// (no Python error set) for whatever needs more than one plain copy.
bool device_tensor_of(const dlpack::DLTensor& tensor, const dlpack::DLPackExchangeAPI& api,
                      DeviceTensor* out);

// Copies `device` (described from `tensor` by device_tensor_of) into a new
// NumPy array on the producer's current stream, with the GIL released. New
// reference, or nullptr with a Python error set (KeyboardInterrupt on
// Ctrl-C, the driver's error as _core.DriverError). Takes `device.descr`.
PyObject* copy_exchanged(const dlpack::DLTensor& tensor, DeviceTensor& device);

// The Python exception type a failed device copy raises (tensorbridge._core.DriverError).
void set_driver_error_type(PyObject* type);

}  // namespace tensorbridge

// DLPack tensors -> NumPy arrays (the consumer side of the protocol).
#pragma once

#include <string>

#include "dlpack.h"
#include "numpy_api.h"

namespace tensorbridge {

// A contract violation in a producer's tensor (ndim out of range, NULL or
// negative shape, NULL data for a non-empty tensor), detected before any
// read: an error message, or an empty string when the tensor is sound.
std::string contract_violation(const dlpack::DLTensor& tensor);

// Whether a sound tensor's memory is compact row-major (NULL strides, or
// strides that equal them; size-1 dimensions, and empty tensors, do not
// constrain them).
bool is_row_major(const dlpack::DLTensor& tensor);

enum class ViewStatus {
  kOk,           // an array was made
  kUnsupported,  // NumPy cannot view this tensor; no Python error is set
  kError,        // a Python error is set
};

// Makes an array that views `tensor`'s memory and keeps `base` alive (a new
// reference is taken). Unsupported: memory the CPU cannot read, element types
// without a NumPy dtype, more dimensions than NumPy allows.
ViewStatus view_dltensor(const dlpack::DLTensor& tensor, bool writeable, PyObject* base,
                         PyObject** out);

// Takes ownership of a managed tensor a producer handed out (through the C
// exchange API): returns a capsule that calls its deleter exactly once, when
// the capsule dies, or nullptr with a Python error set after calling it at once.
PyObject* owner_of(dlpack::DLManagedTensorVersioned* managed);

// Consumes a DLPack capsule ("dltensor_versioned" or legacy "dltensor") and
// returns an array viewing its memory. Follows the consumer rules: the
// capsule is renamed to "used_..." so that nobody consumes it twice, the
// producer's deleter runs exactly once (when the array dies, or at once if
// the tensor is refused), a major version other than ours is refused, the
// READ_ONLY flag gives a read-only array, NULL strides mean row-major and
// byte_offset is honoured. Errors: BufferError for a tensor that breaks the
// contract or lives where the CPU cannot read it, TypeError for an element
// type NumPy lacks.
PyObject* array_from_capsule(PyObject* capsule);

// Consumes a DLPack capsule (same rules) whose memory may live anywhere, for
// the device copy path: returns a CapsuleMemory (owner, device_type, device,
// address, shape, strides (in elements; None when compact row-major), NumPy
// dtype or None, element type name). `owner` keeps the memory alive and calls
// the producer's deleter when dropped.
PyObject* describe_capsule(PyObject* capsule);

// Adds the CapsuleMemory type to `module`; false with a Python error set.
bool add_capsule_types(PyObject* module);

}  // namespace tensorbridge

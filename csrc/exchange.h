// The fast path of `to_numpy`: torch tensors (and any producer publishing the
// DLPack C exchange API) read with no Python-level DLPack call.
#pragma once

#include "numpy_api.h"

namespace tensorbridge {

// `to_numpy(x, *, copy=None, out=None, stream=None)`, METH_FASTCALL|KEYWORDS.
// Handles the common cases in C (a NumPy array, CPU memory that NumPy can
// view as is, compact CUDA memory of an exchange-API producer such as a torch
// CUDA tensor, copied on its current stream) and hands everything else,
// arguments untouched, to the Python implementation registered with
// set_fallback.
PyObject* to_numpy(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames);

// A zero-copy view of `x` when it is a CPU tensor that NumPy can view as is
// (new reference), or nullptr with no Python error set when it is anything
// else: the fast path's decision, shared with the Python fallback.
// `numpy_method` allows the view of torch without the exchange API, through
// Tensor.numpy(), which marks the storage unresizable for good: not for a
// view that is only copied.
PyObject* fast_view(PyObject* x, bool numpy_method = true);

// For CUDA memory that one plain copy reads whole, read through the exchange
// API (a plain, compact torch CUDA tensor): (device, stream, address, shape,
// NumPy dtype), the stream being the producer's current one. None for
// anything else. New reference.
PyObject* describe_device(PyObject* x);

// Registers the Python implementation that handles what the fast path does not.
void set_fallback(PyObject* fallback);

// The Python exception type a failed device copy raises (tensorbridge._core.DriverError).
void set_driver_error_type(PyObject* type);

// Turns the fast path off or on, and its use of the C exchange API (off, torch
// tensors take Tensor.numpy() as with torch < 2.10). The tests run the whole
// matrix in each mode.
void set_fast_path(bool enabled);
void set_exchange_api(bool enabled);

extern const char* const kToNumpyDoc;

}  // namespace tensorbridge

// The front door of `to_numpy`: every input is classified once, here, into a
// route. The routes that need no Python (a view of host memory, one copy of
// compact CUDA memory) finish in C; every other goes, with what was found, to
// the Python implementation registered with set_fallback
// (tensorbridge._convert.convert), which implements only those routes.
#pragma once

#include "numpy_api.h"

namespace tensorbridge {

// How to_numpy reads an input: the one classification of it, made here, a
// closed set shared with Python (`_core.ROUTES` names each value in order;
// tensorbridge._convert.Route mirrors it and is the one place that branches
// on it).
enum class Route {
  kView,           // host memory NumPy views as it is (the route's `view`)
  kDevice,         // compact CUDA memory an exchange-API producer described (`memory`)
  kTorchPlain,     // a CPU tensor whose memory shows its values, not viewed here
  kTorchCuda,      // a CUDA tensor the engine copies (made plain on its device first)
  kTorchCopy,      // a tensor whose values torch writes to the host: layout, conj or neg
                   // bit, complex32, or a device other than CUDA's
  kTorchZeros,     // a ZeroTensor: zeros with no memory behind them
  kTorchDispatch,  // a subclass with its own __torch_dispatch__: read through torch
  kTorchMeta,      // a meta tensor: shape and dtype, no data
  kDLPack,         // another DLPack producer
  kArray,          // an object with __array__
  kBuffer,         // an object with the buffer protocol
  kUnknown,        // nothing to_numpy takes
};
constexpr const char* kRouteNames[] = {"VIEW",       "DEVICE",      "TORCH_PLAIN",    "TORCH_CUDA",
                                       "TORCH_COPY", "TORCH_ZEROS", "TORCH_DISPATCH", "TORCH_META",
                                       "DLPACK",     "ARRAY",       "BUFFER",         "UNKNOWN"};

// `to_numpy(x, *, copy=None, out=None, stream=None)`, METH_FASTCALL|KEYWORDS.
// Wrong arguments raise here, with Python's own wording. The fallback is
// called as fallback(found, x, copy, out, stream): the arguments parsed, and
// what was found of `x` (None when out= is given: Python checks it before
// anything of `x` is asked).
PyObject* to_numpy(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames);

// `_core.route(x, numpy_method=True)`: what the fallback receives of `x`
// (a tensorbridge._core.Found). `numpy_method` allows a view of
// torch without the exchange API through Tensor.numpy(), which marks the
// storage unresizable for good: not for a view that is only copied. New
// reference; nullptr with a Python error set.
PyObject* route(PyObject* x, bool numpy_method);

// Adds the named result types (Found, CudaMemory) and ROUTES to `module`;
// false with a Python error set.
bool add_route_types(PyObject* module);

// Registers the Python implementation of the routes that need Python.
void set_fallback(PyObject* fallback);

// Turns the routes finished in C off or on (off: every call reaches the
// fallback, with its route), and the use of the C exchange API (off, torch
// tensors take Tensor.numpy() as with torch < 2.10). The tests run the whole
// matrix in each mode.
void set_fast_path(bool enabled);
void set_exchange_api(bool enabled);
// Whether torch tensors are read through the C exchange API (collect's host path too).
bool exchange_api_enabled();

extern const char* const kToNumpyDoc;

}  // namespace tensorbridge

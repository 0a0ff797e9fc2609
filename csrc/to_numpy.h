// The front door of `to_numpy`: every input is classified once, here, into a
// route. The routes that need no Python (a view of host memory, one copy of
// compact CUDA memory) finish in C; every other goes, with what was found, to
// the Python implementation registered with set_fallback
// (tensorbridge._convert.convert), which implements only those routes.
#pragma once

#include "numpy_api.h"

namespace tensorbridge {

// `to_numpy(x, *, copy=None, out=None, stream=None)`, METH_FASTCALL|KEYWORDS.
// The fallback is called as fallback(route, *args, **kwargs): the arguments
// untouched, after the route of `x` (None when there is no `x`).
PyObject* to_numpy(PyObject* self, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames);

// `_core.route(x, numpy_method=True)`: the route of `x`, as the fallback
// receives it (a tensorbridge._core.Route). `numpy_method` allows a view of
// torch without the exchange API through Tensor.numpy(), which marks the
// storage unresizable for good: not for a view that is only copied. New
// reference; nullptr with a Python error set.
PyObject* route(PyObject* x, bool numpy_method);

// Adds the named result types (Route, CudaMemory) to `module`; false with a
// Python error set.
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

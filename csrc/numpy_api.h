// One place that includes NumPy's C API for every translation unit.
//
// NumPy's API is a table of function pointers filled by import_array(); all
// our files share one table (PY_ARRAY_UNIQUE_SYMBOL), which bindings.cpp
// defines and fills when the module is imported.
#pragma once

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
// Built against NumPy 2 headers, the extension must still run on NumPy 1.26.
#define NPY_TARGET_VERSION NPY_1_25_API_VERSION
#define PY_ARRAY_UNIQUE_SYMBOL tensorbridge_ARRAY_API
#ifndef TENSORBRIDGE_IMPORT_ARRAY
#define NO_IMPORT_ARRAY
#endif
#include <numpy/arrayobject.h>

// The most dimensions an array of the NumPy running here has: NPY_MAXDIMS of
// the NumPy 2 headers we build with, 32 on NumPy 1.x.
namespace tensorbridge {
inline int numpy_max_dims() {
  return PyArray_RUNTIME_VERSION >= NPY_2_0_API_VERSION ? NPY_MAXDIMS : 32;
}
}  // namespace tensorbridge

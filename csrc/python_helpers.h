// Small pieces of the Python C API that several files of the core use.
#pragma once

#include <cstring>

#include "numpy_api.h"

namespace tensorbridge {

// An interned name, immortal for us.
inline PyObject* intern(const char* text) {
  PyObject* s = PyUnicode_InternFromString(text);
  if (s == nullptr) Py_FatalError("tensorbridge: out of memory interning a name");
  return s;
}

// Makes the struct sequence type `desc` describes ("tensorbridge._core.Name")
// and adds it to `module` as Name. The type, kept by the caller for the life
// of the process (one reference besides the module's); nullptr with a Python
// error set.
inline PyTypeObject* add_struct_sequence(PyObject* module, PyStructSequence_Desc* desc) {
  PyTypeObject* type = PyStructSequence_NewType(desc);
  if (type == nullptr) return nullptr;
  const char* dot = std::strrchr(desc->name, '.');
  Py_INCREF(type);  // PyModule_AddObject steals this one when it succeeds
  if (PyModule_AddObject(module, dot == nullptr ? desc->name : dot + 1,
                         reinterpret_cast<PyObject*>(type)) < 0) {
    Py_DECREF(type);
    Py_DECREF(type);
    return nullptr;
  }
  return type;
}

}  // namespace tensorbridge

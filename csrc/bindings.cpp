// The Python module `tensorbridge._core`: bindings only, no logic.
#define TENSORBRIDGE_IMPORT_ARRAY
#include "numpy_api.h"

#include <pybind11/pybind11.h>

#include "dlpack_import.h"
#include "exchange.h"

namespace py = pybind11;
namespace tb = tensorbridge;

namespace {

// to_numpy is a plain vectorcall function: pybind11's dispatcher costs more
// than the whole fast path.
PyMethodDef to_numpy_def = {
    "to_numpy", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(tb::to_numpy)),
    METH_FASTCALL | METH_KEYWORDS, tb::kToNumpyDoc};

}  // namespace

PYBIND11_MODULE(_core, m) {
  if (_import_array() < 0) throw py::error_already_set();
  m.doc() = "tensorbridge's native core";

  m.add_object("to_numpy", py::reinterpret_steal<py::object>(
                               PyCFunction_NewEx(&to_numpy_def, nullptr, m.attr("__name__").ptr())));
  m.def(
      "array_from_capsule",
      [](py::handle capsule) {
        PyObject* array = tb::array_from_capsule(capsule.ptr());
        if (array == nullptr) throw py::error_already_set();
        return py::reinterpret_steal<py::object>(array);
      },
      py::arg("capsule"), "Consume a DLPack capsule and return a NumPy array viewing it.");
  m.def(
      "fast_view",
      [](py::handle x) -> py::object {
        PyObject* array = tb::fast_view(x.ptr());
        return array ? py::reinterpret_steal<py::object>(array) : py::none();
      },
      py::arg("x"), "A zero-copy view of a plain CPU tensor, or None.");
  m.def("set_fallback", [](py::object fallback) { tb::set_fallback(fallback.ptr()); });
  m.def("set_fast_path", &tb::set_fast_path, py::arg("enabled"));
  m.def("set_exchange_api", &tb::set_exchange_api, py::arg("enabled"));
}

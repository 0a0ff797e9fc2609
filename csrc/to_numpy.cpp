#include "to_numpy.h"

#include "dlpack.h"
#include "exchange.h"
#include "python_helpers.h"
#include "torch_probe.h"

namespace tensorbridge {
namespace {

using namespace dlpack;

PyObject* g_fallback = nullptr;  // strong reference, set once at import
bool g_fast_path = true;
bool g_exchange_api = true;
PyTypeObject* g_found_type = nullptr;
PyTypeObject* g_memory_type = nullptr;

// What the arguments ask of the routes finished in C: `x` alone, or with
// copy=None, True or False, out=None and stream=None or any stream (streams
// do not apply to CPU memory; a device copy with a stream is left to Python).
// out= goes to Python before anything of `x` is asked: it is checked there
// first.
struct Arguments {
  PyObject* x = nullptr;  // borrowed, as the rest
  PyObject* copy = Py_None;
  PyObject* out = Py_None;
  PyObject* stream = Py_None;
  bool x_by_keyword = false;  // to_numpy(x=t): the same input, through Python
};

// Parses to_numpy's arguments, raising what Python raises for a def of this
// signature (and for a `copy` other than None or a bool); false then.
bool parse(PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames, Arguments* parsed) {
  const Py_ssize_t positional = PyVectorcall_NARGS(nargs);
  if (positional > 1) {
    PyErr_Format(PyExc_TypeError, "to_numpy() takes 1 positional argument but %zd were given",
                 positional);
    return false;
  }
  if (positional == 1) parsed->x = args[0];
  const Py_ssize_t count = kwnames == nullptr ? 0 : PyTuple_GET_SIZE(kwnames);
  for (Py_ssize_t i = 0; i < count; ++i) {
    PyObject* name = PyTuple_GET_ITEM(kwnames, i);
    PyObject* value = args[positional + i];
    if (PyUnicode_CompareWithASCIIString(name, "copy") == 0) {
      parsed->copy = value;
    } else if (PyUnicode_CompareWithASCIIString(name, "out") == 0) {
      parsed->out = value;
    } else if (PyUnicode_CompareWithASCIIString(name, "stream") == 0) {
      parsed->stream = value;
    } else if (PyUnicode_CompareWithASCIIString(name, "x") == 0) {
      if (parsed->x != nullptr) {
        PyErr_SetString(PyExc_TypeError, "to_numpy() got multiple values for argument 'x'");
        return false;
      }
      parsed->x = value;
      parsed->x_by_keyword = true;
    } else {
      PyErr_Format(PyExc_TypeError, "to_numpy() got an unexpected keyword argument '%U'", name);
      return false;
    }
  }
  if (parsed->x == nullptr) {
    PyErr_SetString(PyExc_TypeError, "to_numpy() missing 1 required positional argument: 'x'");
    return false;
  }
  if (parsed->copy != Py_None && parsed->copy != Py_True && parsed->copy != Py_False) {
    PyErr_Format(PyExc_TypeError, "to_numpy: copy must be None, True or False, got %R",
                 parsed->copy);
    return false;
  }
  return true;
}

// What classifying `x` found. Owns its references.
struct Found {
  Route route = Route::kUnknown;
  TypeInfo info;
  PyObject* view = nullptr;  // Route::kView
  DLTensor tensor{};         // Route::kDevice: as the exchange API reported it
  DeviceTensor device;       // Route::kDevice
  TorchFacts facts;          // a torch tensor's, when not viewed

  Found() = default;
  Found(const Found&) = delete;
  Found& operator=(const Found&) = delete;
  ~Found() {
    Py_XDECREF(view);
    Py_XDECREF(device.descr);
    Py_XDECREF(facts.device_type);
    Py_XDECREF(facts.reason);
  }
};

bool type_has(PyObject* x, const char* name) {
  return PyObject_HasAttrString(reinterpret_cast<PyObject*>(Py_TYPE(x)), name) == 1;
}

bool device_is(const TorchFacts& facts, const char* name) {
  return PyUnicode_CompareWithASCIIString(facts.device_type, name) == 0;
}

// A torch tensor's route, from what it says of itself.
Route torch_route(const TorchFacts& facts) {
  if (device_is(facts, "meta")) return Route::kTorchMeta;
  switch (facts.why) {
    case Why::kNothing: return Route::kTorchPlain;
    case Why::kDispatch: return Route::kTorchDispatch;
    case Why::kZeros: return Route::kTorchZeros;
    default: return device_is(facts, "cuda") ? Route::kTorchCuda : Route::kTorchCopy;
  }
}

// The one classification of an input. Raises only what a torch tensor's own
// answers raise (false then); any other question that fails only means the
// route that needed its answer is not taken. A route that needs more than
// the view or the memory (torch's) is found only when `facts_wanted`: the
// fast path never needs it.
bool classify(PyObject* x, bool numpy_method, bool facts_wanted, Found* found) {
  if (PyArray_Check(x)) {  // subclasses included, returned as they are
    Py_INCREF(x);
    found->view = x;
    found->route = Route::kView;
    return true;
  }
  found->info = lookup_type(Py_TYPE(x));
  if (found->info.api != nullptr && g_exchange_api) {
    if (read_exchanged(x, found->info, &found->tensor)) {
      found->view = view_exchanged(x, found->info, found->tensor);
      if (found->view != nullptr) {
        found->route = Route::kView;
        return true;
      }
      if (device_tensor_of(found->tensor, *found->info.api, &found->device)) {
        found->route = Route::kDevice;
        return true;
      }
    }
  } else if (numpy_method) {
    found->view = numpy_method_view(x, found->info);
    if (found->view != nullptr) {
      found->route = Route::kView;
      return true;
    }
  }
  if (found->info.torch != TorchKind::kNotTorch) {
    found->route = Route::kTorchCopy;  // settled below, when wanted
    if (!facts_wanted) return true;
    if (!torch_facts(x, found->info, &found->facts)) return false;
    found->route = torch_route(found->facts);
    return true;
  }
  found->route = type_has(x, "__dlpack__")  ? Route::kDLPack
                 : type_has(x, "__array__") ? Route::kArray
                 : PyObject_CheckBuffer(x)  ? Route::kBuffer
                                            : Route::kUnknown;
  return true;
}

PyObject* cuda_memory(const Found& found) {
  PyObject* memory = PyStructSequence_New(g_memory_type);
  PyObject* shape = PyTuple_New(found.tensor.ndim);
  if (memory == nullptr || shape == nullptr) {
    Py_XDECREF(memory);
    Py_XDECREF(shape);
    return nullptr;
  }
  for (int i = 0; i < found.tensor.ndim; ++i) {
    PyTuple_SET_ITEM(shape, i, PyLong_FromLongLong(found.tensor.shape[i]));
  }
  Py_INCREF(found.device.descr);
  PyObject* items[] = {PyLong_FromLong(found.device.span.device),
                       PyLong_FromVoidPtr(found.device.stream),
                       PyLong_FromUnsignedLongLong(found.device.span.data), shape,
                       reinterpret_cast<PyObject*>(found.device.descr)};
  bool ok = true;
  for (int i = 0; i < 5; ++i) {
    ok = ok && items[i] != nullptr;
    PyStructSequence_SetItem(memory, i, items[i]);  // steals; a NULL item is cleared below
  }
  if (!ok || PyErr_Occurred()) Py_CLEAR(memory);
  return memory;
}

// What a Python caller receives of `found`, found of `x` (a _core.Found).
// New reference; nullptr with an error set.
PyObject* python_found(PyObject* x, Found& found) {
  PyObject* memory = nullptr;
  PyObject* device_type = found.facts.device_type;
  PyObject* reason = found.facts.reason;
  if (found.route == Route::kDevice) {
    memory = cuda_memory(found);
    if (memory == nullptr) return nullptr;
    if (found.info.torch != TorchKind::kNotTorch) {  // read plain through the exchange API
      static PyObject* cuda = intern("cuda");
      device_type = cuda;
      reason = PyUnicode_FromFormat("its memory is on cuda:%d", found.device.span.device);
    } else {
      reason = PyUnicode_FromFormat(
          "this %s lives on DLPack device type %d, which the CPU "
          "cannot read",
          _PyType_Name(Py_TYPE(x)), static_cast<int>(found.tensor.device.device_type));
    }
    if (reason == nullptr) {
      Py_DECREF(memory);
      return nullptr;
    }
  } else {
    Py_XINCREF(reason);
  }
  PyObject* route = PyLong_FromLong(static_cast<long>(found.route));
  PyObject* result = route == nullptr ? nullptr : PyStructSequence_New(g_found_type);
  if (result == nullptr) {
    Py_XDECREF(route);
    Py_XDECREF(memory);
    Py_XDECREF(reason);
    return nullptr;
  }
  auto or_none = [](PyObject* item) {
    return item != nullptr ? item : (Py_INCREF(Py_None), Py_None);
  };
  Py_XINCREF(device_type);
  PyStructSequence_SetItem(result, 0, route);
  PyStructSequence_SetItem(result, 1, or_none(found.view));  // the reference moves over
  found.view = nullptr;
  PyStructSequence_SetItem(result, 2, or_none(memory));
  PyStructSequence_SetItem(result, 3, or_none(device_type));
  PyStructSequence_SetItem(result, 4, or_none(reason));
  return result;
}

PyObject* call_fallback(PyObject* found, const Arguments& arguments) {
  if (g_fallback == nullptr) {
    Py_DECREF(found);
    PyErr_SetString(PyExc_RuntimeError, "to_numpy: tensorbridge was not initialised");
    return nullptr;
  }
  PyObject* stack[] = {found, arguments.x, arguments.copy, arguments.out, arguments.stream};
  PyObject* result = PyObject_Vectorcall(g_fallback, stack, 5, nullptr);
  Py_DECREF(found);
  return result;
}

}  // namespace

PyObject* route(PyObject* x, bool numpy_method) {
  Found found;
  if (!classify(x, numpy_method, /*facts_wanted=*/true, &found)) return nullptr;
  return python_found(x, found);
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
    "tensor in place while a view of it is in use, or pass ``copy=True``.\n\n"
    "Examples\n--------\n"
    ">>> import torch, tensorbridge as tb\n"
    ">>> t = torch.arange(6, dtype=torch.bfloat16).reshape(2, 3)\n"
    ">>> a = tb.to_numpy(t)  # a view: no copy\n"
    ">>> a.dtype.name, a.shape\n"
    "('bfloat16', (2, 3))\n"
    ">>> tb.to_numpy(torch.ones(2, requires_grad=True))\n"
    "array([1., 1.], dtype=float32)\n"
    ">>> tb.to_numpy(t.cuda())  # doctest: +SKIP\n";

PyObject* to_numpy(PyObject*, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  Arguments arguments;
  if (!parse(args, nargs, kwnames, &arguments)) return nullptr;
  if (arguments.out != Py_None) {  // Python checks out= before anything of `x` is asked
    Py_INCREF(Py_None);
    return call_fallback(Py_None, arguments);
  }
  const bool view_returned = arguments.copy != Py_True;
  const bool fast = g_fast_path && !arguments.x_by_keyword;
  Found found;
  if (!classify(arguments.x, view_returned, /*facts_wanted=*/!fast, &found)) return nullptr;
  if (fast) {
    if (found.route == Route::kView && view_returned) {
      PyObject* view = found.view;
      found.view = nullptr;
      return view;
    }
    // copy=True: memory NumPy owns, in the view's order (a subclass's own copy() in Python)
    if (found.route == Route::kView && PyArray_CheckExact(found.view)) {
      return PyArray_NewCopy(reinterpret_cast<PyArrayObject*>(found.view), NPY_KEEPORDER);
    }
    if (found.route == Route::kDevice && arguments.copy != Py_False &&
        arguments.stream == Py_None) {
      return copy_exchanged(found.tensor, found.device);  // memory NumPy owns, whatever `copy` says
    }
    if (found.route == Route::kTorchCopy && found.facts.device_type == nullptr &&
        !torch_facts(arguments.x, found.info, &found.facts)) {
      return nullptr;
    }
    if (found.facts.device_type != nullptr) found.route = torch_route(found.facts);
  }
  PyObject* described = python_found(arguments.x, found);
  if (described == nullptr) return nullptr;
  return call_fallback(described, arguments);
}

bool add_route_types(PyObject* module) {
  static PyStructSequence_Field found_fields[] = {
      {"route", "the Route (an int; _core.ROUTES names them in order)"},
      {"view", "for Route.VIEW: the NumPy array viewing the host memory"},
      {"memory", "for Route.DEVICE: the CudaMemory one plain copy reads"},
      {"torch_device", "for a torch tensor not viewed: its device type ('cpu', 'cuda', 'meta')"},
      {"reason", "for a tensor not viewed: why NumPy cannot view it, for error messages"},
      {nullptr, nullptr}};
  static PyStructSequence_Desc found_desc = {
      "tensorbridge._core.Found", "What to_numpy found of an input: its route, and what it needs.",
      found_fields, 5};
  static PyStructSequence_Field memory_fields[] = {
      {"device", "the CUDA device ordinal"},
      {"stream", "the producer's current stream (CUstream handle)"},
      {"address", "the device address of the first element"},
      {"shape", "the shape (compact row-major)"},
      {"dtype", "the NumPy dtype"},
      {nullptr, nullptr}};
  static PyStructSequence_Desc memory_desc = {
      "tensorbridge._core.CudaMemory", "Compact CUDA memory that one plain copy reads whole.",
      memory_fields, 5};
  g_found_type = add_struct_sequence(module, &found_desc);
  g_memory_type = g_found_type == nullptr ? nullptr : add_struct_sequence(module, &memory_desc);
  if (g_memory_type == nullptr) return false;
  PyObject* names = PyTuple_New(sizeof kRouteNames / sizeof kRouteNames[0]);
  if (names == nullptr) return false;
  for (size_t i = 0; i < sizeof kRouteNames / sizeof kRouteNames[0]; ++i) {
    PyTuple_SET_ITEM(names, i, intern(kRouteNames[i]));
  }
  return PyModule_AddObject(module, "ROUTES", names) == 0 || (Py_DECREF(names), false);
}

void set_fallback(PyObject* fallback) {
  Py_XINCREF(fallback);
  Py_XSETREF(g_fallback, fallback);
}

void set_fast_path(bool enabled) { g_fast_path = enabled; }
void set_exchange_api(bool enabled) { g_exchange_api = enabled; }
bool exchange_api_enabled() { return g_exchange_api; }

}  // namespace tensorbridge

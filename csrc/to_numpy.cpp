#include "to_numpy.h"

#include <vector>

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
PyTypeObject* g_route_type = nullptr;
PyTypeObject* g_memory_type = nullptr;

// What the arguments ask of the routes finished in C: `x` alone, or with
// copy=None, True or False, out=None and stream=None or any stream (streams
// do not apply to CPU memory; a device copy with a stream is left to Python).
// out=, and arguments to_numpy does not take, go to Python before anything
// of `x` is asked: out= is checked there first, wrong arguments raise.
enum class Request { kPython, kView, kCopy };

struct Arguments {
  PyObject* x = nullptr;  // borrowed; nullptr when not given or when the arguments are wrong
  Request request = Request::kView;
  bool copy_forbidden = false;  // copy=False
  bool stream_given = false;
  bool view_returned = true;  // neither copy=True nor out=: a view is returned as is
  bool out_given = false;
};

Arguments parse(PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  Arguments parsed;
  const Py_ssize_t positional = PyVectorcall_NARGS(nargs);
  bool wrong = positional > 1;
  if (positional == 1) parsed.x = args[0];
  const Py_ssize_t count = kwnames == nullptr ? 0 : PyTuple_GET_SIZE(kwnames);
  for (Py_ssize_t i = 0; i < count; ++i) {
    PyObject* name = PyTuple_GET_ITEM(kwnames, i);
    PyObject* value = args[positional + i];
    if (PyUnicode_CompareWithASCIIString(name, "copy") == 0) {
      if (value == Py_True) {
        parsed.view_returned = false;
        if (parsed.request == Request::kView) parsed.request = Request::kCopy;
      } else if (value == Py_False) {
        parsed.copy_forbidden = true;
      } else if (value != Py_None) {
        wrong = true;
      }
    } else if (PyUnicode_CompareWithASCIIString(name, "out") == 0) {
      if (value != Py_None) {
        parsed.view_returned = false;
        parsed.request = Request::kPython;
        parsed.out_given = true;
      }
    } else if (PyUnicode_CompareWithASCIIString(name, "stream") == 0) {
      parsed.stream_given = value != Py_None;
    } else if (PyUnicode_CompareWithASCIIString(name, "x") == 0 && parsed.x == nullptr) {
      parsed.x = value;  // to_numpy(x=t): the same input, through Python
      parsed.request = Request::kPython;
    } else {
      wrong = true;
    }
  }
  if (wrong || parsed.x == nullptr) {
    parsed.x = nullptr;
    parsed.request = Request::kPython;
  }
  return parsed;
}

enum class Kind {
  kView,     // host memory NumPy views as is (a NumPy array, a CPU tensor)
  kDevice,   // compact CUDA memory of an exchange-API producer: one plain copy
  kTorch,    // a torch tensor that needs a torch operation (or a DLPack read) first
  kDLPack,   // another DLPack producer
  kArray,    // an object with __array__
  kBuffer,   // an object with the buffer protocol
  kUnknown,  // nothing to_numpy takes
};

PyObject* kind_name(Kind kind) {
  static PyObject* names[] = {intern("view"),  intern("device"), intern("torch"),  intern("dlpack"),
                              intern("array"), intern("buffer"), intern("unknown")};
  return names[static_cast<int>(kind)];
}

// What classifying `x` found (the C side of a route). Owns its references.
struct Found {
  Kind kind = Kind::kUnknown;
  TypeInfo info;
  PyObject* view = nullptr;  // kView
  DLTensor tensor{};         // kDevice: as the exchange API reported it
  DeviceTensor device;       // kDevice

  Found() = default;
  Found(const Found&) = delete;
  Found& operator=(const Found&) = delete;
  ~Found() {
    Py_XDECREF(view);
    Py_XDECREF(device.descr);
  }
};

bool type_has(PyObject* x, const char* name) {
  return PyObject_HasAttrString(reinterpret_cast<PyObject*>(Py_TYPE(x)), name) == 1;
}

// The one classification of an input. Raises nothing: a question that
// fails only means the route that needed its answer is not taken.
void classify(PyObject* x, bool numpy_method, Found* found) {
  if (PyArray_Check(x)) {  // subclasses included, returned as they are
    Py_INCREF(x);
    found->view = x;
    found->kind = Kind::kView;
    return;
  }
  found->info = lookup_type(Py_TYPE(x));
  if (found->info.api != nullptr && g_exchange_api) {
    if (read_exchanged(x, found->info, &found->tensor)) {
      found->view = view_exchanged(x, found->info, found->tensor);
      if (found->view != nullptr) {
        found->kind = Kind::kView;
        return;
      }
      if (device_tensor_of(found->tensor, *found->info.api, &found->device)) {
        found->kind = Kind::kDevice;
        return;
      }
    }
  } else if (numpy_method) {
    found->view = numpy_method_view(x, found->info);
    if (found->view != nullptr) {
      found->kind = Kind::kView;
      return;
    }
  }
  found->kind = found->info.torch != TorchKind::kNotTorch ? Kind::kTorch
                : type_has(x, "__dlpack__")               ? Kind::kDLPack
                : type_has(x, "__array__")                ? Kind::kArray
                : PyObject_CheckBuffer(x)                 ? Kind::kBuffer
                                                          : Kind::kUnknown;
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

// The Route a Python caller receives. New reference; nullptr with an error set.
PyObject* python_route(PyObject* x, Found& found) {
  TorchFacts facts;
  if (found.info.torch == TorchKind::kNotTorch || found.kind == Kind::kView) {
    // no torch facts: not a tensor, or one already viewed
  } else if (found.kind == Kind::kDevice) {
    // Read through the exchange API, so plain: only its device keeps NumPy from viewing it.
    static PyObject* cuda = intern("cuda");
    Py_INCREF(cuda);
    facts.device_type = cuda;
    facts.why = "device";
    facts.reason = PyUnicode_FromFormat("its memory is on cuda:%d", found.device.span.device);
    if (facts.reason == nullptr) {
      Py_DECREF(cuda);
      return nullptr;
    }
  } else if (!torch_facts(x, found.info, &facts)) {
    return nullptr;
  }
  PyObject* memory =
      found.kind == Kind::kDevice ? cuda_memory(found) : (Py_INCREF(Py_None), Py_None);
  PyObject* route = memory == nullptr ? nullptr : PyStructSequence_New(g_route_type);
  if (route == nullptr) {
    Py_XDECREF(memory);
    Py_XDECREF(facts.device_type);
    Py_XDECREF(facts.reason);
    return nullptr;
  }
  auto or_none = [](PyObject* item) {
    return item != nullptr ? item : (Py_INCREF(Py_None), Py_None);
  };
  PyObject* kind = kind_name(found.kind);
  Py_INCREF(kind);
  PyStructSequence_SetItem(route, 0, kind);
  PyStructSequence_SetItem(route, 1, or_none(found.view));  // the reference moves to the route
  found.view = nullptr;
  PyStructSequence_SetItem(route, 2, memory);
  PyStructSequence_SetItem(route, 3, or_none(facts.device_type));
  PyStructSequence_SetItem(
      route, 4, facts.why != nullptr ? PyUnicode_InternFromString(facts.why) : or_none(nullptr));
  PyStructSequence_SetItem(route, 5, or_none(facts.reason));
  if (PyErr_Occurred()) Py_CLEAR(route);
  return route;
}

PyObject* call_fallback(PyObject* route, PyObject* const* args, Py_ssize_t nargs,
                        PyObject* kwnames) {
  if (g_fallback == nullptr) {
    Py_DECREF(route);
    PyErr_SetString(PyExc_RuntimeError, "to_numpy: tensorbridge was not initialised");
    return nullptr;
  }
  const Py_ssize_t positional = PyVectorcall_NARGS(nargs);
  const Py_ssize_t total = positional + (kwnames == nullptr ? 0 : PyTuple_GET_SIZE(kwnames));
  PyObject* small[8];
  std::vector<PyObject*> large;
  PyObject** stack = small;
  if (total + 1 > 8) {
    large.resize(static_cast<size_t>(total + 1));
    stack = large.data();
  }
  stack[0] = route;
  for (Py_ssize_t i = 0; i < total; ++i) stack[i + 1] = args[i];
  PyObject* result = PyObject_Vectorcall(g_fallback, stack, positional + 1, kwnames);
  Py_DECREF(route);
  return result;
}

}  // namespace

PyObject* route(PyObject* x, bool numpy_method) {
  Found found;
  classify(x, numpy_method, &found);
  return python_route(x, found);
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
  const Arguments arguments = parse(args, nargs, kwnames);
  if (arguments.x == nullptr || arguments.out_given)  // no route: Python checks first
    return call_fallback((Py_INCREF(Py_None), Py_None), args, nargs, kwnames);
  Found found;
  classify(arguments.x, arguments.view_returned, &found);
  if (g_fast_path && arguments.request != Request::kPython) {
    if (found.kind == Kind::kView && arguments.request == Request::kView) {
      PyObject* view = found.view;
      found.view = nullptr;
      return view;
    }
    // copy=True: memory NumPy owns, in the view's order (a subclass's own copy() in Python)
    if (found.kind == Kind::kView && PyArray_CheckExact(found.view)) {
      return PyArray_NewCopy(reinterpret_cast<PyArrayObject*>(found.view), NPY_KEEPORDER);
    }
    if (found.kind == Kind::kDevice && !arguments.copy_forbidden && !arguments.stream_given) {
      return copy_exchanged(found.tensor, found.device);  // memory NumPy owns, whatever `copy` says
    }
  }
  PyObject* described = python_route(arguments.x, found);
  if (described == nullptr) return nullptr;
  return call_fallback(described, args, nargs, kwnames);
}

bool add_route_types(PyObject* module) {
  static PyStructSequence_Field route_fields[] = {
      {"kind", "'view', 'device', 'torch', 'dlpack', 'array', 'buffer' or 'unknown'"},
      {"view", "for 'view': the NumPy array viewing the host memory"},
      {"memory", "for 'device': the CudaMemory one plain copy reads"},
      {"torch_device", "for a torch tensor not viewed: its device type ('cpu', 'cuda', 'meta')"},
      {"why",
       "for a torch tensor not viewed: why NumPy cannot view it ('dispatch', 'layout', "
       "'zerotensor', 'device', 'conj', 'neg', 'widened'), or None"},
      {"reason", "the explanation of `why`, for error messages"},
      {nullptr, nullptr}};
  static PyStructSequence_Desc route_desc = {
      "tensorbridge._core.Route", "How to_numpy reads an input, as classified by the native core.",
      route_fields, 6};
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
  g_route_type = add_struct_sequence(module, &route_desc);
  g_memory_type = g_route_type == nullptr ? nullptr : add_struct_sequence(module, &memory_desc);
  return g_memory_type != nullptr;
}

void set_fallback(PyObject* fallback) {
  Py_XINCREF(fallback);
  Py_XSETREF(g_fallback, fallback);
}

void set_fast_path(bool enabled) { g_fast_path = enabled; }
void set_exchange_api(bool enabled) { g_exchange_api = enabled; }
bool exchange_api_enabled() { return g_exchange_api; }

}  // namespace tensorbridge

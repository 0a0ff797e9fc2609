#include "torch_probe.h"

#include <cstring>

#include "torch_dtypes.h"

namespace tensorbridge {

using namespace dlpack;

PyObject* TorchQuery::call(PyObject* x) const {
  return method != nullptr ? method(x, nullptr)
         : get != nullptr  ? get(x, closure)
         : is_method
             ? PyObject_VectorcallMethod(name, &x, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, nullptr)
             : PyObject_GetAttr(x, name);
}

int TorchQuery::ask(PyObject* x) const {
  PyObject* answer = call(x);
  if (answer == nullptr) return -1;
  const int truth = PyObject_IsTrue(answer);
  Py_DECREF(answer);
  return truth;
}

namespace {

PyObject* g_strided = nullptr;  // torch.strided, loaded with the first torch type

TorchQuery resolve_query(PyTypeObject* type, PyObject* name, bool is_method) {
  TorchQuery query;
  query.name = name;
  query.is_method = is_method;
  PyObject* descriptor = PyObject_GetAttr(reinterpret_cast<PyObject*>(type), name);
  if (descriptor != nullptr && is_method && Py_IS_TYPE(descriptor, &PyMethodDescr_Type)) {
    PyMethodDef* def = reinterpret_cast<PyMethodDescrObject*>(descriptor)->d_method;
    if ((def->ml_flags & ~(METH_CLASS | METH_STATIC | METH_COEXIST)) == METH_NOARGS) {
      query.method = def->ml_meth;
    }
  } else if (descriptor != nullptr && !is_method && Py_IS_TYPE(descriptor, &PyGetSetDescr_Type)) {
    PyGetSetDef* def = reinterpret_cast<PyGetSetDescrObject*>(descriptor)->d_getset;
    query.get = def->get;
    query.closure = def->closure;
  }
  Py_XDECREF(descriptor);  // the definitions are static in torch: they outlive it
  PyErr_Clear();
  return query;
}

// The exchange API a type publishes, if it is one we can call.
const DLPackExchangeAPI* exchange_api_of(PyTypeObject* type) {
  static PyObject* api_name = intern("__dlpack_c_exchange_api__");
  PyObject* capsule = PyObject_GetAttr(reinterpret_cast<PyObject*>(type), api_name);
  if (capsule == nullptr) {
    PyErr_Clear();
    return nullptr;
  }
  auto* api = static_cast<const DLPackExchangeAPI*>(
      PyCapsule_IsValid(capsule, kExchangeApiCapsuleName)
          ? PyCapsule_GetPointer(capsule, kExchangeApiCapsuleName)
          : nullptr);
  // The capsule lives on the type, which the cache keeps alive: the pointer stays valid.
  Py_DECREF(capsule);
  const bool usable = api != nullptr && api->header.version.major == kMajorVersion &&
                      api->header.version.minor >= kExchangeApiMinorVersion &&
                      api->dltensor_from_py_object_no_sync != nullptr;
  return usable ? api : nullptr;
}

TorchKind torch_kind(PyTypeObject* type) {
  static PyObject* torch_name = intern("torch");
  static PyObject* tensor_name = intern("Tensor");
  static PyObject* dispatch_name = intern("__torch_dispatch__");
  // torch is necessarily imported when one of its tensors exists.
  PyObject* torch = PyImport_GetModule(torch_name);
  if (torch == nullptr) {
    PyErr_Clear();
    return TorchKind::kNotTorch;
  }
  TorchKind kind = TorchKind::kNotTorch;
  PyObject* tensor_type = PyObject_GetAttr(torch, tensor_name);
  if (tensor_type != nullptr && PyType_Check(tensor_type) &&
      PyType_IsSubtype(type, reinterpret_cast<PyTypeObject*>(tensor_type))) {
    load_torch_dtypes(torch);
    if (g_strided == nullptr) g_strided = PyObject_GetAttrString(torch, "strided");
    PyObject* own = PyObject_GetAttr(reinterpret_cast<PyObject*>(type), dispatch_name);
    PyObject* inherited = PyObject_GetAttr(tensor_type, dispatch_name);
    // Without torch.strided the checks cannot run: treat it as not plain.
    const bool plain = own != nullptr && own == inherited && g_strided != nullptr;
    kind = plain ? TorchKind::kPlain : TorchKind::kDispatch;
    Py_XDECREF(own);
    Py_XDECREF(inherited);
  }
  Py_XDECREF(tensor_type);
  Py_DECREF(torch);
  PyErr_Clear();
  return kind;
}

TypeInfo inspect_type(PyTypeObject* type) {
  TypeInfo info;
  info.type = type;
  info.torch = torch_kind(type);
  if (info.torch == TorchKind::kDispatch) return info;  // no exchange API: its memory is not plain
  info.api = exchange_api_of(type);
  if (info.torch == TorchKind::kPlain) {
    static PyObject* is_neg = intern("is_neg");
    static PyObject* is_conj = intern("is_conj");
    static PyObject* requires_grad = intern("requires_grad");
    static PyObject* untyped_storage = intern("untyped_storage");
    info.is_neg = resolve_query(type, is_neg, true);
    info.is_conj = resolve_query(type, is_conj, true);
    info.requires_grad = resolve_query(type, requires_grad, false);
    info.untyped_storage = resolve_query(type, untyped_storage, true);
  }
  return info;
}

constexpr int kTypeCacheSize = 16;
TypeInfo g_types[kTypeCacheSize];
int g_type_count = 0;

// `x` itself, or a detached alias when `x` requires grad (which
// Tensor.numpy() refuses, and whose graph the view must not hold). New
// reference; nullptr on error.
PyObject* torch_view_base(PyObject* x, const TypeInfo& info) {
  static PyObject* detach = intern("detach");

  const int needs_grad = info.requires_grad.ask(x);
  if (needs_grad < 0) return nullptr;
  if (needs_grad == 0) {
    Py_INCREF(x);
    return x;
  }
  return PyObject_VectorcallMethod(detach, &x, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, nullptr);
}

// A type's name without its module, as type(x).__name__ gives it.
const char* short_name(PyTypeObject* type) {
  const char* dot = std::strrchr(type->tp_name, '.');
  return dot == nullptr ? type->tp_name : dot + 1;
}

}  // namespace

TypeInfo lookup_type(PyTypeObject* type) {
  for (int i = 0; i < g_type_count; ++i) {
    if (g_types[i].type == type) return g_types[i];
  }
  TypeInfo info = inspect_type(type);
  if (g_type_count < kTypeCacheSize) {  // beyond that, inspect each time
    Py_INCREF(type);
    g_types[g_type_count++] = info;
  }
  return info;
}

bool torch_memory_is_plain(PyObject* x, const TypeInfo& info, const DLTensor& tensor) {
  static PyObject* dtype_name = intern("dtype");

  if ((tensor.dtype.code == kDLInt || tensor.dtype.code == kDLUInt) && tensor.dtype.bits == 8) {
    PyObject* dtype = PyObject_GetAttr(x, dtype_name);
    Py_XDECREF(dtype);  // torch dtypes are singletons that outlive us: compare by identity
    // int8 and uint8 are the only 8-bit integers NumPy has; the sub-byte ones look the same
    if (torch_dtype_kind(dtype) != DtypeKind::kNative) return false;
  }
  if (info.is_neg.ask(x) != 0) return false;
  return tensor.dtype.code != kDLComplex || info.is_conj.ask(x) == 0;
}

// Tensor.numpy() views exactly what a plain view is right for, and refuses
// the rest (conj/neg bits, devices, layouts), which the fallback then
// handles. A refusal costs a C++ exception (tens of microseconds), so the
// common ones, grad and dtype, are screened here first.
PyObject* numpy_method_view(PyObject* x, const TypeInfo& info) {
  static PyObject* numpy_name = intern("numpy");
  static PyObject* dtype_name = intern("dtype");

  if (!info.is_plain_torch()) return nullptr;
  PyObject* dtype = PyObject_GetAttr(x, dtype_name);
  Py_XDECREF(dtype);
  if (torch_dtype_kind(dtype) != DtypeKind::kNative) {
    PyErr_Clear();
    return nullptr;
  }
  PyObject* base = torch_view_base(x, info);
  PyObject* array = base == nullptr
                        ? nullptr
                        : PyObject_VectorcallMethod(numpy_name, &base,
                                                    1 | PY_VECTORCALL_ARGUMENTS_OFFSET, nullptr);
  // Recent torch makes the view's base a detached alias of its own, which
  // holds the storage whatever is later done to `x` (`x.data = ...`,
  // `x.set_(...)`). Where the base is `x` itself, the view is remade over the
  // same memory with the storage as its base.
  if (array != nullptr && base == x && PyArray_BASE(reinterpret_cast<PyArrayObject*>(array)) == x) {
    PyObject* storage = info.untyped_storage.call(x);
    auto* tensor_view = reinterpret_cast<PyArrayObject*>(array);
    PyArray_Descr* descr = PyArray_DESCR(tensor_view);
    Py_INCREF(descr);
    PyObject* rebased =
        storage == nullptr
            ? nullptr
            : PyArray_NewFromDescr(&PyArray_Type, descr /* stolen */, PyArray_NDIM(tensor_view),
                                   PyArray_DIMS(tensor_view), PyArray_STRIDES(tensor_view),
                                   PyArray_DATA(tensor_view), NPY_ARRAY_WRITEABLE, nullptr);
    if (storage == nullptr) {
      Py_DECREF(descr);
    } else if (rebased == nullptr) {
      Py_DECREF(storage);
    } else if (PyArray_SetBaseObject(reinterpret_cast<PyArrayObject*>(rebased), storage) < 0) {
      Py_CLEAR(rebased);  // the storage reference was stolen all the same
    }
    Py_SETREF(array, rebased);
  }
  Py_XDECREF(base);
  if (array == nullptr) PyErr_Clear();
  return array;
}

namespace {

// 1 or 0 for a no-argument method's answer; -1 with a Python error set.
int ask_method(PyObject* x, PyObject* name) {
  PyObject* answer =
      PyObject_VectorcallMethod(name, &x, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET, nullptr);
  if (answer == nullptr) return -1;
  const int truth = PyObject_IsTrue(answer);
  Py_DECREF(answer);
  return truth;
}

// The first reason that applies, in the order the fallback handles them;
// false with a Python error set.
bool find_reason(PyObject* x, const TypeInfo& info, PyObject* device, PyObject* layout,
                 PyObject* dtype, TorchFacts* facts) {
  static PyObject* zerotensor_name = intern("_is_zerotensor");
  auto because = [facts](Why why, PyObject* reason) {
    facts->why = why;
    facts->reason = reason;
    return reason != nullptr;
  };
  if (info.torch == TorchKind::kDispatch) {
    return because(Why::kDispatch,
                   PyUnicode_FromFormat("it is a %s, a tensor subclass with its own "
                                        "__torch_dispatch__, whose memory is not plain",
                                        short_name(Py_TYPE(x))));
  }
  if (layout != g_strided) {
    return because(Why::kLayout,
                   PyUnicode_FromFormat("its layout is %S (it must be densified)", layout));
  }
  const int zeros = ask_method(x, zerotensor_name);
  if (zeros != 0) {
    return zeros > 0 &&
           because(Why::kZeros, PyUnicode_FromString("it is a ZeroTensor (zeros with no memory "
                                                     "behind them)"));
  }
  if (PyUnicode_CompareWithASCIIString(facts->device_type, "cpu") != 0) {
    return because(Why::kDevice, PyUnicode_FromFormat("its memory is on %S", device));
  }
  const int conj = info.is_conj.ask(x);
  if (conj != 0) {
    return conj > 0 &&
           because(Why::kConj, PyUnicode_FromString("it has the conjugate bit set "
                                                    "(x.resolve_conj() materialises it)"));
  }
  const int neg = info.is_neg.ask(x);
  if (neg != 0) {
    return neg > 0 && because(Why::kNeg, PyUnicode_FromString("it has the negative bit set "
                                                              "(x.resolve_neg() materialises it)"));
  }
  if (torch_dtype_kind(dtype) == DtypeKind::kWidened) {
    return because(Why::kWidened, PyUnicode_FromFormat(
                                      "%S has no NumPy dtype and is widened to complex64", dtype));
  }
  return true;
}

}  // namespace

bool torch_facts(PyObject* x, const TypeInfo& info, TorchFacts* facts) {
  static PyObject* device_name = intern("device");
  static PyObject* type_name = intern("type");
  static PyObject* layout_name = intern("layout");
  static PyObject* dtype_name = intern("dtype");

  *facts = TorchFacts{};
  PyObject* device = PyObject_GetAttr(x, device_name);
  if (device == nullptr) return false;
  PyObject* layout = nullptr;
  PyObject* dtype = nullptr;
  bool ok = (facts->device_type = PyObject_GetAttr(device, type_name)) != nullptr &&
            PyUnicode_Check(facts->device_type) &&
            (layout = PyObject_GetAttr(x, layout_name)) != nullptr &&
            (dtype = PyObject_GetAttr(x, dtype_name)) != nullptr &&
            find_reason(x, info, device, layout, dtype, facts);
  if (!ok && !PyErr_Occurred()) {
    PyErr_Format(PyExc_TypeError, "to_numpy: this %s reports a device type that is not a str",
                 short_name(Py_TYPE(x)));
  }
  Py_DECREF(device);
  Py_XDECREF(layout);
  Py_XDECREF(dtype);
  if (!ok) {
    Py_CLEAR(facts->device_type);
    Py_CLEAR(facts->reason);
    facts->why = Why::kNothing;
  }
  return ok;
}

}  // namespace tensorbridge

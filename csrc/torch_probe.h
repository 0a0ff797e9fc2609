// What the native core learns about a Python type once (is it a torch
// tensor? does it publish the DLPack C exchange API?) and the questions it
// puts to a torch tensor. All of it runs with the GIL held.
#pragma once

#include "dlpack.h"
#include "numpy_api.h"
#include "python_helpers.h"

namespace tensorbridge {

// A question put to a torch tensor: a no-argument method (is_neg(),
// is_conj(), untyped_storage()) or an attribute (requires_grad). Resolved
// once per type to torch's own C implementation, which the call then reaches
// directly, skipping Python's attribute lookup (a third of the fast path's
// time); a type that overrides it in Python gets the generic call.
struct TorchQuery {
  PyObject* name = nullptr;
  bool is_method = false;
  PyCFunction method = nullptr;  // METH_NOARGS implementation, or nullptr
  getter get = nullptr;          // getset implementation, or nullptr
  void* closure = nullptr;

  // The answer (new reference), or nullptr with a Python error set.
  PyObject* call(PyObject* x) const;
  // 1 or 0; -1 with a Python error set.
  int ask(PyObject* x) const;
};

enum class TorchKind {
  kNotTorch,
  kPlain,     // torch.Tensor or a subclass whose memory is the tensor's own
  kDispatch,  // a subclass with its own __torch_dispatch__ (a wrapper,
              // FakeTensor, DTensor): the exchange API would hand out a
              // meaningless pointer, so Python copies it through torch
};

// What we learnt about a Python type. Types are held by a strong reference
// so that a cached address can never be reused by another type.
struct TypeInfo {
  PyTypeObject* type = nullptr;
  const dlpack::DLPackExchangeAPI* api = nullptr;  // nullptr: no usable exchange API
  TorchKind torch = TorchKind::kNotTorch;
  TorchQuery is_neg, is_conj, requires_grad, untyped_storage;  // set for plain torch types

  bool is_plain_torch() const { return torch == TorchKind::kPlain; }
};

TypeInfo lookup_type(PyTypeObject* type);

// Whether the exchange API's raw view of a plain torch tensor shows its
// values: it reports conj- and neg-bit tensors as their raw memory (the
// values would be silently wrong), and sub-byte integer dtypes as 8-bit ones.
// False, with a Python error possibly set, otherwise.
bool torch_memory_is_plain(PyObject* x, const TypeInfo& info, const dlpack::DLTensor& tensor);

// The view Tensor.numpy() gives of a plain torch CPU tensor (of a detached
// alias when it requires grad), with its storage as the base; nullptr with no
// Python error set when Tensor.numpy() does not apply. Tensor.numpy() marks
// the storage unresizable for good: only for a view that is returned as is.
PyObject* numpy_method_view(PyObject* x, const TypeInfo& info);

// Why NumPy cannot view a torch tensor's values where they are, the first
// that applies in this order.
enum class Why {
  kNothing,   // its memory shows its values: NumPy can view it (on the CPU)
  kDispatch,  // a subclass with its own __torch_dispatch__, whose memory is not plain
  kLayout,    // not strided (sparse, MKL-DNN): it must be densified
  kZeros,     // a ZeroTensor: zeros with no memory behind them
  kDevice,    // its memory is not the CPU's
  kConj,      // the conjugate bit is set
  kNeg,       // the negative bit is set
  kWidened,   // complex32: no NumPy dtype, widened to complex64
};

// What a torch tensor says of itself, from its own answers.
struct TorchFacts {
  PyObject* device_type = nullptr;  // new reference: torch's device type ("cpu", "cuda", "meta")
  Why why = Why::kNothing;
  PyObject* reason = nullptr;  // new reference: the explanation of `why`, for error messages
};

// Fills `facts`; false with a Python error set (and nothing to release) when
// the tensor's answers raise.
bool torch_facts(PyObject* x, const TypeInfo& info, TorchFacts* facts);

}  // namespace tensorbridge

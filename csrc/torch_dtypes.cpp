#include "torch_dtypes.h"

namespace tensorbridge {

const TorchDtype kTorchDtypes[] = {
    {"bool", "bool", DtypeKind::kNative},
    {"uint8", "uint8", DtypeKind::kNative},
    {"uint16", "uint16", DtypeKind::kNative},
    {"uint32", "uint32", DtypeKind::kNative},
    {"uint64", "uint64", DtypeKind::kNative},
    {"int8", "int8", DtypeKind::kNative},
    {"int16", "int16", DtypeKind::kNative},
    {"int32", "int32", DtypeKind::kNative},
    {"int64", "int64", DtypeKind::kNative},
    {"float16", "float16", DtypeKind::kNative},
    {"float32", "float32", DtypeKind::kNative},
    {"float64", "float64", DtypeKind::kNative},
    {"complex64", "complex64", DtypeKind::kNative},
    {"complex128", "complex128", DtypeKind::kNative},
    {"bfloat16", "bfloat16", DtypeKind::kExtended},
    {"float8_e4m3fn", "float8_e4m3fn", DtypeKind::kExtended},
    {"float8_e5m2", "float8_e5m2", DtypeKind::kExtended},
    {"float8_e4m3fnuz", "float8_e4m3fnuz", DtypeKind::kExtended},
    {"float8_e5m2fnuz", "float8_e5m2fnuz", DtypeKind::kExtended},
    {"float8_e8m0fnu", "float8_e8m0fnu", DtypeKind::kExtended},
    {"complex32", "complex64", DtypeKind::kWidened},
};
const int kTorchDtypeCount = sizeof(kTorchDtypes) / sizeof(kTorchDtypes[0]);

const char* kind_name(DtypeKind kind) {
  switch (kind) {
    case DtypeKind::kNative: return "native";
    case DtypeKind::kExtended: return "extended";
    case DtypeKind::kWidened: return "widened";
    case DtypeKind::kNone: break;
  }
  return "none";
}

namespace {
// Strong references to torch's dtype objects, so that an address can never
// be reused; nullptr where this torch lacks the dtype (older releases).
PyObject* g_torch_dtypes[sizeof(kTorchDtypes) / sizeof(kTorchDtypes[0])] = {};
bool g_loaded = false;
}  // namespace

void load_torch_dtypes(PyObject* torch) {
  if (g_loaded) return;
  for (int i = 0; i < kTorchDtypeCount; ++i) {
    g_torch_dtypes[i] = PyObject_GetAttrString(torch, kTorchDtypes[i].torch_name);
    if (g_torch_dtypes[i] == nullptr) PyErr_Clear();
  }
  g_loaded = true;
}

DtypeKind torch_dtype_kind(PyObject* torch_dtype) {
  for (int i = 0; i < kTorchDtypeCount; ++i) {
    if (g_torch_dtypes[i] != nullptr && g_torch_dtypes[i] == torch_dtype) {
      return kTorchDtypes[i].kind;
    }
  }
  return DtypeKind::kNone;
}

}  // namespace tensorbridge

#include "dtypes.h"

#include <string>

namespace tensorbridge {
namespace {

using dlpack::DLDataType;

// ml_dtypes' attribute name for each extended float code with 8 or 16 bits.
const char* ml_dtypes_name(uint8_t code, uint8_t bits) {
  using namespace dlpack;
  if (code == kDLBfloat && bits == 16) return "bfloat16";
  if (bits != 8) return nullptr;
  switch (code) {
    case kDLFloat8_e3m4: return "float8_e3m4";
    case kDLFloat8_e4m3: return "float8_e4m3";
    case kDLFloat8_e4m3b11fnuz: return "float8_e4m3b11fnuz";
    case kDLFloat8_e4m3fn: return "float8_e4m3fn";
    case kDLFloat8_e4m3fnuz: return "float8_e4m3fnuz";
    case kDLFloat8_e5m2: return "float8_e5m2";
    case kDLFloat8_e5m2fnuz: return "float8_e5m2fnuz";
    case kDLFloat8_e8m0fnu: return "float8_e8m0fnu";
    default: return nullptr;
  }
}

int numpy_type_number(uint8_t code, uint8_t bits) {
  using namespace dlpack;
  switch (code) {
    case kDLBool: return bits == 8 ? NPY_BOOL : -1;
    case kDLInt:
      switch (bits) {
        case 8: return NPY_INT8;
        case 16: return NPY_INT16;
        case 32: return NPY_INT32;
        case 64: return NPY_INT64;
      }
      return -1;
    case kDLUInt:
      switch (bits) {
        case 8: return NPY_UINT8;
        case 16: return NPY_UINT16;
        case 32: return NPY_UINT32;
        case 64: return NPY_UINT64;
      }
      return -1;
    case kDLFloat:
      switch (bits) {
        case 16: return NPY_FLOAT16;
        case 32: return NPY_FLOAT32;
        case 64: return NPY_FLOAT64;
      }
      return -1;
    case kDLComplex:
      switch (bits) {
        case 64: return NPY_COMPLEX64;
        case 128: return NPY_COMPLEX128;
      }
      return -1;
  }
  return -1;
}

// Resolved ml_dtypes descriptors, by DLPack code; filled lazily so that
// `import tensorbridge` does not pay for importing ml_dtypes. Guarded by the GIL.
PyArray_Descr* g_extended[dlpack::kDLDataTypeCodeCount] = {};

PyArray_Descr* extended_descr(uint8_t code, uint8_t bits) {
  const char* name = ml_dtypes_name(code, bits);
  if (name == nullptr) return nullptr;
  if (g_extended[code] == nullptr) {
    PyObject* module = PyImport_ImportModule("ml_dtypes");
    PyObject* type = module ? PyObject_GetAttrString(module, name) : nullptr;
    PyArray_Descr* descr = nullptr;
    if (type != nullptr && PyArray_DescrConverter(type, &descr) != NPY_SUCCEED) {
      descr = nullptr;
    }
    Py_XDECREF(type);
    Py_XDECREF(module);
    // An old or missing ml_dtypes is reported by the Python fallback, which
    // names the version needed; here it only means "no descriptor".
    PyErr_Clear();
    if (descr == nullptr) return nullptr;
    g_extended[code] = descr;  // keeps the reference for the process lifetime
  }
  Py_INCREF(g_extended[code]);
  return g_extended[code];
}

}  // namespace

PyArray_Descr* descr_for(DLDataType dtype) {
  if (dtype.lanes != 1 || dtype.code >= dlpack::kDLDataTypeCodeCount) return nullptr;
  int type_number = numpy_type_number(dtype.code, dtype.bits);
  if (type_number >= 0) return PyArray_DescrFromType(type_number);
  return extended_descr(dtype.code, dtype.bits);
}

std::string dtype_name(DLDataType dtype) {
  using namespace dlpack;
  std::string base;
  switch (dtype.code) {
    case kDLInt: base = "int"; break;
    case kDLUInt: base = "uint"; break;
    case kDLFloat: base = "float"; break;
    case kDLBfloat: base = "bfloat"; break;
    case kDLComplex: base = "complex"; break;
    case kDLBool: base = "bool"; break;
    case kDLOpaqueHandle: return "opaque handle";
    default: {
      const char* name = ml_dtypes_name(dtype.code, 8);
      if (name != nullptr && dtype.bits == 8) return name;
      if (dtype.code == kDLFloat6_e2m3fn) return "float6_e2m3fn";
      if (dtype.code == kDLFloat6_e3m2fn) return "float6_e3m2fn";
      if (dtype.code == kDLFloat4_e2m1fn) return "float4_e2m1fn";
      return "DLPack type code " + std::to_string(dtype.code);
    }
  }
  std::string name = base + std::to_string(dtype.bits);
  if (dtype.lanes != 1) name += "x" + std::to_string(dtype.lanes);
  return name;
}

}  // namespace tensorbridge

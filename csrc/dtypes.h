// DLPack element types -> NumPy dtypes.
#pragma once

#include "dlpack.h"
#include "numpy_api.h"

#include <string>

namespace tensorbridge {

// The NumPy dtype for a DLPack element type, as a new reference, or nullptr
// (with no Python error set) when NumPy and ml_dtypes have no such type:
// complex32, sub-byte and packed types, vector lanes, opaque handles.
// bfloat16 and float8 map to ml_dtypes, imported on first use.
PyArray_Descr* descr_for(dlpack::DLDataType dtype);

// A readable name for an element type, for error messages ("complex32").
std::string dtype_name(dlpack::DLDataType dtype);

}  // namespace tensorbridge

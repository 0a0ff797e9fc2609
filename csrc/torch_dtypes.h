// Which NumPy dtype each torch dtype becomes: the one table that both the
// native core and tensorbridge._dtypes read (as _core.TORCH_DTYPES).
#pragma once

#include "numpy_api.h"

namespace tensorbridge {

enum class DtypeKind {
  kNone,      // NumPy cannot hold it (quantized, sub-byte, packed, bits)
  kNative,    // NumPy has it under the same name: Tensor.numpy() views it
  kExtended,  // ml_dtypes has it (bfloat16, float8): viewed as well
  kWidened,   // NumPy holds its values only after a widening copy (complex32)
};

struct TorchDtype {
  const char* torch_name;  // the attribute of the torch module
  const char* numpy_name;  // NumPy's (or ml_dtypes') name for the result
  DtypeKind kind;
};

extern const TorchDtype kTorchDtypes[];
extern const int kTorchDtypeCount;

const char* kind_name(DtypeKind kind);

// Looks the table's dtypes up in the torch module, once (GIL held): the
// torch probe calls it when it meets the first torch tensor type.
void load_torch_dtypes(PyObject* torch);

// The kind of a torch dtype object (torch dtypes are singletons, compared by
// identity); kNone for dtypes NumPy cannot hold, and before torch is loaded.
DtypeKind torch_dtype_kind(PyObject* torch_dtype);

}  // namespace tensorbridge

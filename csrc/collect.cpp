#include "collect.h"

#include <cstring>
#include <exception>

#include "dlpack_import.h"
#include "dtypes.h"
#include "exchange.h"
#include "host_copy.h"
#include "to_numpy.h"
#include "torch_probe.h"

namespace tensorbridge {
namespace {

using namespace dlpack;

// A batch at least this large is copied on several threads, without the GIL.
constexpr size_t kThreadedCopyBytes = size_t{1} << 20;
// Ctrl-C is looked at every this many batches (a list's iterator runs no
// Python code that would look at it).
constexpr Py_ssize_t kSignalCheckInterval = 4096;

// One batch's compact row-major host memory.
struct HostBatch {
  const char* data = nullptr;
  int ndim = 0;
  int64_t shape[NPY_MAXDIMS] = {};
  PyArray_Descr* descr = nullptr;  // new reference
  TypeInfo info;                   // for a torch tensor: how to reach its storage

  HostBatch() = default;
  HostBatch(const HostBatch&) = delete;
  HostBatch& operator=(const HostBatch&) = delete;
  ~HostBatch() { Py_XDECREF(descr); }
};

// Fills `batch` when `x` is memory collect copies as raw bytes: an exact
// NumPy array, C-contiguous, of at least one dimension and a dtype without
// Python objects; or a plain torch tensor on the CPU read through the
// exchange API, compact row-major, whose raw memory shows its values.
// False (no Python error set) for anything else.
bool read_host_batch(PyObject* x, HostBatch* batch) {
  if (PyArray_CheckExact(x)) {
    auto* array = reinterpret_cast<PyArrayObject*>(x);
    PyArray_Descr* descr = PyArray_DESCR(array);
    if (PyArray_NDIM(array) < 1 || !PyArray_IS_C_CONTIGUOUS(array) || PyDataType_REFCHK(descr)) {
      return false;
    }
    batch->data = PyArray_BYTES(array);
    batch->ndim = PyArray_NDIM(array);
    for (int i = 0; i < batch->ndim; ++i) batch->shape[i] = PyArray_DIM(array, i);
    Py_INCREF(descr);
    batch->descr = descr;
    return true;
  }
  batch->info = lookup_type(Py_TYPE(x));
  if (!batch->info.is_plain_torch() || batch->info.api == nullptr || !exchange_api_enabled()) {
    return false;
  }
  DLTensor tensor{};
  if (!read_exchanged(x, batch->info, &tensor) || tensor.device.device_type != kDLCPU ||
      tensor.ndim < 1 || tensor.ndim > NPY_MAXDIMS || !is_row_major(tensor)) {
    return false;
  }
  batch->descr = descr_for(tensor.dtype);
  if (batch->descr == nullptr) return false;
  batch->data = static_cast<const char*>(tensor.data) + tensor.byte_offset;
  batch->ndim = tensor.ndim;
  for (int i = 0; i < tensor.ndim; ++i) batch->shape[i] = tensor.shape[i];
  return true;
}

bool same_layout(const HostBatch& batch, const GatherState& state) {
  if (static_cast<size_t>(batch.ndim) != state.trailing.size() + 1) return false;
  for (size_t i = 0; i < state.trailing.size(); ++i) {
    if (batch.shape[i + 1] != state.trailing[i]) return false;
  }
  return PyArray_EquivTypes(batch.descr, state.descr) != 0;
}

// Bytes of one row; false when that or `rows` rows of it overflow.
bool bytes_of(const GatherState& state, Py_ssize_t rows, size_t* row_bytes, size_t* bytes) {
  size_t size = static_cast<size_t>(PyDataType_ELSIZE(state.descr));
  for (int64_t n : state.trailing) {
    if (n < 0 || __builtin_mul_overflow(size, static_cast<size_t>(n), &size)) return false;
  }
  *row_bytes = size;
  return rows >= 0 && !__builtin_mul_overflow(size, static_cast<size_t>(rows), bytes);
}

// Where the rows of the next batch go, with room for `rows_after` rows in
// all; nullptr when there is none (out= too small, memory refused): the
// Python writer says why.
char* room_for(const GatherDestination& destination, Py_ssize_t rows_after, size_t row_bytes) {
  if (destination.out != nullptr) {
    if (rows_after > PyArray_DIM(destination.out, 0)) return nullptr;
    return PyArray_BYTES(destination.out);
  }
  size_t bytes = 0;
  if (__builtin_mul_overflow(row_bytes, static_cast<size_t>(rows_after), &bytes)) return nullptr;
  try {
    destination.buffer->reserve(bytes);
  } catch (const std::exception&) {
    return nullptr;  // refused: the Python writer tries again and names the failure
  }
  return destination.buffer->data();
}

bool overlaps(const char* a, size_t a_bytes, const char* b, size_t b_bytes) {
  return a < b + b_bytes && b < a + a_bytes;
}

// Copies `batch` after the rows written so far; false (nothing written) when
// the Python writer must handle it.
bool take(PyObject* x, const HostBatch& batch, const GatherDestination& destination,
          GatherState* state) {
  if (state->has_layout) {
    if (!same_layout(batch, *state)) return false;
  } else {
    if (destination.out != nullptr) {  // out= must have the first batch's layout
      PyArrayObject* out = destination.out;
      if (PyArray_NDIM(out) != batch.ndim || !PyArray_EquivTypes(PyArray_DESCR(out), batch.descr))
        return false;
      for (int i = 1; i < batch.ndim; ++i) {
        if (PyArray_DIM(out, i) != batch.shape[i]) return false;
      }
    }
    state->trailing.assign(batch.shape + 1, batch.shape + batch.ndim);
    Py_INCREF(batch.descr);
    state->descr = batch.descr;
    state->has_layout = true;
    size_t row_bytes = 0, expected_bytes = 0;
    if (destination.buffer != nullptr && state->expected_rows > 0 &&
        bytes_of(*state, state->expected_rows, &row_bytes, &expected_bytes)) {
      try {
        destination.buffer->reserve(expected_bytes);  // the whole sequence at once
      } catch (const std::exception&) {
        state->expected_rows = -1;  // more than memory holds was announced: grow as they come
      }
    }
  }
  const Py_ssize_t rows = static_cast<Py_ssize_t>(batch.shape[0]);
  size_t row_bytes = 0, bytes = 0;
  if (!bytes_of(*state, rows, &row_bytes, &bytes)) return false;
  char* dst = nullptr;
  if (row_bytes > 0) {
    char* base = room_for(destination, state->rows + rows, row_bytes);
    if (base == nullptr) return false;
    if (destination.out != nullptr &&
        overlaps(batch.data, bytes, base, static_cast<size_t>(PyArray_NBYTES(destination.out)))) {
      return false;  // out='s own memory: NumPy's ordering rules apply (the Python writer)
    }
    dst = base + static_cast<size_t>(state->rows) * row_bytes;
  } else if (destination.out != nullptr && state->rows + rows > PyArray_DIM(destination.out, 0)) {
    return false;
  }
  if (bytes >= kThreadedCopyBytes) {
    // Without the GIL another thread may give a tensor other memory
    // (t.set_(), t.data = ...): its storage keeps this memory alive meanwhile.
    PyObject* keep = batch.info.is_plain_torch() ? batch.info.untyped_storage.call(x) : x;
    if (keep == nullptr) {
      PyErr_Clear();
      std::memcpy(dst, batch.data, bytes);
    } else {
      if (keep == x) Py_INCREF(keep);
      PyThreadState* released = PyEval_SaveThread();
      parallel_memcpy(dst, batch.data, bytes);
      PyEval_RestoreThread(released);
      Py_DECREF(keep);
    }
  } else if (bytes > 0) {
    std::memcpy(dst, batch.data, bytes);
  }
  state->rows += rows;
  state->index += 1;
  return true;
}

}  // namespace

PyObject* gather_host(PyObject* iterator, const GatherDestination& destination, GatherState* state,
                      bool* exhausted) {
  *exhausted = false;
  for (;;) {
    PyObject* item = PyIter_Next(iterator);
    if (item == nullptr) {
      if (PyErr_Occurred()) return nullptr;
      *exhausted = true;
      Py_RETURN_NONE;
    }
    HostBatch batch;
    if (!read_host_batch(item, &batch) || !take(item, batch, destination, state)) {
      return item;  // the Python writer's
    }
    Py_DECREF(item);  // no reference outlives its copy: the producer may reuse the memory
    if (state->index % kSignalCheckInterval == 0 && PyErr_CheckSignals() < 0) return nullptr;
  }
}

}  // namespace tensorbridge

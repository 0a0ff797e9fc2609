// collect's host path: the batches whose memory the CPU reads whole (NumPy
// arrays, plain CPU torch tensors read through the DLPack C exchange API),
// pulled from the caller's iterator and copied straight after the rows
// already written, with no Python call per batch.
//
// Design note. collect's per-batch cost was Python's: a route, a view, a
// slice and an assignment per batch, several times what copying 256 bytes
// costs. Here one C loop takes batch after batch while each is plain,
// compact host memory of the first batch's trailing shape and dtype, and
// hands back the first batch it does not take (another kind of input, a
// mismatch, out= too small or overlapping the batch, memory refused): the
// Python writer then handles that batch, with its errors and their wording,
// and calls back in. Nothing about a batch is decided twice: what is taken
// here is exactly what the Python path would have copied the same way.
#pragma once

#include <vector>

#include "growable_buffer.h"
#include "numpy_api.h"

namespace tensorbridge {

// Where the rows go: a GrowableBuffer that grows as needed, or a fixed
// C-contiguous array (collect's out=) of `capacity_rows` rows.
struct GatherDestination {
  GrowableBuffer* buffer = nullptr;  // no BufferView may be alive (growth moves it)
  PyArrayObject* out = nullptr;      // borrowed
};

// What collect's writer knows; updated as batches are taken.
struct GatherState {
  GatherState() = default;
  GatherState(const GatherState&) = delete;
  GatherState& operator=(const GatherState&) = delete;
  ~GatherState() { Py_XDECREF(descr); }

  Py_ssize_t rows = 0;             // rows written so far
  Py_ssize_t index = 0;            // batches taken so far
  bool has_layout = false;         // trailing and descr are set (by a batch taken before)
  std::vector<int64_t> trailing;   // every batch's shape after its rows
  PyArray_Descr* descr = nullptr;  // owned once has_layout
  Py_ssize_t expected_rows = -1;   // the rows a sequence announced, reserved up front; -1: unknown
};

// Takes batches from `iterator` (a Python iterator) into `destination` while
// each qualifies. Returns a new reference: the first batch not taken; or
// Py_None (borrowed semantics do not apply: a new reference to None) with
// `*exhausted` set when the iterator ended; or nullptr with a Python error
// set when the iterator raised (or on Ctrl-C).
PyObject* gather_host(PyObject* iterator, const GatherDestination& destination, GatherState* state,
                      bool* exhausted);

}  // namespace tensorbridge

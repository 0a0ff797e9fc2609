// The Python module `tensorbridge._core`: bindings only, no logic.
#define TENSORBRIDGE_IMPORT_ARRAY
#include "numpy_api.h"

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <utility>

#include "collect.h"
#include "cuda_driver.h"
#include "dlpack_import.h"
#include "exchange.h"
#include "growable_buffer.h"
#include "host_copy.h"
#include "interrupt.h"
#include "pinned_in_place.h"
#include "pinned_pool.h"
#include "to_numpy.h"
#include "torch_dtypes.h"
#include "torch_probe.h"
#include "transfer.h"

namespace py = pybind11;
namespace tb = tensorbridge;

namespace {

// to_numpy is a plain vectorcall function: pybind11's dispatcher costs more
// than the whole fast path.
PyMethodDef to_numpy_def = {
    "to_numpy", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(tb::to_numpy)),
    METH_FASTCALL | METH_KEYWORDS, tb::kToNumpyDoc};

// Pinned memory handed to Python: a buffer whose block returns to the pool
// when the last view of it dies.
class PinnedBuffer {
 public:
  explicit PinnedBuffer(size_t bytes)
      : bytes_(bytes), block_(tb::PinnedPool::instance().acquire(tb::kAnyDevice, bytes)) {}
  ~PinnedBuffer() { tb::PinnedPool::instance().release(block_); }
  PinnedBuffer(const PinnedBuffer&) = delete;
  PinnedBuffer& operator=(const PinnedBuffer&) = delete;
  py::buffer_info buffer() {
    return py::buffer_info(block_.data, 1, "B", 1, {static_cast<py::ssize_t>(bytes_)}, {1}, false);
  }
  uintptr_t address() const { return reinterpret_cast<uintptr_t>(block_.data); }

 private:
  size_t bytes_;
  tb::Block block_;
};

// An array pinned where it is (tb.pin's handle holds one): registered on
// construction, unregistered by close() or when collected, or later, once the
// copies in flight that use it have completed (pinned_in_place.h). Holds the
// array, so that its memory outlives the registration.
class PinnedRange {
 public:
  explicit PinnedRange(const py::buffer& array) : owner_(array) {
    {
      py::buffer_info info = array.request(/*writable=*/true);
      data_ = info.ptr;
      bytes_ = static_cast<size_t>(info.size * info.itemsize);
    }
    py::gil_scoped_release release;  // page-locking takes time in proportion to the size
    id_ = tb::PinnedInPlace::instance().pin(data_, bytes_);
  }
  // Under a garbage collection: unregisters now (holding the GIL) when no
  // copy uses the memory; a driver failure cannot be reported here.
  ~PinnedRange() {
    try {
      if (id_ != 0) tb::PinnedInPlace::instance().unpin(data_, std::exchange(id_, 0));
    } catch (const std::exception&) {
    }
  }
  PinnedRange(const PinnedRange&) = delete;
  PinnedRange& operator=(const PinnedRange&) = delete;
  void close() {
    const uint64_t id = std::exchange(id_, 0);  // under the GIL: one close unpins
    if (id == 0) return;
    py::gil_scoped_release release;
    tb::PinnedInPlace::instance().unpin(data_, id);
  }
  bool closed() const { return id_ == 0; }
  uintptr_t address() const { return reinterpret_cast<uintptr_t>(data_); }
  size_t nbytes() const { return bytes_; }

 private:
  py::object owner_;
  void* data_ = nullptr;
  size_t bytes_ = 0;
  uint64_t id_ = 0;  // 0 once closed
};

// The address of a writeable buffer that holds at least `nbytes`.
void* writable_address(const py::buffer& buffer, size_t nbytes) {
  py::buffer_info info = buffer.request(/*writable=*/true);
  if (static_cast<size_t>(info.size * info.itemsize) < nbytes) {
    throw std::invalid_argument("the destination buffer holds " +
                                std::to_string(info.size * info.itemsize) + " bytes, fewer than " +
                                std::to_string(nbytes));
  }
  return info.ptr;
}

tb::cuda::CUstream as_stream(uintptr_t handle) {
  return reinterpret_cast<tb::cuda::CUstream>(handle);
}

// Runs a synchronous copy with the GIL released and Ctrl-C checked between
// its waits; on Ctrl-C, raises KeyboardInterrupt and leaves what is still in
// flight for `_core.take_interrupted()`.
template <class Copy>
void interruptibly(Copy&& copy) {
  const tb::InterruptCheck interrupted = tb::python_interrupt_check();
  try {
    py::gil_scoped_release release;
    copy(interrupted);
  } catch (const tb::CopyInterrupted& stop) {
    tb::set_interrupted(stop.pending);
    throw py::error_already_set();  // the KeyboardInterrupt the check left set
  }
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  if (_import_array() < 0) throw py::error_already_set();
  tb::init_interrupts();
  m.def("init_interrupts", &tb::init_interrupts,
        "Take note of Python's main thread again (after fork, in the child).");
  m.doc() = "tensorbridge's native core";

  m.add_object("to_numpy", py::reinterpret_steal<py::object>(PyCFunction_NewEx(
                               &to_numpy_def, nullptr, m.attr("__name__").ptr())));
  m.def(
      "array_from_capsule",
      [](py::handle capsule) {
        PyObject* array = tb::array_from_capsule(capsule.ptr());
        if (array == nullptr) throw py::error_already_set();
        return py::reinterpret_steal<py::object>(array);
      },
      py::arg("capsule"), "Consume a DLPack capsule and return a NumPy array viewing it.");
  m.def(
      "route",
      [](py::handle x, bool numpy_method) {
        PyObject* found = tb::route(x.ptr(), numpy_method);
        if (found == nullptr) throw py::error_already_set();
        return py::reinterpret_steal<py::object>(found);
      },
      py::arg("x"), py::arg("numpy_method") = true,
      "The Route of `x`, as the fallback receives it (numpy_method=False: never a view "
      "through Tensor.numpy(), which marks the storage unresizable).");
  m.def(
      "describe_capsule",
      [](py::handle capsule) {
        PyObject* result = tb::describe_capsule(capsule.ptr());
        if (result == nullptr) throw py::error_already_set();
        return py::reinterpret_steal<py::object>(result);
      },
      py::arg("capsule"), "Consume a DLPack capsule and describe where its memory is.");
  if (!tb::add_route_types(m.ptr()) || !tb::add_capsule_types(m.ptr())) {
    throw py::error_already_set();
  }
  {
    py::list table;  // (torch name, NumPy name, kind): the one torch -> NumPy dtype table
    for (int i = 0; i < tb::kTorchDtypeCount; ++i) {
      const tb::TorchDtype& d = tb::kTorchDtypes[i];
      table.append(py::make_tuple(d.torch_name, d.numpy_name, tb::kind_name(d.kind)));
    }
    m.attr("TORCH_DTYPES") = py::tuple(table);
  }
  {
    namespace dl = tb::dlpack;
    py::set readable, cuda;
    for (dl::DLDeviceType type : dl::kCpuReadableDevices) readable.add(static_cast<int>(type));
    for (dl::DLDeviceType type : dl::kCudaDeviceTypes) cuda.add(static_cast<int>(type));
    m.attr("CPU_READABLE_DEVICES") = py::frozenset(readable);
    m.attr("CUDA_DEVICE_TYPES") = py::frozenset(cuda);
    m.attr("DLPACK_MAX_VERSION") = py::make_tuple(dl::kMajorVersion, dl::kMinorVersion);
    m.attr("NUMPY_MAXDIMS") = tb::numpy_max_dims();
  }
  m.def("set_fallback", [](py::object fallback) { tb::set_fallback(fallback.ptr()); });
  m.def(
      "exchange_api_usable",
      [](py::type type) {
        return tb::lookup_type(reinterpret_cast<PyTypeObject*>(type.ptr())).api != nullptr;
      },
      py::arg("type"),
      "Whether the native core reads instances of `type` through its exchange API.");
  m.def("set_fast_path", &tb::set_fast_path, py::arg("enabled"));
  m.def("set_exchange_api", &tb::set_exchange_api, py::arg("enabled"));

  // -- the CUDA engine: driver, pinned pool, transfers --------------------
  py::register_exception<tb::cuda::DriverError>(m, "DriverError", PyExc_RuntimeError);
  tb::set_driver_error_type(m.attr("DriverError").ptr());
  py::register_exception<std::length_error>(m, "PinnedLimitError", PyExc_MemoryError);
  m.def("cuda_available", &tb::cuda::available);
  m.def("cuda_status", [] {
    const tb::cuda::Status s = tb::cuda::status();
    py::dict d;
    d["available"] = s.available;
    d["library"] = s.library.empty() ? py::object(py::none()) : py::object(py::str(s.library));
    d["driver_version"] = s.driver_version;
    d["device_count"] = s.device_count;
    d["reason"] = s.reason;
    return d;
  });
  m.def("driver_entry_points", [] {
    py::list entries;
    for (const tb::cuda::EntryPoint& e : tb::cuda::entry_points()) {
      py::dict d;
      d["name"] = e.name;
      d["version"] = e.version;
      d["optional"] = !e.required;
      d["resolved"] = e.resolved;
      entries.append(d);
    }
    return entries;
  });
  m.def(
      "take_interrupted", [] { return tb::take_interrupted(); },
      "What the last interrupted copy of this thread left in flight (a Transfer), or None.");
  m.def("driver_version", &tb::cuda::driver_version);
  m.def("device_count", &tb::cuda::device_count);
  m.def("device_name", &tb::cuda::device_name, py::arg("ordinal"));

  py::class_<tb::Transfer, std::shared_ptr<tb::Transfer>>(m, "Transfer")
      .def("done", &tb::Transfer::done)
      .def("wait", &tb::Transfer::finished_within, py::arg("timeout_seconds"),
           py::call_guard<py::gil_scoped_release>())
      .def("error", &tb::Transfer::error)
      .def("post_when_done", &tb::Transfer::post_when_done, py::arg("token"),
           "Post `token` to take_finished() once finished (at once if it is).");
  m.def("take_finished", &tb::take_finished, py::call_guard<py::gil_scoped_release>(),
        "Wait until Transfers have finished, and take their tokens (post_when_done).");
  m.def("post_finished", &tb::post_finished, py::arg("token"),
        "Post `token` to take_finished() now.");

  py::class_<PinnedBuffer>(m, "PinnedBuffer", py::buffer_protocol())
      // Allocating pinned memory takes 0.3-1 s per GB: other threads run meanwhile.
      .def(py::init<size_t>(), py::arg("nbytes"), py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("address", &PinnedBuffer::address)
      .def_buffer(&PinnedBuffer::buffer);

  m.def("pinned_stats", [] {
    const tb::PinnedStats s = [] {
      py::gil_scoped_release release;
      return tb::PinnedPool::instance().stats();
    }();
    py::dict d;
    d["reserved_bytes"] = s.reserved_bytes;
    d["in_use_bytes"] = s.in_use_bytes;
    d["cached_bytes"] = s.cached_bytes;
    d["peak_bytes"] = s.peak_bytes;
    d["limit_bytes"] = s.limit_bytes;
    d["alloc_count"] = s.alloc_count;
    d["hit_count"] = s.hit_count;
    return d;
  });
  py::class_<PinnedRange>(m, "PinnedRange")
      .def(py::init<const py::buffer&>(), py::arg("array"))
      .def("close", &PinnedRange::close,
           "Unregister now, or once the copies in flight that use the memory complete.")
      .def_property_readonly("closed", &PinnedRange::closed)
      .def_property_readonly("address", &PinnedRange::address)
      .def_property_readonly("nbytes", &PinnedRange::nbytes);
  m.def(
      "registered_bytes", [] { return tb::PinnedInPlace::instance().registered_bytes(); },
      "The bytes pinned in place (PinnedRange) that the driver holds registered now.");
  m.def(
      "empty_pinned_cache", [] { tb::PinnedPool::instance().empty_cache(); },
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "set_pinned_limit", [](size_t bytes) { tb::PinnedPool::instance().set_limit(bytes); },
      py::arg("nbytes"), py::call_guard<py::gil_scoped_release>());
  m.def("set_staging_chunk_bytes", &tb::set_staging_chunk_bytes, py::arg("nbytes"));
  m.attr("MAX_BATCH_COPIES") = tb::kMaxBatchCopies;
  m.def("packed_copy_counts", [] {
    const tb::PackedCopyCounts c = tb::packed_copy_counts();
    py::dict d;
    d["batch_submissions"] = c.batch_submissions;
    d["batch_refusals"] = c.batch_refusals;
    d["single_copies"] = c.single_copies;
    return d;
  });
  m.def("reset_packed_copy_counts", &tb::reset_packed_copy_counts);

  m.def(
      "copy_to_host",
      [](int device, uintptr_t src, size_t nbytes, uintptr_t stream, const py::buffer& dst,
         bool dst_pinned) {
        void* out = writable_address(dst, nbytes);
        interruptibly([&](const tb::InterruptCheck& interrupted) {
          tb::copy_to_host({device, src, nbytes}, as_stream(stream), out, dst_pinned, interrupted);
        });
      },
      py::arg("device"), py::arg("src"), py::arg("nbytes"), py::arg("stream"), py::arg("dst"),
      py::arg("dst_pinned"));
  m.def(
      "copy_to_host_async",
      [](int device, uintptr_t src, size_t nbytes, uintptr_t stream, const py::buffer& dst,
         bool dst_pinned) {
        void* out = writable_address(dst, nbytes);
        py::gil_scoped_release release;
        return tb::copy_to_host_async({device, src, nbytes}, as_stream(stream), out, dst_pinned);
      },
      py::arg("device"), py::arg("src"), py::arg("nbytes"), py::arg("stream"), py::arg("dst"),
      py::arg("dst_pinned"));
  m.def(
      "copy_many_to_host",
      [](int device, const std::vector<std::pair<uintptr_t, size_t>>& srcs, uintptr_t stream,
         const py::buffer& dst, const std::vector<size_t>& offsets, bool dst_pinned) {
        if (srcs.size() != offsets.size()) {
          throw std::invalid_argument("srcs and offsets differ in length");
        }
        py::buffer_info out = dst.request(/*writable=*/true);
        const size_t capacity = static_cast<size_t>(out.size * out.itemsize);
        std::vector<tb::DeviceSpan> spans;
        std::vector<void*> outs;
        for (size_t i = 0; i < srcs.size(); ++i) {
          if (offsets[i] > capacity || srcs[i].second > capacity - offsets[i]) {
            throw std::out_of_range("copy_many_to_host: a span ends past the destination");
          }
          spans.push_back({device, srcs[i].first, srcs[i].second});
          outs.push_back(static_cast<char*>(out.ptr) + offsets[i]);
        }
        interruptibly([&](const tb::InterruptCheck& interrupted) {
          tb::copy_many_to_host(spans, as_stream(stream), outs, dst_pinned, interrupted);
        });
      },
      py::arg("device"), py::arg("srcs"), py::arg("stream"), py::arg("dst"), py::arg("offsets"),
      py::arg("dst_pinned"),
      "Copy device spans (address, nbytes) into `dst` at byte `offsets`, packed.");
  m.def(
      "copy_to_device",
      [](const py::buffer& src, bool src_pinned, int device, uintptr_t dst, size_t nbytes,
         uintptr_t stream) {
        py::buffer_info info = src.request();
        if (static_cast<size_t>(info.size * info.itemsize) < nbytes) {
          throw std::invalid_argument("source buffer is smaller than nbytes");
        }
        const void* in = info.ptr;
        py::gil_scoped_release release;
        return tb::copy_to_device(in, src_pinned, {device, dst, nbytes}, as_stream(stream));
      },
      py::arg("src"), py::arg("src_pinned"), py::arg("device"), py::arg("dst"), py::arg("nbytes"),
      py::arg("stream"));
  py::class_<tb::GrowableBuffer, std::shared_ptr<tb::GrowableBuffer>>(m, "GrowableBuffer")
      .def(py::init<>())
      .def("reserve", &tb::GrowableBuffer::reserve, py::arg("nbytes"))
      .def("shrink_to", &tb::GrowableBuffer::shrink_to, py::arg("nbytes"))
      .def_property_readonly("capacity", &tb::GrowableBuffer::capacity)
      .def(
          "view",
          [](std::shared_ptr<tb::GrowableBuffer> self, size_t offset, size_t nbytes) {
            return std::make_unique<tb::BufferView>(std::move(self), offset, nbytes);
          },
          py::arg("offset"), py::arg("nbytes"));
  py::class_<tb::BufferView>(m, "BufferView", py::buffer_protocol())
      .def_buffer([](tb::BufferView& v) {
        return py::buffer_info(v.data, 1, "B", 1, {static_cast<py::ssize_t>(v.size)}, {1}, false);
      });
  m.def(
      "gather_host",
      [](py::handle iterator, py::object destination, Py_ssize_t rows, Py_ssize_t index,
         py::object trailing, py::object dtype, Py_ssize_t expected_rows) {
        tb::GatherDestination where;
        if (py::isinstance<tb::GrowableBuffer>(destination)) {
          where.buffer = destination.cast<tb::GrowableBuffer*>();
        } else if (PyArray_Check(destination.ptr()) &&
                   PyArray_IS_C_CONTIGUOUS(reinterpret_cast<PyArrayObject*>(destination.ptr()))) {
          where.out = reinterpret_cast<PyArrayObject*>(destination.ptr());
        } else {
          throw py::type_error("gather_host: a GrowableBuffer or a C-contiguous array");
        }
        tb::GatherState state;
        state.rows = rows;
        state.index = index;
        state.expected_rows = expected_rows;
        if (!trailing.is_none()) {
          state.trailing = trailing.cast<std::vector<int64_t>>();
          if (PyArray_DescrConverter(dtype.ptr(), &state.descr) == 0) {
            throw py::error_already_set();
          }
          state.has_layout = true;
        }
        bool exhausted = false;
        PyObject* leftover = tb::gather_host(iterator.ptr(), where, &state, &exhausted);
        if (leftover == nullptr) throw py::error_already_set();
        py::object layout_trailing = py::none(), layout_dtype = py::none();
        if (state.has_layout) {
          layout_trailing = py::tuple(py::cast(state.trailing));
          layout_dtype =
              py::reinterpret_borrow<py::object>(reinterpret_cast<PyObject*>(state.descr));
        }
        return py::make_tuple(state.rows, state.index, layout_trailing, layout_dtype, exhausted,
                              py::reinterpret_steal<py::object>(leftover));
      },
      py::arg("iterator"), py::arg("destination"), py::arg("rows"), py::arg("index"),
      py::arg("trailing"), py::arg("dtype"), py::arg("expected_rows"),
      "collect's host path (csrc/collect.h): (rows, index, trailing, dtype, exhausted, "
      "the first batch not taken).");
  m.def(
      "host_copy",
      [](const py::buffer& dst, const py::buffer& src) {
        py::buffer_info out = dst.request(true), in = src.request();
        const size_t bytes = static_cast<size_t>(in.size * in.itemsize);
        if (static_cast<size_t>(out.size * out.itemsize) != bytes) {
          throw std::invalid_argument("host_copy: sizes differ");
        }
        py::gil_scoped_release release;
        tb::parallel_memcpy(out.ptr, in.ptr, bytes);
      },
      py::arg("dst"), py::arg("src"), "Copy between two contiguous buffers on several threads.");
  m.def("wait_for_all_transfers", &tb::wait_for_all_transfers, py::arg("timeout_seconds") = -1.0,
        py::call_guard<py::gil_scoped_release>(),
        "Wait until every copy has completed; False if the timeout passed first.");
}

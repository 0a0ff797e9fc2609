// The CUDA driver, loaded at run time.
//
// No CUDA toolkit is needed to build tensorbridge: the few driver types and
// entry points we use are declared here, `libcuda.so.1` (or the library named
// by TENSORBRIDGE_LIBCUDA, the tests' stand-in) is opened with dlopen on first
// GPU use, and every entry point is resolved once through cuGetProcAddress
// with an explicit CUDA version, so that we get the ABI we declare (the plain
// exported names are often legacy ABIs: cuMemcpyDtoHAsync vs _v2).
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

namespace tensorbridge::cuda {

using CUresult = int;
using CUdevice = int;
using CUdeviceptr = uintptr_t;
using CUcontext = struct CUctx_st*;
using CUstream = struct CUstream_st*;
using CUevent = struct CUevent_st*;

constexpr CUresult CUDA_SUCCESS = 0;
constexpr CUresult CUDA_ERROR_INVALID_VALUE = 1;
constexpr CUresult CUDA_ERROR_OUT_OF_MEMORY = 2;
constexpr CUresult CUDA_ERROR_NOT_INITIALIZED = 3;
constexpr CUresult CUDA_ERROR_NO_DEVICE = 100;
constexpr CUresult CUDA_ERROR_INVALID_DEVICE = 101;
constexpr CUresult CUDA_ERROR_INVALID_HANDLE = 400;
constexpr CUresult CUDA_ERROR_NOT_FOUND = 500;
constexpr CUresult CUDA_ERROR_NOT_READY = 600;
constexpr CUresult CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED = 712;
constexpr CUresult CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED = 713;
constexpr CUresult CUDA_ERROR_NOT_SUPPORTED = 801;

constexpr unsigned kMemHostAllocPortable = 0x01;  // CU_MEMHOSTALLOC_PORTABLE (a macro in cuda.h)
// CU_MEMHOSTREGISTER_PORTABLE (a macro in cuda.h): pinned for every context.
constexpr unsigned kMemHostRegisterPortable = 0x01;
constexpr unsigned CU_STREAM_NON_BLOCKING = 0x1;
// Blocking-sync events put a waiting thread to sleep instead of spinning a core.
constexpr unsigned CU_EVENT_BLOCKING_SYNC = 0x1;
constexpr unsigned CU_EVENT_DISABLE_TIMING = 0x2;
// The legacy default stream, as the handles 0 (NULL) and 1 (CU_STREAM_LEGACY);
// DLPack's stream=1 means the same. cuda.h forbids it for the batch copy.
inline bool is_legacy_stream(CUstream stream) { return reinterpret_cast<uintptr_t>(stream) <= 1; }

// The CUDA version whose ABIs we declared; passed to cuGetProcAddress.
constexpr int kDeclaredCudaVersion = 12000;
// cuMemcpyBatchAsync appeared in CUDA 12.8 and changed its ABI in 13.0 (no
// failIdx); we ask for the 12.8 ABI, which newer drivers still serve.
constexpr int kBatchCopyCudaVersion = 12080;

// CUmemcpyAttributes (CUDA 12.8), for cuMemcpyBatchAsync.
struct CUmemLocation {
  int type;  // CU_MEM_LOCATION_TYPE_*: 1 device, 2 host
  int id;
};
struct CUmemcpyAttributes {
  int srcAccessOrder;  // CU_MEMCPY_SRC_ACCESS_ORDER_STREAM = 1
  CUmemLocation srcLocHint;
  CUmemLocation dstLocHint;
  unsigned flags;
};
constexpr int CU_MEMCPY_SRC_ACCESS_ORDER_STREAM = 1;
constexpr int CU_MEM_LOCATION_TYPE_DEVICE = 1;
constexpr int CU_MEM_LOCATION_TYPE_HOST = 2;

// The one list of entry points: X(name, CUDA version asked, required, type).
// It generates the table below and its resolution (cuda_driver.cpp). An
// optional entry point is nullptr when the driver lacks it, and its caller
// takes a slower path; a missing required one makes CUDA unavailable.
#define TB_DRIVER_ENTRY_POINTS(X)                                                              \
  X(cuInit, 12000, true, CUresult(unsigned flags))                                             \
  X(cuDriverGetVersion, 12000, true, CUresult(int* version))                                   \
  X(cuGetErrorString, 12000, true, CUresult(CUresult error, const char** text))                \
  X(cuGetErrorName, 12000, true, CUresult(CUresult error, const char** text))                  \
  X(cuDeviceGetCount, 12000, true, CUresult(int* count))                                       \
  X(cuDeviceGet, 12000, true, CUresult(CUdevice* device, int ordinal))                         \
  X(cuDeviceGetName, 12000, true, CUresult(char* name, int length, CUdevice device))           \
  X(cuDevicePrimaryCtxRetain, 12000, true, CUresult(CUcontext* context, CUdevice device))      \
  X(cuCtxGetCurrent, 12000, true, CUresult(CUcontext* context))                                \
  X(cuCtxSetCurrent, 12000, true, CUresult(CUcontext context))                                 \
  X(cuMemHostAlloc, 12000, true, CUresult(void** pointer, size_t bytes, unsigned flags))       \
  X(cuMemFreeHost, 12000, true, CUresult(void* pointer))                                       \
  X(cuMemcpyDtoHAsync, 12000, true,                                                            \
    CUresult(void* dst, CUdeviceptr src, size_t bytes, CUstream stream))                       \
  X(cuMemcpyHtoDAsync, 12000, true,                                                            \
    CUresult(CUdeviceptr dst, const void* src, size_t bytes, CUstream stream))                 \
  X(cuEventCreate, 12000, true, CUresult(CUevent* event, unsigned flags))                      \
  X(cuEventRecord, 12000, true, CUresult(CUevent event, CUstream stream))                      \
  X(cuEventQuery, 12000, true, CUresult(CUevent event))                                        \
  X(cuEventSynchronize, 12000, true, CUresult(CUevent event))                                  \
  X(cuEventDestroy, 12000, true, CUresult(CUevent event))                                      \
  /* Our own stream for batch copies that the producer's stream forbids. */                    \
  X(cuStreamCreate, 12000, false, CUresult(CUstream* stream, unsigned flags))                  \
  X(cuStreamWaitEvent, 12000, false, CUresult(CUstream stream, CUevent event, unsigned flags)) \
  X(cuMemcpyBatchAsync, 12080, false,                                                          \
    CUresult(CUdeviceptr* dsts, CUdeviceptr* srcs, size_t* sizes, size_t count,                \
             CUmemcpyAttributes* attrs, size_t* attr_indices, size_t attr_count,               \
             size_t* fail_index, CUstream stream))                                             \
  /* Pinning a user's array in place (tb.pin): without them, only pin is refused. */           \
  /* cuda.h maps cuMemHostRegister onto _v2; at 12.0 the driver serves that ABI. */            \
  X(cuMemHostRegister, 12000, false, CUresult(void* pointer, size_t bytes, unsigned flags))    \
  X(cuMemHostUnregister, 12000, false, CUresult(void* pointer))

// Every entry point we call, as one table of function pointers.
struct Driver {
#define TB_DRIVER_SLOT(name, version, required, type) std::add_pointer_t<type> name = nullptr;
  TB_DRIVER_ENTRY_POINTS(TB_DRIVER_SLOT)
#undef TB_DRIVER_SLOT
};

// How one entry point was resolved, for diagnostics (`driver_entry_points`).
struct EntryPoint {
  const char* name;
  int version;
  bool required;
  bool resolved;
};

// A driver call that failed, with the driver's own text. Bound to RuntimeError.
class DriverError : public std::runtime_error {
 public:
  DriverError(const std::string& what, CUresult code) : std::runtime_error(what), code(code) {}
  CUresult code;
};

// The loaded driver, loading it on first use; throws DriverError (with the
// reason: library missing, symbol missing, cuInit failed) when unusable.
// Thread-safe. In a child after fork, the parent's driver state is never
// used: the child loads and initialises again (and the real driver refuses).
const Driver& driver();

// Whether a driver loads and reports at least one device. Never throws.
bool available() noexcept;

// What loading the driver found, for users' messages (`tb.cuda_status()`).
// Never throws. `reason` is empty exactly when `available`.
struct Status {
  bool available = false;
  std::string library;     // the file loaded; empty when none was
  int driver_version = 0;  // cuDriverGetVersion (works before cuInit); 0 unknown
  int device_count = 0;
  std::string reason;  // "driver 12.2 loaded from ..., but cuInit says ..."
};
Status status() noexcept;

// The entry points of the table as resolved (empty before a library loaded).
std::vector<EntryPoint> entry_points();

// "cuMemcpyDtoHAsync failed: CUDA_ERROR_INVALID_VALUE (invalid argument)".
std::string describe(const char* call, CUresult result);

// Throws DriverError for anything but CUDA_SUCCESS.
inline void check(CUresult result, const char* call) {
  if (result != CUDA_SUCCESS) throw DriverError(describe(call, result), result);
}

// Makes device `ordinal`'s primary context current on the calling thread for
// the guard's lifetime and restores the previous one after, so that callers'
// own CUDA state (torch's current device) is left as it was. Primary contexts
// are retained once per process and never released.
class DeviceGuard {
 public:
  explicit DeviceGuard(int ordinal);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  CUcontext previous_ = nullptr;
  bool changed_ = false;
};

// The lowest device ordinal whose primary context this process retained
// (0 when none): for work any context can do, without creating one.
int first_retained_device();

// Driver version as reported (12040 = 12.4), device count and names, for `info`.
int driver_version();
int device_count();
std::string device_name(int ordinal);

}  // namespace tensorbridge::cuda

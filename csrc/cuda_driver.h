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
constexpr CUresult CUDA_ERROR_NOT_FOUND = 500;
constexpr CUresult CUDA_ERROR_NOT_READY = 600;

constexpr unsigned kMemHostAllocPortable = 0x01;  // CU_MEMHOSTALLOC_PORTABLE (a macro in cuda.h)
constexpr unsigned CU_STREAM_NON_BLOCKING = 0x1;
constexpr unsigned CU_EVENT_DISABLE_TIMING = 0x2;
// The legacy default stream, as a handle (DLPack's stream=1 means the same).
inline CUstream legacy_stream() { return reinterpret_cast<CUstream>(uintptr_t{1}); }

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

// Every entry point we call, as one table of function pointers. The list of
// names is in cuda_driver.cpp, next to the table's fill.
struct Driver {
  CUresult (*cuInit)(unsigned flags);
  CUresult (*cuDriverGetVersion)(int* version);
  CUresult (*cuGetErrorString)(CUresult error, const char** text);
  CUresult (*cuGetErrorName)(CUresult error, const char** text);
  CUresult (*cuDeviceGetCount)(int* count);
  CUresult (*cuDeviceGet)(CUdevice* device, int ordinal);
  CUresult (*cuDeviceGetName)(char* name, int length, CUdevice device);
  CUresult (*cuDevicePrimaryCtxRetain)(CUcontext* context, CUdevice device);
  CUresult (*cuDevicePrimaryCtxRelease)(CUdevice device);
  CUresult (*cuCtxGetCurrent)(CUcontext* context);
  CUresult (*cuCtxSetCurrent)(CUcontext context);
  CUresult (*cuMemHostAlloc)(void** pointer, size_t bytes, unsigned flags);
  CUresult (*cuMemFreeHost)(void* pointer);
  CUresult (*cuMemcpyDtoHAsync)(void* dst, CUdeviceptr src, size_t bytes, CUstream stream);
  CUresult (*cuMemcpyHtoDAsync)(CUdeviceptr dst, const void* src, size_t bytes,
                                CUstream stream);
  CUresult (*cuStreamCreate)(CUstream* stream, unsigned flags);
  CUresult (*cuStreamDestroy)(CUstream stream);
  CUresult (*cuStreamWaitEvent)(CUstream stream, CUevent event, unsigned flags);
  CUresult (*cuEventCreate)(CUevent* event, unsigned flags);
  CUresult (*cuEventRecord)(CUevent event, CUstream stream);
  CUresult (*cuEventQuery)(CUevent event);
  CUresult (*cuEventSynchronize)(CUevent event);
  CUresult (*cuEventDestroy)(CUevent event);
  // Optional (nullptr on drivers older than CUDA 12.8).
  CUresult (*cuMemcpyBatchAsync)(CUdeviceptr* dsts, CUdeviceptr* srcs, size_t* sizes,
                                 size_t count, CUmemcpyAttributes* attrs, size_t* attr_indices,
                                 size_t attr_count, size_t* fail_index, CUstream stream);
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

// Driver version as reported (12040 = 12.4), device count and names, for `info`.
int driver_version();
int device_count();
std::string device_name(int ordinal);

}  // namespace tensorbridge::cuda

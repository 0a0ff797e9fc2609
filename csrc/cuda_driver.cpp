#include "cuda_driver.h"

#include "per_process.h"

#include <dlfcn.h>

#include <cstdlib>
#include <mutex>
#include <vector>

namespace tensorbridge::cuda {
namespace {

// The one list of entry points: name in the driver, slot in Driver.
#define TB_DRIVER_ENTRY_POINTS(X)                                                      \
  X(cuInit) X(cuDriverGetVersion) X(cuGetErrorString) X(cuGetErrorName)                \
  X(cuDeviceGetCount) X(cuDeviceGet) X(cuDeviceGetName) X(cuDevicePrimaryCtxRetain)    \
  X(cuDevicePrimaryCtxRelease) X(cuCtxGetCurrent) X(cuCtxSetCurrent) X(cuMemHostAlloc) \
  X(cuMemFreeHost) X(cuMemcpyDtoHAsync) X(cuMemcpyHtoDAsync) X(cuStreamCreate)         \
  X(cuStreamDestroy) X(cuStreamWaitEvent) X(cuEventCreate) X(cuEventRecord)            \
  X(cuEventQuery) X(cuEventSynchronize) X(cuEventDestroy)

using GetProcAddressV2 = CUresult (*)(const char* symbol, void** function, int cuda_version,
                                      uint64_t flags, int* symbol_status);
using GetProcAddressV1 = CUresult (*)(const char* symbol, void** function, int cuda_version,
                                      uint64_t flags);

// Everything below is guarded by `mutex`, except `loaded`, which is written
// under it and read without it once true (the table is immutable then).
struct State {
  std::mutex mutex;
  bool attempted = false;
  bool loaded = false;
  std::string error;
  Driver table{};
  std::vector<CUcontext> contexts;  // primary context per ordinal, retained once
};

// A forked child gets a fresh State: the parent's driver handles and
// contexts are meaningless there (and the real driver refuses anyway).
State& state() { return per_process<State>(); }

void load(State& s) {
  s.attempted = true;
  const char* override_path = std::getenv("TENSORBRIDGE_LIBCUDA");
  const char* path = override_path && *override_path ? override_path : "libcuda.so.1";
  void* library = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (library == nullptr) {
    const char* reason = dlerror();
    s.error = std::string("cannot load the CUDA driver ") + path + ": " +
              (reason ? reason : "unknown reason") +
              (override_path ? "" : " (no NVIDIA driver on this machine?)");
    return;
  }
  void* get_v2 = dlsym(library, "cuGetProcAddress_v2");
  void* get_v1 = get_v2 ? nullptr : dlsym(library, "cuGetProcAddress");
  if (get_v2 == nullptr && get_v1 == nullptr) {
    s.error = std::string(path) + " has no cuGetProcAddress: the driver is older than CUDA 11.3";
    return;
  }
  auto resolve = [&](const char* name, void** slot) -> CUresult {
    if (get_v2 != nullptr) {
      int status = 0;
      return reinterpret_cast<GetProcAddressV2>(get_v2)(name, slot, kDeclaredCudaVersion, 0,
                                                        &status);
    }
    return reinterpret_cast<GetProcAddressV1>(get_v1)(name, slot, kDeclaredCudaVersion, 0);
  };
  Driver table{};
#define TB_RESOLVE(name)                                                                   \
  if (resolve(#name, reinterpret_cast<void**>(&table.name)) != CUDA_SUCCESS ||             \
      table.name == nullptr) {                                                             \
    s.error = std::string("the CUDA driver ") + path + " lacks " #name " for CUDA " +      \
              std::to_string(kDeclaredCudaVersion / 1000) + "." +                          \
              std::to_string(kDeclaredCudaVersion % 1000 / 10);                            \
    return;                                                                                \
  }
  TB_DRIVER_ENTRY_POINTS(TB_RESOLVE)
#undef TB_RESOLVE
  if (get_v2 != nullptr) {
    int status = 0;
    reinterpret_cast<GetProcAddressV2>(get_v2)("cuMemcpyBatchAsync",
                                               reinterpret_cast<void**>(&table.cuMemcpyBatchAsync),
                                               kBatchCopyCudaVersion, 0, &status);
  }
  s.table = table;  // describe() needs cuGetErrorString before `loaded` is set
  const CUresult init = table.cuInit(0);
  if (init != CUDA_SUCCESS) {
    s.error = describe("cuInit", init);
    return;
  }
  s.loaded = true;
}

const Driver* try_driver() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  if (!s.attempted) load(s);
  return s.loaded ? &s.table : nullptr;
}

}  // namespace

const Driver& driver() {
  if (const Driver* d = try_driver()) return *d;
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  throw DriverError(s.error, CUDA_ERROR_NOT_INITIALIZED);
}

bool available() noexcept {
  try {
    return try_driver() != nullptr && device_count() > 0;
  } catch (...) {
    return false;
  }
}

std::string describe(const char* call, CUresult result) {
  const char* name = nullptr;
  const char* text = nullptr;
  const Driver& table = state().table;
  if (table.cuGetErrorName != nullptr) table.cuGetErrorName(result, &name);
  if (table.cuGetErrorString != nullptr) table.cuGetErrorString(result, &text);
  std::string message = std::string(call) + " failed: " +
                        (name ? name : "CUDA error " + std::to_string(result));
  if (text != nullptr) message += std::string(" (") + text + ")";
  return message;
}

DeviceGuard::DeviceGuard(int ordinal) {
  const Driver& d = driver();
  CUcontext context = nullptr;
  {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (ordinal < 0) throw DriverError("device ordinal must be >= 0", CUDA_ERROR_INVALID_DEVICE);
    if (static_cast<size_t>(ordinal) >= s.contexts.size()) s.contexts.resize(ordinal + 1);
    if (s.contexts[ordinal] == nullptr) {
      CUdevice device = 0;
      check(d.cuDeviceGet(&device, ordinal), "cuDeviceGet");
      check(d.cuDevicePrimaryCtxRetain(&s.contexts[ordinal], device),
            "cuDevicePrimaryCtxRetain");
    }
    context = s.contexts[ordinal];
  }
  check(d.cuCtxGetCurrent(&previous_), "cuCtxGetCurrent");
  if (previous_ != context) {
    check(d.cuCtxSetCurrent(context), "cuCtxSetCurrent");
    changed_ = true;
  }
}

DeviceGuard::~DeviceGuard() {
  if (changed_) driver().cuCtxSetCurrent(previous_);  // nothing sensible to do on failure
}

int driver_version() {
  int version = 0;
  check(driver().cuDriverGetVersion(&version), "cuDriverGetVersion");
  return version;
}

int device_count() {
  int count = 0;
  check(driver().cuDeviceGetCount(&count), "cuDeviceGetCount");
  return count;
}

std::string device_name(int ordinal) {
  const Driver& d = driver();
  CUdevice device = 0;
  check(d.cuDeviceGet(&device, ordinal), "cuDeviceGet");
  char name[256] = {};
  check(d.cuDeviceGetName(name, sizeof(name) - 1, device), "cuDeviceGetName");
  return name;
}

}  // namespace tensorbridge::cuda

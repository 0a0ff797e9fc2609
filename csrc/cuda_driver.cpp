#include "cuda_driver.h"

#include "per_process.h"

#include <dlfcn.h>
#include <link.h>

#include <cstdlib>
#include <mutex>
#include <vector>

namespace tensorbridge::cuda {
namespace {

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
  std::string library;  // the file dlopen found
  int driver_version = 0;
  std::string found;  // "driver 12.2 loaded from <library>", the start of every reason
  Driver table{};
  std::vector<EntryPoint> entry_points;
  std::vector<CUcontext> contexts;  // primary context per ordinal, retained once
};

// A forked child gets a fresh State: the parent's driver handles and
// contexts are meaningless there (and the real driver refuses anyway).
State& state() { return per_process<State>(); }

std::string version_text(int version) {
  return std::to_string(version / 1000) + "." + std::to_string(version % 1000 / 10);
}

// The path of the file a dlopen handle came from ("libcuda.so.1" is a name).
std::string loaded_path(void* library, const char* fallback) {
  link_map* map = nullptr;
  if (dlinfo(library, RTLD_DI_LINKMAP, &map) == 0 && map != nullptr && map->l_name != nullptr &&
      *map->l_name != '\0') {
    return map->l_name;
  }
  return fallback;
}

// "CUDA_ERROR_NO_DEVICE (no CUDA-capable device is detected)", in the
// driver's own words once its error strings are resolved.
std::string error_text(CUresult result) {
  const char* name = nullptr;
  const char* text = nullptr;
  const Driver& table = state().table;
  if (table.cuGetErrorName != nullptr) table.cuGetErrorName(result, &name);
  if (table.cuGetErrorString != nullptr) table.cuGetErrorString(result, &text);
  std::string message = name ? name : "CUDA error " + std::to_string(result);
  if (text != nullptr) message += std::string(" (") + text + ")";
  return message;
}

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
  s.library = loaded_path(library, path);
  void* get_v2 = dlsym(library, "cuGetProcAddress_v2");
  void* get_v1 = get_v2 ? nullptr : dlsym(library, "cuGetProcAddress");
  if (get_v2 == nullptr && get_v1 == nullptr) {
    s.error = "the CUDA driver " + s.library +
              " has no cuGetProcAddress: it is older than CUDA 11.3; update the NVIDIA driver";
    return;
  }
  auto resolve = [&](const char* name, int version, void** slot) {
    CUresult result;
    if (get_v2 != nullptr) {
      int status = 0;
      result = reinterpret_cast<GetProcAddressV2>(get_v2)(name, slot, version, 0, &status);
    } else {
      result = reinterpret_cast<GetProcAddressV1>(get_v1)(name, slot, version, 0);
    }
    if (result != CUDA_SUCCESS) *slot = nullptr;
    return *slot != nullptr;
  };
  Driver table{};
  std::string missing;
#define TB_RESOLVE(name, version, required, type)                                        \
  {                                                                                      \
    const bool found = resolve(#name, version, reinterpret_cast<void**>(&table.name));   \
    s.entry_points.push_back(EntryPoint{#name, version, required, found});               \
    if (required && !found) missing += std::string(missing.empty() ? "" : ", ") + #name; \
  }
  TB_DRIVER_ENTRY_POINTS(TB_RESOLVE)
#undef TB_RESOLVE
  s.table = table;  // describe() needs the error strings before `loaded` is set
  if (table.cuDriverGetVersion != nullptr) table.cuDriverGetVersion(&s.driver_version);
  s.found =
      "driver " +
      (s.driver_version ? version_text(s.driver_version) : std::string("of unknown version")) +
      " loaded from " + s.library;
  const std::string& loaded = s.found;
  if (!missing.empty()) {
    s.error = loaded + ", but it lacks " + missing + " for CUDA " +
              version_text(kDeclaredCudaVersion) + "; update the NVIDIA driver";
    return;
  }
  const CUresult init = table.cuInit(0);
  if (init != CUDA_SUCCESS) {
    s.error = loaded + ", but cuInit says " + error_text(init);
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

bool available() noexcept { return status().available; }

Status status() noexcept {
  Status result;
  try {
    const bool loaded = try_driver() != nullptr;
    std::string found;
    {
      State& s = state();
      std::lock_guard<std::mutex> lock(s.mutex);
      result.library = s.library;
      result.driver_version = s.driver_version;
      result.reason = s.error;
      found = s.found;
    }
    if (!loaded) return result;
    result.device_count = device_count();
    if (result.device_count == 0) {
      result.reason = found + ", but it reports no CUDA device";
      return result;
    }
    result.available = true;
  } catch (const std::exception& e) {
    result.available = false;
    result.reason = e.what();
  } catch (...) {
    result.available = false;
    result.reason = "unknown error while loading the CUDA driver";
  }
  return result;
}

std::vector<EntryPoint> entry_points() {
  try_driver();
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  return s.entry_points;
}

std::string describe(const char* call, CUresult result) {
  return std::string(call) + " failed: " + error_text(result);
}

DeviceGuard::DeviceGuard(int ordinal) {
  const Driver& d = driver();
  CUcontext context = nullptr;
  {
    State& s = state();
    std::lock_guard<std::mutex> lock(s.mutex);
    if (ordinal < 0) throw DriverError("device ordinal must be >= 0", CUDA_ERROR_INVALID_DEVICE);
    if (static_cast<size_t>(ordinal) >= s.contexts.size() || s.contexts[ordinal] == nullptr) {
      CUdevice device = 0;
      check(d.cuDeviceGet(&device, ordinal), "cuDeviceGet");  // refuses an unknown ordinal
      CUcontext retained = nullptr;
      check(d.cuDevicePrimaryCtxRetain(&retained, device), "cuDevicePrimaryCtxRetain");
      if (static_cast<size_t>(ordinal) >= s.contexts.size()) s.contexts.resize(ordinal + 1);
      s.contexts[ordinal] = retained;
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

int first_retained_device() {
  State& s = state();
  std::lock_guard<std::mutex> lock(s.mutex);
  for (size_t i = 0; i < s.contexts.size(); ++i) {
    if (s.contexts[i] != nullptr) return static_cast<int>(i);
  }
  return 0;
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

// A stand-in for libcuda.so.1, built by the test suite, that enforces the
// rules of the real driver so that what passes against it also holds on a GPU:
//
// - every call but the few that need none requires a context current on the
//   calling thread (CUDA_ERROR_INVALID_CONTEXT otherwise), and cuInit first;
// - "device" memory is host memory mapped PROT_NONE: host code that touches a
//   device pointer crashes. Only the stand-in's own copy routines reach it,
//   through a second, readable mapping of the same pages;
// - asynchronous work runs on one worker thread per stream, after an optional
//   delay per copy; a copy between device memory and pageable host memory
//   (neither from cuMemHostAlloc nor registered with cuMemHostRegister) is
//   synchronous, as the real driver makes it;
// - host memory registered with cuMemHostRegister is refused what cuda.h
//   refuses (a second registration of any of its bytes, an unregistration
//   of anything but a registered base, unknown flags, zero bytes), and
//   unregistering it while a copy that uses it is in flight is a misuse;
// - every entry point is counted, and any can be made to fail;
// - after fork, every call fails with CUDA_ERROR_NOT_INITIALIZED;
// - what cuda.h documents as refused is refused: the batch copy on the legacy
//   stream, bad flags, events recorded on another context's stream, handles
//   used after destruction, calls after a sticky error, and so on; calls the
//   engine should never make are counted under "misuse: ..." names, which
//   the tests' fixture checks stay at zero;
// - cuInit's answer, the driver version and the entry points served can be
//   set through the environment (STANDIN_INIT_RESULT, STANDIN_DRIVER_VERSION,
//   STANDIN_MISSING=name,name), as a real driver without a GPU or an old one.
//
// The functions named standin_* are its control panel, called by the tests
// through ctypes; the cu* functions are reached through cuGetProcAddress.
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <vector>

namespace {

using CUresult = int;
using CUdeviceptr = uintptr_t;
constexpr CUresult kSuccess = 0, kInvalidValue = 1, kOutOfMemory = 2, kNotInitialized = 3,
                   kInvalidDevice = 101, kInvalidContext = 201, kInvalidHandle = 400,
                   kNotReady = 600, kHostMemoryAlreadyRegistered = 712,
                   kHostMemoryNotRegistered = 713, kNotSupported = 801;

struct Context {
  int device;
};

// ---- accounting and failure injection -------------------------------------

struct Failure {
  long skip = 0;   // successful calls to let through first
  long times = 0;  // then this many failures
  CUresult result = 0;
};

std::mutex g_mutex;  // guards everything below not marked atomic
std::unordered_map<std::string, long> g_calls;
std::unordered_map<std::string, Failure> g_failures;
std::unordered_map<std::string, int> g_versions;  // cudaVersion asked per symbol
std::atomic<bool> g_initialized{false};
std::atomic<bool> g_forked{false};
std::atomic<int> g_sticky{0};            // once set, every context call returns it
std::atomic<size_t> g_largest_batch{0};  // the most descriptors one batch copy took
std::atomic<int> g_allocating{0};        // cuMemHostAlloc calls under way
volatile int* g_alloc_gate = nullptr;    // allocations wait while *gate == 0
std::atomic<long> g_delay_min_us{0}, g_delay_max_us{0};
// cuMemHostRegister/Unregister calls made after fork (which enter() cannot
// count: the child's lock may be held by a thread that does not exist there).
std::atomic<long> g_register_calls_after_fork{0};
int g_device_count = 2;
Context g_primary[16];
thread_local Context* t_current = nullptr;

void count(const std::string& name) {
  std::lock_guard<std::mutex> lock(g_mutex);
  ++g_calls[name];
}

// A call the real driver refuses: counted under "misuse: <name>" (the tests
// check there is none) and answered with the driver's error.
CUresult misuse(const char* name, CUresult result) {
  count(std::string("misuse: ") + name);
  return result;
}

// Counts the call and says whether an injected failure applies.
CUresult enter(const char* name) {
  if (g_forked) return kNotInitialized;
  std::lock_guard<std::mutex> lock(g_mutex);
  ++g_calls[name];
  if (g_sticky != 0) return g_sticky;
  auto it = g_failures.find(name);
  if (it != g_failures.end()) {
    Failure& f = it->second;
    if (f.skip > 0) {
      --f.skip;
    } else if (f.times > 0) {
      --f.times;
      return f.result;
    }
  }
  return kSuccess;
}

#define ENTER(name)                                      \
  if (CUresult r = enter(name); r != kSuccess) return r; \
  if (!g_initialized) return kNotInitialized;
#define NEED_CONTEXT \
  if (t_current == nullptr) return misuse("no current context", kInvalidContext);

void delay() {
  const long low = g_delay_min_us, high = g_delay_max_us;
  if (high <= 0) return;
  thread_local std::mt19937 random{std::random_device{}()};
  const long us = low + static_cast<long>(random() % static_cast<unsigned long>(high - low + 1));
  std::this_thread::sleep_for(std::chrono::microseconds(us));
}

// ---- memory ----------------------------------------------------------------

struct DeviceAllocation {
  size_t size;
  char* alias;  // readable and writable view of the same pages
  int device;
};
std::map<uintptr_t, DeviceAllocation> g_device_memory;  // by base address
std::map<uintptr_t, size_t> g_pinned;                   // host ranges, by base address
std::map<uintptr_t, size_t> g_registered;  // cuMemHostRegister's ranges, by base address
// Host ranges that queued copies read or write, by copy: until each completes.
std::map<uint64_t, std::pair<uintptr_t, size_t>> g_in_flight;
uint64_t g_next_copy = 0;

size_t page_rounded(size_t bytes) {
  const size_t page = 4096;
  return std::max(page, (bytes + page - 1) / page * page);
}

// The readable alias for [ptr, ptr+bytes) of device memory, or nullptr.
char* device_alias(CUdeviceptr ptr, size_t bytes) {
  std::lock_guard<std::mutex> lock(g_mutex);
  auto it = g_device_memory.upper_bound(ptr);
  if (it == g_device_memory.begin()) return nullptr;
  --it;
  if (ptr + bytes > it->first + it->second.size) return nullptr;
  return it->second.alias + (ptr - it->first);
}

bool in_device_memory(const void* host) {
  return device_alias(reinterpret_cast<uintptr_t>(host), 1);
}

// Whether [p, p + bytes) lies inside one range of `ranges`. Under g_mutex.
bool inside(const std::map<uintptr_t, size_t>& ranges, uintptr_t p, size_t bytes) {
  auto it = ranges.upper_bound(p);
  if (it == ranges.begin()) return false;
  --it;
  return p + bytes <= it->first + it->second;
}

// Whether [p, p + bytes) shares a byte with a range of `ranges`. Under g_mutex.
bool overlaps(const std::map<uintptr_t, size_t>& ranges, uintptr_t p, size_t bytes) {
  auto it = ranges.lower_bound(p + bytes);  // the first range starting past the end
  if (it == ranges.begin()) return false;
  --it;
  return it->first + it->second > p;
}

// Page-locked: allocated by cuMemHostAlloc or registered by cuMemHostRegister.
bool is_pinned(const void* host, size_t bytes) {
  const auto p = reinterpret_cast<uintptr_t>(host);
  std::lock_guard<std::mutex> lock(g_mutex);
  return inside(g_pinned, p, bytes) || inside(g_registered, p, bytes);
}

// Marks host bytes as used by a queued copy; the returned number ends it.
uint64_t copy_starts(const void* host, size_t bytes) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_in_flight[++g_next_copy] = {reinterpret_cast<uintptr_t>(host), bytes};
  return g_next_copy;
}

void copy_ends(uint64_t copy) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_in_flight.erase(copy);
}

CUdeviceptr allocate_device(int device, size_t bytes) {
  const size_t size = page_rounded(bytes);
  const int fd = memfd_create("standin-device-memory", 0);
  if (fd < 0 || ftruncate(fd, static_cast<off_t>(size)) != 0) return 0;
  void* device_view = mmap(nullptr, size, PROT_NONE, MAP_SHARED, fd, 0);
  void* alias = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (device_view == MAP_FAILED || alias == MAP_FAILED) return 0;
  std::lock_guard<std::mutex> lock(g_mutex);
  const auto base = reinterpret_cast<uintptr_t>(device_view);
  g_device_memory[base] = DeviceAllocation{size, static_cast<char*>(alias), device};
  return base;
}

// ---- streams and events ----------------------------------------------------

struct Stream {
  int device = -1;  // -1: the legacy stream, of whichever context is current
  std::mutex mutex;
  std::condition_variable changed;
  std::deque<std::function<void()>> tasks;
  size_t pending = 0;
  bool worker_started = false;

  void push(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      if (!worker_started) {
        std::thread([this] { run(); }).detach();
        worker_started = true;
      }
      tasks.push_back(std::move(task));
      ++pending;
    }
    changed.notify_all();
  }

  void run() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(mutex);
        changed.wait(lock, [this] { return !tasks.empty(); });
        task = std::move(tasks.front());
        tasks.pop_front();
      }
      task();
      {
        std::lock_guard<std::mutex> lock(mutex);
        --pending;
      }
      changed.notify_all();
    }
  }

  void drain() {
    std::unique_lock<std::mutex> lock(mutex);
    changed.wait(lock, [this] { return pending == 0; });
  }
};

Stream* g_legacy = new Stream();  // handles 0 and 1 (and 2, per-thread default)
// Every stream; guarded by g_mutex. Never destroyed: stream threads and the
// exit report use it while static objects are torn down.
std::vector<Stream*>& g_streams = *new std::vector<Stream*>{g_legacy};

Stream* new_stream(int device = -1) {
  auto* stream = new Stream();
  stream->device = device;
  std::lock_guard<std::mutex> lock(g_mutex);
  g_streams.push_back(stream);
  return stream;
}

// Like the real driver, freeing memory waits for the work in flight.
void drain_all_streams() {
  std::vector<Stream*> streams;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    streams = g_streams;
  }
  for (Stream* stream : streams) stream->drain();
}

Stream* stream_of(void* handle) {
  const auto h = reinterpret_cast<uintptr_t>(handle);
  return h <= 2 ? g_legacy : static_cast<Stream*>(handle);
}

struct Event {
  int device = 0;  // of the context it was created in
  unsigned flags = 0;
  bool destroyed = false;  // guarded by g_mutex; never freed, so use after destroy is seen
  std::mutex mutex;
  std::condition_variable changed;
  uint64_t recorded = 0;   // sequence number of the latest record
  uint64_t completed = 0;  // highest record the stream has reached
};

void complete(Event* e, uint64_t sequence) {
  {
    std::lock_guard<std::mutex> lock(e->mutex);
    e->completed = std::max(e->completed, sequence);
  }
  e->changed.notify_all();
}

void wait_event(Event* e, uint64_t sequence) {
  std::unique_lock<std::mutex> lock(e->mutex);
  e->changed.wait(lock, [&] { return e->completed >= sequence; });
}

bool is_legacy(void* handle) { return reinterpret_cast<uintptr_t>(handle) <= 1; }

// A live event, or nullptr for a destroyed or NULL one.
Event* live(Event* event) {
  if (event == nullptr) return nullptr;
  std::lock_guard<std::mutex> lock(g_mutex);
  return event->destroyed ? nullptr : event;
}

// The device of a stream's context (the current one for the implicit streams).
int stream_device(void* handle) {
  Stream* s = stream_of(handle);
  return s->device >= 0 ? s->device : (t_current ? t_current->device : -1);
}

// Runs a copy on `stream`; synchronous when `wait` (pageable host memory).
// `host` is dst or src, whichever is host memory.
void enqueue_copy(void* stream, char* dst, const char* src, size_t bytes, bool wait,
                  const void* host) {
  Stream* s = stream_of(stream);
  auto done = std::make_shared<Event>();
  const uint64_t copy = copy_starts(host, bytes);
  s->push([=] {
    delay();
    std::memcpy(dst, src, bytes);
    copy_ends(copy);
    complete(done.get(), 1);
  });
  if (wait) wait_event(done.get(), 1);
}

}  // namespace

// ---- the driver API ----------------------------------------------------------

extern "C" {

CUresult cuInit(unsigned flags) {
  if (CUresult r = enter("cuInit"); r != kSuccess) return r;
  if (flags != 0) return misuse("cuInit flags", kInvalidValue);
  if (const char* answer = std::getenv("STANDIN_INIT_RESULT")) {
    if (std::atoi(answer) != 0) return std::atoi(answer);
  }
  g_initialized = true;
  return kSuccess;
}

// Works before cuInit, as the real one does.
CUresult cuDriverGetVersion(int* version) {
  if (CUresult r = enter("cuDriverGetVersion"); r != kSuccess) return r;
  if (version == nullptr) return kInvalidValue;
  const char* set = std::getenv("STANDIN_DRIVER_VERSION");
  *version = set ? std::atoi(set) : 12080;
  return kSuccess;
}

CUresult cuGetErrorName(CUresult error, const char** text) {
  static const std::map<CUresult, const char*> names = {
      {0, "CUDA_SUCCESS"},
      {1, "CUDA_ERROR_INVALID_VALUE"},
      {2, "CUDA_ERROR_OUT_OF_MEMORY"},
      {3, "CUDA_ERROR_NOT_INITIALIZED"},
      {100, "CUDA_ERROR_NO_DEVICE"},
      {101, "CUDA_ERROR_INVALID_DEVICE"},
      {201, "CUDA_ERROR_INVALID_CONTEXT"},
      {400, "CUDA_ERROR_INVALID_HANDLE"},
      {500, "CUDA_ERROR_NOT_FOUND"},
      {600, "CUDA_ERROR_NOT_READY"},
      {700, "CUDA_ERROR_ILLEGAL_ADDRESS"},
      {712, "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED"},
      {713, "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED"},
      {800, "CUDA_ERROR_NOT_PERMITTED"},
      {801, "CUDA_ERROR_NOT_SUPPORTED"},
      {999, "CUDA_ERROR_UNKNOWN"}};
  auto it = names.find(error);
  if (it == names.end()) {
    *text = nullptr;
    return kInvalidValue;
  }
  *text = it->second;
  return kSuccess;
}

CUresult cuGetErrorString(CUresult error, const char** text) {
  static const std::map<CUresult, const char*> texts = {
      {0, "no error"},
      {1, "invalid argument"},
      {2, "out of memory"},
      {3, "initialization error"},
      {100, "no CUDA-capable device is detected"},
      {101, "invalid device ordinal"},
      {201, "invalid device context"},
      {400, "invalid resource handle"},
      {500, "named symbol not found"},
      {600, "device not ready"},
      {700, "an illegal memory access was encountered"},
      {712, "part or all of the requested memory range is already mapped"},
      {713, "pointer does not correspond to a registered memory region"},
      {800, "operation not permitted"},
      {801, "operation not supported"},
      {999, "unknown error"}};
  auto it = texts.find(error);
  if (it == texts.end()) {
    *text = nullptr;
    return kInvalidValue;
  }
  *text = it->second;
  return kSuccess;
}

CUresult cuDeviceGetCount(int* count) {
  ENTER("cuDeviceGetCount");
  *count = g_device_count;
  return kSuccess;
}

CUresult cuDeviceGet(int* device, int ordinal) {
  ENTER("cuDeviceGet");
  if (ordinal < 0 || ordinal >= g_device_count) return kInvalidDevice;
  *device = ordinal;
  return kSuccess;
}

CUresult cuDeviceGetName(char* name, int length, int device) {
  ENTER("cuDeviceGetName");
  if (device < 0 || device >= g_device_count) return kInvalidDevice;
  std::snprintf(name, static_cast<size_t>(length), "tensorbridge stand-in GPU %d", device);
  return kSuccess;
}

CUresult cuDevicePrimaryCtxRetain(Context** context, int device) {
  ENTER("cuDevicePrimaryCtxRetain");
  if (device < 0 || device >= g_device_count) return kInvalidDevice;
  count("cuDevicePrimaryCtxRetain on device " + std::to_string(device));
  g_primary[device].device = device;
  *context = &g_primary[device];
  return kSuccess;
}

CUresult cuDevicePrimaryCtxRelease(int device) {
  ENTER("cuDevicePrimaryCtxRelease");
  return device < 0 || device >= g_device_count ? kInvalidDevice : kSuccess;
}

CUresult cuCtxGetCurrent(Context** context) {
  ENTER("cuCtxGetCurrent");
  *context = t_current;
  return kSuccess;
}

CUresult cuCtxSetCurrent(Context* context) {
  ENTER("cuCtxSetCurrent");
  if (context != nullptr && (context < g_primary || context >= g_primary + g_device_count)) {
    return misuse("cuCtxSetCurrent of an unknown context", kInvalidContext);
  }
  t_current = context;
  return kSuccess;
}

CUresult cuMemHostAlloc(void** pointer, size_t bytes, unsigned flags) {
  ENTER("cuMemHostAlloc");
  NEED_CONTEXT;
  if ((flags & ~0x7u) != 0) return misuse("cuMemHostAlloc flags", kInvalidValue);
  count("cuMemHostAlloc on device " + std::to_string(t_current->device));
  ++g_allocating;
  while (g_alloc_gate != nullptr && *g_alloc_gate == 0) {
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  struct Done {
    ~Done() { --g_allocating; }
  } done;
  void* memory = mmap(nullptr, page_rounded(bytes), PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (memory == MAP_FAILED) return kOutOfMemory;
  std::lock_guard<std::mutex> lock(g_mutex);
  g_pinned[reinterpret_cast<uintptr_t>(memory)] = page_rounded(bytes);
  *pointer = memory;
  return kSuccess;
}

CUresult cuMemFreeHost(void* pointer) {
  ENTER("cuMemFreeHost");
  NEED_CONTEXT;
  drain_all_streams();
  size_t size = 0;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = g_pinned.find(reinterpret_cast<uintptr_t>(pointer));
    if (it == g_pinned.end()) return misuse("cuMemFreeHost of unknown memory", kInvalidValue);
    size = it->second;
    g_pinned.erase(it);
  }
  munmap(pointer, size);
  return kSuccess;
}

// cuda.h: registers [p, p + bytesize) page-locked; INVALID_VALUE for what it
// cannot register, HOST_MEMORY_ALREADY_REGISTERED when any of it already is
// (by cuMemHostRegister or cuMemHostAlloc), NOT_SUPPORTED for I/O memory and
// for read-only registration on a device without that attribute (none of the
// stand-in's has it). It documents no alignment: none is asked for. The
// engine asks for nothing cuda.h refuses, so every refusal is a misuse.
CUresult cuMemHostRegister(void* p, size_t bytesize, unsigned flags) {
  if (g_forked) ++g_register_calls_after_fork;
  ENTER("cuMemHostRegister");
  NEED_CONTEXT;
  constexpr unsigned kPortable = 0x1, kDeviceMap = 0x2, kIoMemory = 0x4, kReadOnly = 0x8;
  if ((flags & ~(kPortable | kDeviceMap | kIoMemory | kReadOnly)) != 0) {
    return misuse("cuMemHostRegister flags", kInvalidValue);
  }
  if (flags & kIoMemory) return misuse("cuMemHostRegister of I/O memory", kNotSupported);
  if (flags & kReadOnly) return misuse("cuMemHostRegister read-only", kNotSupported);
  if (p == nullptr || bytesize == 0) return misuse("cuMemHostRegister of no bytes", kInvalidValue);
  const auto base = reinterpret_cast<uintptr_t>(p);
  if (bytesize > UINTPTR_MAX - base || in_device_memory(p)) {
    return misuse("cuMemHostRegister of memory that is not the host's", kInvalidValue);
  }
  bool taken;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    taken = overlaps(g_registered, base, bytesize) || overlaps(g_pinned, base, bytesize);
    if (!taken) g_registered[base] = bytesize;
  }
  if (taken) {
    return misuse("cuMemHostRegister of memory already registered", kHostMemoryAlreadyRegistered);
  }
  count(std::string("cuMemHostRegister") + (flags & kPortable ? " portable" : " not portable"));
  return kSuccess;
}

// cuda.h: `p` must be the base address given to cuMemHostRegister
// (HOST_MEMORY_NOT_REGISTERED otherwise). Unregistering memory that a copy
// in flight still reads or writes is a misuse (its result is undefined).
CUresult cuMemHostUnregister(void* p) {
  if (g_forked) ++g_register_calls_after_fork;
  ENTER("cuMemHostUnregister");
  NEED_CONTEXT;
  if (p == nullptr) return misuse("cuMemHostUnregister of NULL", kInvalidValue);
  const auto base = reinterpret_cast<uintptr_t>(p);
  bool registered, in_flight = false;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    auto it = g_registered.find(base);
    registered = it != g_registered.end();
    if (registered) {
      for (auto& [copy, range] : g_in_flight) {
        in_flight =
            in_flight || (range.first < base + it->second && base < range.first + range.second);
      }
      g_registered.erase(it);
    }
  }
  if (!registered) {
    return misuse("cuMemHostUnregister of memory not registered", kHostMemoryNotRegistered);
  }
  if (in_flight) count("misuse: cuMemHostUnregister with a copy in flight");
  return kSuccess;
}

CUresult cuMemAlloc(CUdeviceptr* pointer, size_t bytes) {
  ENTER("cuMemAlloc");
  NEED_CONTEXT;
  *pointer = allocate_device(t_current->device, bytes);
  return *pointer ? kSuccess : kOutOfMemory;
}

CUresult cuMemFree(CUdeviceptr pointer) {
  ENTER("cuMemFree");
  NEED_CONTEXT;
  drain_all_streams();
  std::lock_guard<std::mutex> lock(g_mutex);
  auto it = g_device_memory.find(pointer);
  if (it == g_device_memory.end()) return kInvalidValue;
  munmap(reinterpret_cast<void*>(it->first), it->second.size);
  munmap(it->second.alias, it->second.size);
  g_device_memory.erase(it);
  return kSuccess;
}

CUresult cuMemcpyDtoHAsync(void* dst, CUdeviceptr src, size_t bytes, void* stream) {
  ENTER("cuMemcpyDtoHAsync");
  NEED_CONTEXT;
  char* from = device_alias(src, bytes);
  if (from == nullptr || dst == nullptr || in_device_memory(dst)) return kInvalidValue;
  enqueue_copy(stream, static_cast<char*>(dst), from, bytes, !is_pinned(dst, bytes), dst);
  return kSuccess;
}

CUresult cuMemcpyHtoDAsync(CUdeviceptr dst, const void* src, size_t bytes, void* stream) {
  ENTER("cuMemcpyHtoDAsync");
  NEED_CONTEXT;
  char* to = device_alias(dst, bytes);
  if (to == nullptr || src == nullptr || in_device_memory(src)) return kInvalidValue;
  enqueue_copy(stream, to, static_cast<const char*>(src), bytes, !is_pinned(src, bytes), src);
  return kSuccess;
}

struct MemcpyAttributes {
  int src_access_order;
  int src_location[2];
  int dst_location[2];
  unsigned flags;
};

CUresult cuMemcpyBatchAsync(CUdeviceptr* dsts, CUdeviceptr* srcs, size_t* sizes, size_t count,
                            MemcpyAttributes* attrs, size_t* attr_indices, size_t attr_count,
                            size_t* fail_index, void* stream) {
  ENTER("cuMemcpyBatchAsync");
  auto refuse = [&](const char* why, size_t index = SIZE_MAX) {
    if (fail_index) *fail_index = index;
    return misuse(why, kInvalidValue);
  };
  // cuda.h: "Must not be legacy NULL stream" (and INVALID_VALUE is the
  // only refusal it lists besides initialisation).
  if (is_legacy(stream)) return refuse("cuMemcpyBatchAsync on the legacy stream");
  NEED_CONTEXT;
  if (count == 0) return refuse("cuMemcpyBatchAsync of no copies");
  if (attrs == nullptr || attr_indices == nullptr || attr_count == 0 || attr_count > count) {
    return refuse("cuMemcpyBatchAsync attributes");
  }
  for (size_t k = 0; k < attr_count; ++k) {
    const bool ordered = k == 0 ? attr_indices[0] == 0 : attr_indices[k] > attr_indices[k - 1];
    if (!ordered || attr_indices[k] >= count) return refuse("cuMemcpyBatchAsync attrsIdxs");
    if (attrs[k].src_access_order < 1 || attrs[k].src_access_order > 3 ||
        (attrs[k].flags & ~1u) != 0) {
      return refuse("cuMemcpyBatchAsync attributes", attr_indices[k]);
    }
  }
  for (size_t current = g_largest_batch; count > current;) {
    if (g_largest_batch.compare_exchange_weak(current, count)) break;
  }
  std::vector<std::tuple<char*, const char*, size_t>> copies;
  bool pageable = false;
  for (size_t i = 0; i < count; ++i) {
    char* from = device_alias(srcs[i], sizes[i]);
    auto* to = reinterpret_cast<char*>(dsts[i]);
    if (from == nullptr || in_device_memory(to)) {
      if (fail_index) *fail_index = i;
      return kInvalidValue;
    }
    pageable = pageable || !is_pinned(to, sizes[i]);
    copies.emplace_back(to, from, sizes[i]);
  }
  Stream* s = stream_of(stream);
  auto done = std::make_shared<Event>();
  std::vector<uint64_t> started;
  for (auto& [to, from, bytes] : copies) started.push_back(copy_starts(to, bytes));
  s->push([=] {
    delay();
    for (auto& [to, from, bytes] : copies) std::memcpy(to, from, bytes);
    for (uint64_t copy : started) copy_ends(copy);
    complete(done.get(), 1);
  });
  if (pageable) wait_event(done.get(), 1);
  return kSuccess;
}

CUresult cuStreamCreate(void** stream, unsigned flags) {
  ENTER("cuStreamCreate");
  NEED_CONTEXT;
  if (flags > 1) return misuse("cuStreamCreate flags", kInvalidValue);
  *stream = new_stream(t_current->device);
  return kSuccess;
}

CUresult cuStreamDestroy(void* stream) {
  ENTER("cuStreamDestroy");
  NEED_CONTEXT;
  stream_of(stream)->drain();  // streams are never freed: a worker may still hold one
  return kSuccess;
}

CUresult cuStreamSynchronize(void* stream) {
  ENTER("cuStreamSynchronize");
  NEED_CONTEXT;
  stream_of(stream)->drain();
  return kSuccess;
}

CUresult cuEventCreate(Event** event, unsigned flags) {
  ENTER("cuEventCreate");
  NEED_CONTEXT;
  if ((flags & ~0x7u) != 0 || ((flags & 0x4) && !(flags & 0x2))) {
    return misuse("cuEventCreate flags", kInvalidValue);
  }
  auto* created = new Event();
  created->device = t_current->device;
  created->flags = flags;
  *event = created;
  return kSuccess;
}

CUresult cuEventDestroy(Event* event) {
  ENTER("cuEventDestroy");
  NEED_CONTEXT;
  // Like the real driver, destroying a recorded event is allowed: resources go
  // once the stream is done with it. The object is kept (a pending stream
  // task may still touch it), marked so that a later use is refused.
  if (live(event) == nullptr) return misuse("event used after cuEventDestroy", kInvalidHandle);
  // (*) Destroyed from its own context, as every other call on it.
  if (t_current->device != event->device) {
    return misuse("cuEventDestroy in another context", kInvalidContext);
  }
  std::lock_guard<std::mutex> lock(g_mutex);
  event->destroyed = true;
  return kSuccess;
}

CUresult cuEventRecord(Event* event, void* stream) {
  ENTER("cuEventRecord");
  NEED_CONTEXT;
  if (live(event) == nullptr) return misuse("event used after cuEventDestroy", kInvalidHandle);
  // "hEvent and hStream must be from the same context".
  if (stream_device(stream) != event->device) {
    return misuse("cuEventRecord on another context's stream", kInvalidHandle);
  }
  uint64_t sequence;
  {
    std::lock_guard<std::mutex> lock(event->mutex);
    sequence = ++event->recorded;
  }
  stream_of(stream)->push([event, sequence] { complete(event, sequence); });
  return kSuccess;
}

// cuda.h lists no INVALID_CONTEXT here: no current context is needed.
CUresult cuEventQuery(Event* event) {
  ENTER("cuEventQuery");
  if (live(event) == nullptr) return misuse("event used after cuEventDestroy", kInvalidHandle);
  std::lock_guard<std::mutex> lock(event->mutex);
  return event->completed >= event->recorded ? kSuccess : kNotReady;
}

CUresult cuEventSynchronize(Event* event) {
  ENTER("cuEventSynchronize");
  NEED_CONTEXT;
  if (live(event) == nullptr) return misuse("event used after cuEventDestroy", kInvalidHandle);
  // Without CU_EVENT_BLOCKING_SYNC the real driver busy-waits: a core spins.
  if (!(event->flags & 0x1)) count("spinning cuEventSynchronize");
  uint64_t sequence;
  {
    std::lock_guard<std::mutex> lock(event->mutex);
    sequence = event->recorded;
  }
  wait_event(event, sequence);
  return kSuccess;
}

CUresult cuStreamWaitEvent(void* stream, Event* event, unsigned flags) {
  ENTER("cuStreamWaitEvent");
  NEED_CONTEXT;
  if (live(event) == nullptr) return misuse("event used after cuEventDestroy", kInvalidHandle);
  if (flags != 0) return misuse("cuStreamWaitEvent flags outside capture", kInvalidValue);
  uint64_t sequence;
  {
    std::lock_guard<std::mutex> lock(event->mutex);
    sequence = event->recorded;
  }
  stream_of(stream)->push([event, sequence] { wait_event(event, sequence); });
  return kSuccess;
}

// The entry points served through cuGetProcAddress.
const std::unordered_map<std::string, void*>& entry_points() {
  static const std::unordered_map<std::string, void*> table = {
#define ENTRY(name) {#name, reinterpret_cast<void*>(&name)}
      ENTRY(cuInit),
      ENTRY(cuDriverGetVersion),
      ENTRY(cuGetErrorName),
      ENTRY(cuGetErrorString),
      ENTRY(cuDeviceGetCount),
      ENTRY(cuDeviceGet),
      ENTRY(cuDeviceGetName),
      ENTRY(cuDevicePrimaryCtxRetain),
      ENTRY(cuDevicePrimaryCtxRelease),
      ENTRY(cuCtxGetCurrent),
      ENTRY(cuCtxSetCurrent),
      ENTRY(cuMemHostAlloc),
      ENTRY(cuMemFreeHost),
      ENTRY(cuMemHostRegister),
      ENTRY(cuMemHostUnregister),
      ENTRY(cuMemAlloc),
      ENTRY(cuMemFree),
      ENTRY(cuMemcpyDtoHAsync),
      ENTRY(cuMemcpyHtoDAsync),
      ENTRY(cuMemcpyBatchAsync),
      ENTRY(cuStreamCreate),
      ENTRY(cuStreamDestroy),
      ENTRY(cuStreamSynchronize),
      ENTRY(cuEventCreate),
      ENTRY(cuEventDestroy),
      ENTRY(cuEventRecord),
      ENTRY(cuEventQuery),
      ENTRY(cuEventSynchronize),
      ENTRY(cuStreamWaitEvent),
#undef ENTRY
  };
  return table;
}

// As cuda.h says: CUDA_SUCCESS with a NULL pointer (and the reason in
// symbolStatus) for a name it lacks or a version too old for it.
CUresult cuGetProcAddress_v2(const char* symbol, void** function, int version, uint64_t,
                             int* status) {
  if (CUresult r = enter("cuGetProcAddress"); r != kSuccess) return r;
  constexpr int kFound = 0, kSymbolNotFound = 1, kVersionNotSufficient = 2;
  *function = nullptr;
  if (status) *status = kFound;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    g_versions[symbol] = version;
  }
  const std::string name = symbol;
  bool missing = name == "cuMemcpyBatchAsync" && std::getenv("STANDIN_NO_BATCH_COPY");
  if (const char* list = std::getenv("STANDIN_MISSING")) {
    const std::string names = std::string(",") + list + ",";
    missing = missing || names.find("," + name + ",") != std::string::npos;
  }
  auto it = entry_points().find(name);
  if (it == entry_points().end() || missing) {
    if (status) *status = kSymbolNotFound;
    return kSuccess;
  }
  if (name == "cuMemcpyBatchAsync" && version < 12080) {
    if (status) *status = kVersionNotSufficient;
    return kSuccess;
  }
  *function = it->second;
  return kSuccess;
}

CUresult cuGetProcAddress(const char* symbol, void** function, int version, uint64_t flags) {
  return cuGetProcAddress_v2(symbol, function, version, flags, nullptr);
}

// ---- the control panel -------------------------------------------------------

long standin_calls(const char* name) {
  std::lock_guard<std::mutex> lock(g_mutex);
  auto it = g_calls.find(name);
  return it == g_calls.end() ? 0 : it->second;
}

int standin_version_asked(const char* name) {
  std::lock_guard<std::mutex> lock(g_mutex);
  auto it = g_versions.find(name);
  return it == g_versions.end() ? -1 : it->second;
}

void standin_reset() {
  g_sticky = 0;
  g_largest_batch = 0;
  g_alloc_gate = nullptr;
  std::lock_guard<std::mutex> lock(g_mutex);
  g_calls.clear();
  g_failures.clear();
  g_delay_min_us = 0;
  g_delay_max_us = 0;
}

// The next calls of `name`, after `skip` successful ones, fail `times` times.
void standin_fail(const char* name, int result, long skip, long times) {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_failures[name] = Failure{skip, times, result};
}

void standin_set_delay_us(long min_us, long max_us) {
  g_delay_min_us = min_us;
  g_delay_max_us = max_us;
}

// Device memory for the tests' producers, without needing a context.
CUdeviceptr standin_malloc(int device, size_t bytes) { return allocate_device(device, bytes); }

// Frees at once, without waiting for work in flight: a test producer that
// frees its memory the moment its DLPack deleter runs.
void standin_free(CUdeviceptr pointer) {
  std::lock_guard<std::mutex> lock(g_mutex);
  auto it = g_device_memory.find(pointer);
  if (it == g_device_memory.end()) return;
  munmap(reinterpret_cast<void*>(it->first), it->second.size);
  munmap(it->second.alias, it->second.size);
  g_device_memory.erase(it);
}

// Synchronous host <-> device copies for the tests' oracle.
int standin_write(CUdeviceptr dst, const void* src, size_t bytes) {
  char* to = device_alias(dst, bytes);
  if (to == nullptr) return kInvalidValue;
  std::memcpy(to, src, bytes);
  return kSuccess;
}

int standin_read(void* dst, CUdeviceptr src, size_t bytes) {
  char* from = device_alias(src, bytes);
  if (from == nullptr) return kInvalidValue;
  std::memcpy(dst, from, bytes);
  return kSuccess;
}

// A stream for the tests' producers (their "current stream").
void* standin_stream_create() { return new_stream(); }

// A fake kernel on `stream`: after `delay_us`, sets `bytes` bytes at `dst` to `value`.
int standin_enqueue_fill(void* stream, CUdeviceptr dst, int value, size_t bytes, long delay_us) {
  char* to = device_alias(dst, bytes);
  if (to == nullptr) return kInvalidValue;
  stream_of(stream)->push([=] {
    std::this_thread::sleep_for(std::chrono::microseconds(delay_us));
    std::memset(to, value, bytes);
  });
  return kSuccess;
}

void standin_synchronize(void* stream) { stream_of(stream)->drain(); }

// Holds `stream` until the int at `flag` becomes non-zero (set by a test thread).
void standin_enqueue_gate(void* stream, volatile int* flag) {
  stream_of(stream)->push([flag] {
    while (*flag == 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
  });
}

// Every later call that needs the driver returns `result`, as after a sticky
// error (CUDA_ERROR_ILLEGAL_ADDRESS); 0 clears it.
void standin_set_sticky(int result) { g_sticky = result; }

size_t standin_largest_batch() { return g_largest_batch; }

// cuMemHostAlloc waits while *flag == 0 (nullptr: no gate).
void standin_gate_allocations(volatile int* flag) { g_alloc_gate = flag; }

int standin_allocating() { return g_allocating; }

// The names counted so far, "name=count;..." (for the misuse check).
const char* standin_counted() {
  static std::string text;
  std::lock_guard<std::mutex> lock(g_mutex);
  text.clear();
  for (auto& [name, calls] : g_calls) text += name + "=" + std::to_string(calls) + ";";
  return text.c_str();
}

long standin_registered_bytes() {
  std::lock_guard<std::mutex> lock(g_mutex);
  long total = 0;
  for (auto& [base, size] : g_registered) total += static_cast<long>(size);
  return total;
}

long standin_register_calls_after_fork() { return g_register_calls_after_fork; }

long standin_live_pinned_bytes() {
  std::lock_guard<std::mutex> lock(g_mutex);
  long total = 0;
  for (auto& [base, size] : g_pinned) total += static_cast<long>(size);
  return total;
}

}  // extern "C"

// STANDIN_REPORT_EXIT: says on stderr how much stream work was still queued
// when the process exited (what a completion thread outliving the
// interpreter would still be doing).
__attribute__((destructor)) static void standin_report_exit() {
  if (!std::getenv("STANDIN_REPORT_EXIT") || g_forked) return;
  size_t pending = 0;
  for (Stream* stream : g_streams) {
    std::lock_guard<std::mutex> lock(stream->mutex);
    pending += stream->pending;
  }
  std::fprintf(stderr, "standin: %zu stream tasks in flight at exit\n", pending);
}

// After fork the child's driver is unusable, as with the real one.
__attribute__((constructor)) static void standin_setup() {
  if (const char* count = std::getenv("STANDIN_DEVICES")) g_device_count = std::atoi(count);
  pthread_atfork(nullptr, nullptr, [] { g_forked = true; });
}

#include "transfer.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <deque>
#include <functional>
#include <map>
#include <thread>
#include <utility>

#include "host_copy.h"
#include "per_process.h"
#include "pinned_in_place.h"
#include "pinned_pool.h"

namespace tensorbridge {

using namespace cuda;

// -- Transfer ----------------------------------------------------------------

bool Transfer::done() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return finished_;
}

bool Transfer::finished_within(double timeout_seconds) const {
  std::unique_lock<std::mutex> lock(mutex_);
  if (timeout_seconds < 0) {
    changed_.wait(lock, [this] { return finished_; });
    return true;
  }
  return changed_.wait_for(lock, std::chrono::duration<double>(timeout_seconds),
                           [this] { return finished_; });
}

std::string Transfer::error() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return error_;
}

void Transfer::finish(std::string error) {
  std::vector<uint64_t> tokens;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    finished_ = true;
    error_ = std::move(error);
    tokens.swap(tokens_);
  }
  changed_.notify_all();
  for (uint64_t token : tokens) post_finished(token);
}

void Transfer::post_when_done(uint64_t token) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!finished_) {
      tokens_.push_back(token);
      return;
    }
  }
  post_finished(token);
}

std::shared_ptr<Transfer> Transfer::finished(std::string error) {
  auto transfer = std::make_shared<Transfer>();
  transfer->finish(std::move(error));
  return transfer;
}

namespace {

class FinishedTokens {
 public:
  void post(uint64_t token) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      tokens_.push_back(token);
    }
    changed_.notify_one();
  }

  std::vector<uint64_t> take() {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [this] { return !tokens_.empty(); });
    return std::exchange(tokens_, {});
  }

 private:
  std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<uint64_t> tokens_;
};

}  // namespace

void post_finished(uint64_t token) { per_process<FinishedTokens>().post(token); }

std::vector<uint64_t> take_finished() { return per_process<FinishedTokens>().take(); }

namespace {

std::atomic<size_t> g_chunk_bytes{16u << 20};
std::atomic<size_t> g_batch_submissions{0};
std::atomic<size_t> g_batch_refusals{0};
std::atomic<size_t> g_single_copies{0};
constexpr size_t kMinChunkBytes = 64u << 10;
constexpr size_t kStagingSlots = 3;
constexpr unsigned kEventFlags = CU_EVENT_BLOCKING_SYNC | CU_EVENT_DISABLE_TIMING;
// How long an interruptible wait polls before a completion thread takes it
// over: a small copy is over by then (a hand-over costs two thread wake-ups),
// and a long wait then sleeps instead of spinning.
constexpr auto kQuickPollTime = std::chrono::microseconds(20);
constexpr double kInterruptSliceSeconds = 0.1;
constexpr size_t kMaxCompletionThreads = 4;
constexpr size_t kUrgentThreads = 2;  // beyond the maximum, for waiting callers only

// An event, destroyed with its last owner (inside a context of its device:
// every owner drops it under a DeviceGuard).
class Event {
 public:
  Event() { check(driver().cuEventCreate(&event_, kEventFlags), "cuEventCreate"); }
  ~Event() {
    if (event_ != nullptr) driver().cuEventDestroy(event_);
  }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  CUevent get() const { return event_; }
  CUevent release() { return std::exchange(event_, nullptr); }
  void record(CUstream stream) { check(driver().cuEventRecord(event_, stream), "cuEventRecord"); }

 private:
  CUevent event_ = nullptr;
};

// The completion threads: each waits for a queued event, runs the follow-up
// work (draining staging, releasing blocks) and finishes the Transfer. A
// thread is started when a job would otherwise wait for one, up to
// kMaxCompletionThreads, so that a slow stream does not hold up waits on
// another. Fields guarded by mutex_.
class Completer {
 public:
  struct Job {
    std::shared_ptr<Transfer> transfer;
    int device;
    std::shared_ptr<Event> event;
    std::function<void(bool ok)> then;  // may be empty; runs even when the wait failed
  };

  static Completer& instance() { return per_process<Completer>(); }

  // `urgent`: a caller is waiting for it (a synchronous copy): it goes first,
  // and may start a thread beyond the maximum, so that it never waits behind
  // asynchronous copies on slower streams.
  void submit(Job job, bool urgent = false) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      // Every queued job has an idle thread to take it, up to the maximum
      // (a thread counts as idle from its start until it takes a job). The
      // thread starts before the job is queued: if it cannot, nothing is.
      const size_t limit = kMaxCompletionThreads + (urgent ? kUrgentThreads : 0);
      if (jobs_.size() + 1 > idle_ && threads_ < limit) {
        std::thread([this] { run(); }).detach();
        ++threads_;
        ++idle_;
      }
      if (urgent) {
        jobs_.push_front(std::move(job));
      } else {
        jobs_.push_back(std::move(job));
      }
      ++unfinished_;
    }
    changed_.notify_all();
  }

  // False if `timeout_seconds` (< 0: none) passed before every job finished.
  bool wait_idle(double timeout_seconds) {
    std::unique_lock<std::mutex> lock(mutex_);
    auto idle = [this] { return unfinished_ == 0; };
    if (timeout_seconds < 0) {
      changed_.wait(lock, idle);
      return true;
    }
    return changed_.wait_for(lock, std::chrono::duration<double>(timeout_seconds), idle);
  }

 private:
  void run() {
    for (;;) {
      Job job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        changed_.wait(lock, [this] { return !jobs_.empty(); });
        job = std::move(jobs_.front());
        jobs_.pop_front();
        --idle_;
      }
      complete(job);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        --unfinished_;
        ++idle_;
      }
      changed_.notify_all();
    }
  }

  static void complete(Job& job) {
    std::string error;
    bool ok = false;
    try {
      DeviceGuard guard(job.device);
      const CUresult result = driver().cuEventSynchronize(job.event->get());
      job.event.reset();  // inside the device's context
      ok = result == CUDA_SUCCESS;
      if (!ok) error = describe("cuEventSynchronize", result);
    } catch (const std::exception& e) {
      error = e.what();  // e.g. the device guard failed: the copy's state is unknown
      try {
        DeviceGuard guard(job.device);  // an event is destroyed in its own context
        job.event.reset();
      } catch (const std::exception&) {
        new std::shared_ptr<Event>(std::move(job.event));  // leaked: better than misused
      }
    }
    // The follow-up runs whatever happened, so that no block stays in use.
    try {
      if (job.then) job.then(ok);
    } catch (const std::exception& e) {
      if (error.empty()) error = e.what();
    }
    job.transfer->finish(error);
  }

  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Job> jobs_;
  size_t unfinished_ = 0;
  size_t threads_ = 0;
  size_t idle_ = 0;
};

// A Transfer that finishes once `stream` has reached this point. `lease` (a
// pinned-in-place registration the copies before it use) is let go of then,
// before the Transfer reports done: until then the memory stays registered.
std::shared_ptr<Transfer> stream_point(int device, CUstream stream,
                                       std::shared_ptr<void> lease = nullptr) {
  auto event = std::make_shared<Event>();
  event->record(stream);
  auto transfer = std::make_shared<Transfer>();
  std::function<void(bool)> then;
  if (lease) then = [lease](bool) mutable { lease.reset(); };
  Completer::instance().submit({transfer, device, std::move(event), std::move(then)});
  return transfer;
}

// What an interrupted copy leaves in flight on `stream`. If even that cannot
// be recorded (a sticky error), nothing will run there any more: no pending.
void set_pending(CopyInterrupted& stop, int device, CUstream stream,
                 std::shared_ptr<void> lease = nullptr) {
  try {
    stop.pending = stream_point(device, stream, std::move(lease));
  } catch (const std::exception&) {
    stop.pending = nullptr;
  }
}

// After a failure with copies possibly in flight on `stream`: keeps `lease`
// until they have completed, or drops it when even that cannot be recorded
// (a sticky error: nothing runs there any more).
void hold_until_done(std::shared_ptr<void> lease, int device, CUstream stream) noexcept {
  if (!lease) return;
  try {
    stream_point(device, stream, std::move(lease));
  } catch (const std::exception&) {
  }
}

// A lease of the pinned-in-place registration that holds [data, data + bytes),
// or nullptr: the engine's own test of "pinned", by address (see pinned_in_place.h).
std::shared_ptr<void> pinned_in_place(const void* data, size_t bytes) {
  return PinnedInPlace::instance().lease(data, bytes);
}

// Waits for `event`; with an InterruptCheck, in slices that it may stop
// (throwing CopyInterrupted with what is still in flight on `stream`).
void wait_for(const std::shared_ptr<Event>& event, int device, CUstream stream,
              const InterruptCheck& interrupted) {
  const Driver& d = driver();
  if (!interrupted) {
    check(d.cuEventSynchronize(event->get()), "cuEventSynchronize");
    return;
  }
  const auto give_up = std::chrono::steady_clock::now() + kQuickPollTime;
  do {
    const CUresult state = d.cuEventQuery(event->get());
    if (state == CUDA_SUCCESS) return;
    if (state != CUDA_ERROR_NOT_READY) check(state, "cuEventQuery");
    std::this_thread::yield();
  } while (std::chrono::steady_clock::now() < give_up);
  auto watched = std::make_shared<Transfer>();
  Completer::instance().submit({watched, device, event, nullptr}, /*urgent=*/true);
  while (!watched->finished_within(kInterruptSliceSeconds)) {
    if (interrupted()) throw CopyInterrupted(nullptr);  // `pending` is set by the copy
  }
  const std::string error = watched->error();
  if (!error.empty()) throw DriverError(error, CUDA_ERROR_NOT_READY);
}

// Hands staging blocks back after a failure or an interruption: the copies
// that used them may still be in flight, so each goes back with an event
// recorded after them; if even that fails the block is retired (freed, never
// reused).
void release_after_failure(std::vector<Block>& blocks, int device, CUstream stream) {
  for (Block& block : blocks) {
    CUevent event = nullptr;
    if (driver().cuEventCreate(&event, kEventFlags) == CUDA_SUCCESS &&
        driver().cuEventRecord(event, stream) == CUDA_SUCCESS) {
      PinnedPool::instance().release(block, event, device);
    } else {
      if (event != nullptr) driver().cuEventDestroy(event);
      PinnedPool::instance().retire(block);
    }
  }
  blocks.clear();
}

// Up to kStagingSlots pinned chunks for a copy of `bytes`, smaller chunks
// when the pinned limit refuses; empty when not even the smallest fits.
std::vector<Block> staging_slots(int device, size_t bytes, size_t* chunk) {
  *chunk = std::min(g_chunk_bytes.load(), bytes);
  std::vector<Block> slots;
  const size_t wanted = std::min(kStagingSlots, (bytes + *chunk - 1) / *chunk);
  while (slots.size() < wanted) {
    Block block = PinnedPool::instance().try_acquire(device, *chunk);
    if (block.data != nullptr) {
      slots.push_back(block);
    } else if (slots.empty() && *chunk > kMinChunkBytes) {
      *chunk = std::max(kMinChunkBytes, *chunk / 4);
    } else {
      break;
    }
  }
  return slots;
}

void wait_for_stream(int device, CUstream stream, const InterruptCheck& interrupted) {
  auto done = std::make_shared<Event>();
  done->record(stream);
  wait_for(done, device, stream, interrupted);
}

// A stream of our own per device, for batch copies that the caller's stream
// does not allow (the legacy default stream); nullptr when the driver lacks
// the calls to make and order one. Created once, never destroyed.
CUstream batch_stream(int device) {
  struct Streams {
    std::mutex mutex;
    std::map<int, CUstream> by_device;  // guarded by mutex
  };
  const Driver& d = driver();
  if (d.cuStreamCreate == nullptr || d.cuStreamWaitEvent == nullptr) return nullptr;
  Streams& streams = per_process<Streams>();
  std::lock_guard<std::mutex> lock(streams.mutex);
  auto it = streams.by_device.find(device);
  if (it != streams.by_device.end()) return it->second;
  CUstream stream = nullptr;
  if (d.cuStreamCreate(&stream, CU_STREAM_NON_BLOCKING) != CUDA_SUCCESS) stream = nullptr;
  streams.by_device[device] = stream;  // a failure is not retried
  return stream;
}

// `stream` waits for the work queued on `before` so far.
void order_after(CUstream stream, CUstream before) {
  Event point;
  point.record(before);
  check(driver().cuStreamWaitEvent(stream, point.get(), 0), "cuStreamWaitEvent");
}

struct HostCopy {
  void* dst;
  CUdeviceptr src;
  size_t bytes;
};

// Enqueues device -> pinned copies on `stream` in as few submissions as the
// driver allows: batches of at most kMaxBatchCopies (on our own stream when
// `stream` is the legacy one, ordered both ways), else one call per copy.
void enqueue_packed(int device, const std::vector<HostCopy>& copies, CUstream stream) {
  const Driver& d = driver();
  size_t issued = 0;
  CUstream on = d.cuMemcpyBatchAsync == nullptr ? nullptr
                : is_legacy_stream(stream)      ? batch_stream(device)
                                                : stream;
  if (on != nullptr && !copies.empty()) {
    if (on != stream) order_after(on, stream);
    CUmemcpyAttributes attributes{CU_MEMCPY_SRC_ACCESS_ORDER_STREAM,
                                  {CU_MEM_LOCATION_TYPE_DEVICE, device},
                                  {CU_MEM_LOCATION_TYPE_HOST, 0},
                                  0};
    std::vector<CUdeviceptr> dsts, srcs;
    std::vector<size_t> sizes;
    while (issued < copies.size()) {
      const size_t count = std::min(kMaxBatchCopies, copies.size() - issued);
      dsts.clear(), srcs.clear(), sizes.clear();
      for (size_t i = issued; i < issued + count; ++i) {
        dsts.push_back(reinterpret_cast<CUdeviceptr>(copies[i].dst));
        srcs.push_back(copies[i].src);
        sizes.push_back(copies[i].bytes);
      }
      size_t first = 0;
      size_t fail_index = 0;
      // Refused (nothing of it queued): the rest goes one by one below.
      if (d.cuMemcpyBatchAsync(dsts.data(), srcs.data(), sizes.data(), count, &attributes, &first,
                               1, &fail_index, on) != CUDA_SUCCESS) {
        g_batch_refusals.fetch_add(1, std::memory_order_relaxed);
        break;
      }
      g_batch_submissions.fetch_add(1, std::memory_order_relaxed);
      issued += count;
    }
    // The caller's stream waits for the batches: its later work (and the
    // caller's wait) comes after them.
    if (on != stream) order_after(stream, on);
  }
  for (size_t i = issued; i < copies.size(); ++i) {
    check(d.cuMemcpyDtoHAsync(copies[i].dst, copies[i].src, copies[i].bytes, stream),
          "cuMemcpyDtoHAsync");
    g_single_copies.fetch_add(1, std::memory_order_relaxed);
  }
}

}  // namespace

PackedCopyCounts packed_copy_counts() {
  return {g_batch_submissions.load(), g_batch_refusals.load(), g_single_copies.load()};
}

void reset_packed_copy_counts() {
  g_batch_submissions = 0;
  g_batch_refusals = 0;
  g_single_copies = 0;
}

void set_staging_chunk_bytes(size_t bytes) { g_chunk_bytes = std::max(bytes, size_t{4096}); }

// -- device -> host ------------------------------------------------------------

void copy_to_host(const DeviceSpan& src, CUstream stream, void* dst, bool dst_pinned,
                  const InterruptCheck& interrupted) {
  if (src.bytes == 0) return;
  DeviceGuard guard(src.device);
  const Driver& d = driver();
  auto* out = static_cast<char*>(dst);
  std::shared_ptr<void> lease = dst_pinned ? nullptr : pinned_in_place(dst, src.bytes);
  size_t chunk = 0;
  std::vector<Block> slots;
  if (!dst_pinned && !lease) slots = staging_slots(src.device, src.bytes, &chunk);
  if (slots.empty()) {
    // A pinned destination: one direct copy. Else the pinned limit leaves no
    // room to stage, and the driver stages itself (a copy into pageable
    // memory returns once it has completed).
    check(d.cuMemcpyDtoHAsync(out, src.data, src.bytes, stream), "cuMemcpyDtoHAsync");
    try {
      wait_for_stream(src.device, stream, interrupted);
    } catch (CopyInterrupted& stop) {
      set_pending(stop, src.device, stream, lease);
      throw;
    } catch (...) {
      hold_until_done(lease, src.device, stream);
      throw;
    }
    return;
  }
  const size_t chunks = (src.bytes + chunk - 1) / chunk;
  auto length = [&](size_t i) { return std::min(chunk, src.bytes - i * chunk); };
  try {
    std::vector<std::shared_ptr<Event>> events(slots.size());
    auto enqueue = [&](size_t i) {
      const size_t k = i % slots.size();
      check(d.cuMemcpyDtoHAsync(slots[k].data, src.data + i * chunk, length(i), stream),
            "cuMemcpyDtoHAsync");
      events[k] = std::make_shared<Event>();  // a completion thread may still hold the last one
      events[k]->record(stream);
    };
    for (size_t i = 0; i < std::min(chunks, slots.size()); ++i) enqueue(i);
    for (size_t i = 0; i < chunks; ++i) {
      const size_t k = i % slots.size();
      wait_for(events[k], src.device, stream, interrupted);
      parallel_memcpy(out + i * chunk, slots[k].data, length(i));
      if (i + slots.size() < chunks) enqueue(i + slots.size());
    }
  } catch (CopyInterrupted& stop) {
    release_after_failure(slots, src.device, stream);
    set_pending(stop, src.device, stream);  // after the blocks' events
    throw;
  } catch (...) {
    release_after_failure(slots, src.device, stream);
    throw;
  }
  for (Block& block : slots) PinnedPool::instance().release(block);
}

std::shared_ptr<Transfer> copy_to_host_async(const DeviceSpan& src, CUstream stream, void* dst,
                                             bool dst_pinned) {
  if (src.bytes == 0) return Transfer::finished();
  DeviceGuard guard(src.device);
  const Driver& d = driver();
  std::shared_ptr<void> lease = dst_pinned ? nullptr : pinned_in_place(dst, src.bytes);
  if (dst_pinned || lease) {
    check(d.cuMemcpyDtoHAsync(dst, src.data, src.bytes, stream), "cuMemcpyDtoHAsync");
    return stream_point(src.device, stream, std::move(lease));
  }
  auto transfer = std::make_shared<Transfer>();
  Block staging = PinnedPool::instance().try_acquire(src.device, src.bytes);
  if (staging.data == nullptr) {  // the limit forbids staging it whole: copy now
    copy_to_host(src, stream, dst, false);
    transfer->finish();
    return transfer;
  }
  std::vector<Block> held{staging};
  try {
    check(d.cuMemcpyDtoHAsync(staging.data, src.data, src.bytes, stream), "cuMemcpyDtoHAsync");
    auto done = std::make_shared<Event>();
    done->record(stream);
    const size_t bytes = src.bytes;
    Completer::instance().submit(
        {transfer, src.device, std::move(done), [staging, dst, bytes](bool ok) {
           if (!ok) {  // the block's state is unknown
             PinnedPool::instance().retire(staging);
             return;
           }
           parallel_memcpy(dst, staging.data, bytes);
           PinnedPool::instance().release(staging);
         }});
  } catch (...) {
    release_after_failure(held, src.device, stream);
    throw;
  }
  return transfer;
}

void copy_many_to_host(const std::vector<DeviceSpan>& srcs, CUstream stream,
                       const std::vector<void*>& dsts, bool dst_pinned,
                       const InterruptCheck& interrupted) {
  if (srcs.empty()) return;
  std::vector<HostCopy> direct;
  uintptr_t low = UINTPTR_MAX, high = 0;  // the bytes every destination lies in
  for (size_t i = 0; i < srcs.size(); ++i) {
    if (srcs[i].bytes == 0) continue;
    direct.push_back({dsts[i], srcs[i].data, srcs[i].bytes});
    low = std::min(low, reinterpret_cast<uintptr_t>(dsts[i]));
    high = std::max(high, reinterpret_cast<uintptr_t>(dsts[i]) + srcs[i].bytes);
  }
  if (direct.empty()) return;
  std::shared_ptr<void> lease =
      dst_pinned ? nullptr : pinned_in_place(reinterpret_cast<void*>(low), high - low);
  if (dst_pinned || lease) {  // straight into the destinations, no packing block
    const int device = srcs.front().device;
    DeviceGuard guard(device);
    try {
      enqueue_packed(device, direct, stream);
      wait_for_stream(device, stream, interrupted);
    } catch (CopyInterrupted& stop) {
      set_pending(stop, device, stream, lease);
      throw;
    } catch (...) {
      hold_until_done(lease, device, stream);
      throw;
    }
    return;
  }
  constexpr size_t kAlign = 256;
  std::vector<size_t> offsets(srcs.size());
  size_t total = 0;
  for (size_t i = 0; i < srcs.size(); ++i) {
    offsets[i] = total;
    total += (srcs[i].bytes + kAlign - 1) / kAlign * kAlign;
  }
  if (total == 0) return;
  const int device = srcs.front().device;
  DeviceGuard guard(device);
  Block packed = PinnedPool::instance().try_acquire(device, total);
  if (packed.data == nullptr) {  // no room to pack: one by one
    for (size_t i = 0; i < srcs.size(); ++i) {
      copy_to_host(srcs[i], stream, dsts[i], false, interrupted);
    }
    return;
  }
  std::vector<Block> held{packed};
  auto* base = static_cast<char*>(packed.data);
  try {
    std::vector<HostCopy> copies;
    for (size_t i = 0; i < srcs.size(); ++i) {
      if (srcs[i].bytes > 0) copies.push_back({base + offsets[i], srcs[i].data, srcs[i].bytes});
    }
    enqueue_packed(device, copies, stream);
    wait_for_stream(device, stream, interrupted);
  } catch (CopyInterrupted& stop) {
    release_after_failure(held, device, stream);
    set_pending(stop, device, stream);  // after the block's event
    throw;
  } catch (...) {
    release_after_failure(held, device, stream);
    throw;
  }
  for (size_t i = 0; i < srcs.size(); ++i) std::memcpy(dsts[i], base + offsets[i], srcs[i].bytes);
  PinnedPool::instance().release(packed);
}

// -- host -> device ------------------------------------------------------------

std::shared_ptr<Transfer> copy_to_device(const void* src, bool src_pinned, const DeviceSpan& dst,
                                         CUstream stream) {
  if (dst.bytes == 0) return Transfer::finished();
  DeviceGuard guard(dst.device);
  const Driver& d = driver();
  const auto* in = static_cast<const char*>(src);
  std::shared_ptr<void> lease = src_pinned ? nullptr : pinned_in_place(src, dst.bytes);
  size_t chunk = 0;
  std::vector<Block> slots =
      src_pinned || lease ? std::vector<Block>{} : staging_slots(dst.device, dst.bytes, &chunk);
  if (slots.empty()) {
    // Pinned source: one direct copy. Pageable source with no room to stage:
    // the driver stages it and returns once `src` may be reused.
    check(d.cuMemcpyHtoDAsync(dst.data, in, dst.bytes, stream), "cuMemcpyHtoDAsync");
    return stream_point(dst.device, stream, std::move(lease));
  }
  const size_t chunks = (dst.bytes + chunk - 1) / chunk;
  std::vector<std::shared_ptr<Event>> events(slots.size());
  try {
    for (size_t i = 0; i < chunks; ++i) {
      const size_t k = i % slots.size();
      const size_t length = std::min(chunk, dst.bytes - i * chunk);
      if (i >= slots.size()) {  // the slot's previous copy must be done
        check(d.cuEventSynchronize(events[k]->get()), "cuEventSynchronize");
      }
      parallel_memcpy(slots[k].data, in + i * chunk, length);
      check(d.cuMemcpyHtoDAsync(dst.data + i * chunk, slots[k].data, length, stream),
            "cuMemcpyHtoDAsync");
      events[k] = std::make_shared<Event>();
      events[k]->record(stream);
    }
  } catch (...) {
    release_after_failure(slots, dst.device, stream);
    throw;
  }
  // Each slot goes back with the event of its last copy; the pool reuses it
  // only once that copy has completed.
  for (size_t k = 0; k < slots.size(); ++k) {
    PinnedPool::instance().release(slots[k], events[k]->release(), dst.device);
  }
  return stream_point(dst.device, stream);
}

bool wait_for_all_transfers(double timeout_seconds) {
  return Completer::instance().wait_idle(timeout_seconds);
}

}  // namespace tensorbridge

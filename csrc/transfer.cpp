#include "transfer.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <deque>
#include <functional>
#include <thread>
#include <utility>

#include "host_copy.h"
#include "per_process.h"
#include "pinned_pool.h"

namespace tensorbridge {

using namespace cuda;

// -- Transfer ----------------------------------------------------------------

bool Transfer::done() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return finished_;
}

bool Transfer::wait(double timeout_seconds) const {
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
  {
    std::lock_guard<std::mutex> lock(mutex_);
    finished_ = true;
    error_ = std::move(error);
  }
  changed_.notify_all();
}

std::shared_ptr<Transfer> Transfer::finished(std::string error) {
  auto transfer = std::make_shared<Transfer>();
  transfer->finish(std::move(error));
  return transfer;
}

namespace {

std::atomic<size_t> g_chunk_bytes{16u << 20};
constexpr size_t kMinChunkBytes = 64u << 10;
constexpr size_t kStagingSlots = 3;

// An event that is destroyed with its owner unless handed over with release().
class Event {
 public:
  Event() { check(driver().cuEventCreate(&event_, CU_EVENT_DISABLE_TIMING), "cuEventCreate"); }
  ~Event() {
    if (event_ != nullptr) driver().cuEventDestroy(event_);
  }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  CUevent get() const { return event_; }
  CUevent release() { return std::exchange(event_, nullptr); }
  void record(CUstream stream) { check(driver().cuEventRecord(event_, stream), "cuEventRecord"); }
  void synchronize() { check(driver().cuEventSynchronize(event_), "cuEventSynchronize"); }

 private:
  CUevent event_ = nullptr;
};

// The completion thread: waits for each queued event in order, runs the
// follow-up work (draining staging, releasing blocks) and finishes the
// Transfer. Fields guarded by mutex_.
class Completer {
 public:
  struct Job {
    std::shared_ptr<Transfer> transfer;
    int device;
    CUevent event;                      // owned: destroyed after the wait
    std::function<void(bool ok)> then;  // may be empty
  };

  static Completer& instance() { return per_process<Completer>(); }

  void submit(Job job) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!started_) {
        std::thread([this] { run(); }).detach();
        started_ = true;
      }
      jobs_.push_back(std::move(job));
      ++unfinished_;
    }
    changed_.notify_all();
  }

  void wait_idle() {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [this] { return unfinished_ == 0; });
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
      }
      std::string error;
      try {
        DeviceGuard guard(job.device);
        const CUresult result = driver().cuEventSynchronize(job.event);
        driver().cuEventDestroy(job.event);
        if (result != CUDA_SUCCESS) error = describe("cuEventSynchronize", result);
        if (job.then) job.then(error.empty());
      } catch (const std::exception& e) {
        error = e.what();
      }
      job.transfer->finish(error);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        --unfinished_;
      }
      changed_.notify_all();
    }
  }

  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Job> jobs_;
  size_t unfinished_ = 0;
  bool started_ = false;
};

// Hands staging blocks back after a failure: the copies that used them may
// still be in flight, so each goes back with an event recorded after them;
// if even that fails the block is retired (freed, never reused).
void release_after_failure(std::vector<Block>& blocks, CUstream stream) {
  for (Block& block : blocks) {
    CUevent event = nullptr;
    if (driver().cuEventCreate(&event, CU_EVENT_DISABLE_TIMING) == CUDA_SUCCESS &&
        driver().cuEventRecord(event, stream) == CUDA_SUCCESS) {
      PinnedPool::instance().release(block, event);
    } else {
      if (event != nullptr) driver().cuEventDestroy(event);
      PinnedPool::instance().retire(block);
    }
  }
  blocks.clear();
}

// Up to kStagingSlots pinned chunks for a copy of `bytes`, smaller chunks
// when the pinned limit refuses; empty when not even the smallest fits.
std::vector<Block> staging_slots(size_t bytes, size_t* chunk) {
  *chunk = std::min(g_chunk_bytes.load(), bytes);
  std::vector<Block> slots;
  const size_t wanted = std::min(kStagingSlots, (bytes + *chunk - 1) / *chunk);
  while (slots.size() < wanted) {
    Block block = PinnedPool::instance().try_acquire(*chunk);
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

void synchronize_stream_point(CUstream stream) {
  Event done;
  done.record(stream);
  done.synchronize();
}

}  // namespace

void set_staging_chunk_bytes(size_t bytes) {
  g_chunk_bytes = std::max(bytes, size_t{4096});
}

// -- device -> host ------------------------------------------------------------

void copy_to_host(const DeviceSpan& src, CUstream stream, void* dst, bool dst_pinned) {
  if (src.bytes == 0) return;
  DeviceGuard guard(src.device);
  const Driver& d = driver();
  auto* out = static_cast<char*>(dst);
  if (dst_pinned) {
    check(d.cuMemcpyDtoHAsync(out, src.data, src.bytes, stream), "cuMemcpyDtoHAsync");
    synchronize_stream_point(stream);
    return;
  }
  size_t chunk = 0;
  std::vector<Block> slots = staging_slots(src.bytes, &chunk);
  if (slots.empty()) {
    // The pinned limit leaves no room to stage: the driver stages itself
    // (a copy into pageable memory returns once it has completed).
    check(d.cuMemcpyDtoHAsync(out, src.data, src.bytes, stream), "cuMemcpyDtoHAsync");
    synchronize_stream_point(stream);
    return;
  }
  const size_t chunks = (src.bytes + chunk - 1) / chunk;
  auto length = [&](size_t i) { return std::min(chunk, src.bytes - i * chunk); };
  try {
    std::vector<Event> events(slots.size());
    auto enqueue = [&](size_t i) {
      const size_t k = i % slots.size();
      check(d.cuMemcpyDtoHAsync(slots[k].data, src.data + i * chunk, length(i), stream),
            "cuMemcpyDtoHAsync");
      events[k].record(stream);
    };
    for (size_t i = 0; i < std::min(chunks, slots.size()); ++i) enqueue(i);
    for (size_t i = 0; i < chunks; ++i) {
      const size_t k = i % slots.size();
      events[k].synchronize();
      parallel_memcpy(out + i * chunk, slots[k].data, length(i));
      if (i + slots.size() < chunks) enqueue(i + slots.size());
    }
  } catch (...) {
    release_after_failure(slots, stream);
    throw;
  }
  for (Block& block : slots) PinnedPool::instance().release(block);
}

std::shared_ptr<Transfer> copy_to_host_async(const DeviceSpan& src, CUstream stream, void* dst,
                                             bool dst_pinned) {
  if (src.bytes == 0) return Transfer::finished();
  DeviceGuard guard(src.device);
  const Driver& d = driver();
  auto transfer = std::make_shared<Transfer>();
  if (dst_pinned) {
    check(d.cuMemcpyDtoHAsync(dst, src.data, src.bytes, stream), "cuMemcpyDtoHAsync");
    Event done;
    done.record(stream);
    Completer::instance().submit({transfer, src.device, done.release(), nullptr});
    return transfer;
  }
  Block staging = PinnedPool::instance().try_acquire(src.bytes);
  if (staging.data == nullptr) {  // the limit forbids staging it whole: copy now
    copy_to_host(src, stream, dst, false);
    transfer->finish();
    return transfer;
  }
  std::vector<Block> held{staging};
  try {
    check(d.cuMemcpyDtoHAsync(staging.data, src.data, src.bytes, stream), "cuMemcpyDtoHAsync");
    Event done;
    done.record(stream);
    const size_t bytes = src.bytes;
    Completer::instance().submit({transfer, src.device, done.release(),
                                  [staging, dst, bytes](bool ok) {
                                    if (!ok) {  // the block's state is unknown
                                      PinnedPool::instance().retire(staging);
                                      return;
                                    }
                                    parallel_memcpy(dst, staging.data, bytes);
                                    PinnedPool::instance().release(staging);
                                  }});
  } catch (...) {
    release_after_failure(held, stream);
    throw;
  }
  return transfer;
}

void copy_many_to_host(const std::vector<DeviceSpan>& srcs, CUstream stream,
                       const std::vector<void*>& dsts) {
  if (srcs.empty()) return;
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
  const Driver& d = driver();
  Block packed = PinnedPool::instance().try_acquire(total);
  if (packed.data == nullptr) {  // no room to pack: one by one
    for (size_t i = 0; i < srcs.size(); ++i) copy_to_host(srcs[i], stream, dsts[i], false);
    return;
  }
  std::vector<Block> held{packed};
  auto* base = static_cast<char*>(packed.data);
  try {
    std::vector<size_t> todo;
    for (size_t i = 0; i < srcs.size(); ++i) {
      if (srcs[i].bytes > 0) todo.push_back(i);
    }
    if (d.cuMemcpyBatchAsync != nullptr) {
      std::vector<CUdeviceptr> batch_dsts, batch_srcs;
      std::vector<size_t> sizes;
      for (size_t i : todo) {
        batch_dsts.push_back(reinterpret_cast<CUdeviceptr>(base + offsets[i]));
        batch_srcs.push_back(srcs[i].data);
        sizes.push_back(srcs[i].bytes);
      }
      CUmemcpyAttributes attributes{CU_MEMCPY_SRC_ACCESS_ORDER_STREAM,
                                    {CU_MEM_LOCATION_TYPE_DEVICE, device},
                                    {CU_MEM_LOCATION_TYPE_HOST, 0},
                                    0};
      size_t first = 0;
      size_t fail_index = 0;
      check(d.cuMemcpyBatchAsync(batch_dsts.data(), batch_srcs.data(), sizes.data(), sizes.size(),
                                 &attributes, &first, 1, &fail_index, stream),
            "cuMemcpyBatchAsync");
    } else {
      for (size_t i : todo) {
        check(d.cuMemcpyDtoHAsync(base + offsets[i], srcs[i].data, srcs[i].bytes, stream),
              "cuMemcpyDtoHAsync");
      }
    }
    synchronize_stream_point(stream);
  } catch (...) {
    release_after_failure(held, stream);
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
  auto transfer = std::make_shared<Transfer>();
  auto finish_when_done = [&] {
    Event done;
    done.record(stream);
    Completer::instance().submit({transfer, dst.device, done.release(), nullptr});
  };
  size_t chunk = 0;
  std::vector<Block> slots = src_pinned ? std::vector<Block>{} : staging_slots(dst.bytes, &chunk);
  if (slots.empty()) {
    // Pinned source: one direct copy. Pageable source with no room to stage:
    // the driver stages it and returns once `src` may be reused.
    check(d.cuMemcpyHtoDAsync(dst.data, in, dst.bytes, stream), "cuMemcpyHtoDAsync");
    finish_when_done();
    return transfer;
  }
  const size_t chunks = (dst.bytes + chunk - 1) / chunk;
  std::vector<Event> events(slots.size());
  try {
    for (size_t i = 0; i < chunks; ++i) {
      const size_t k = i % slots.size();
      const size_t length = std::min(chunk, dst.bytes - i * chunk);
      if (i >= slots.size()) events[k].synchronize();  // the slot's previous copy is done
      parallel_memcpy(slots[k].data, in + i * chunk, length);
      check(d.cuMemcpyHtoDAsync(dst.data + i * chunk, slots[k].data, length, stream),
            "cuMemcpyHtoDAsync");
      events[k].record(stream);
    }
  } catch (...) {
    release_after_failure(slots, stream);
    throw;
  }
  // Each slot goes back with the event of its last copy; the pool reuses it
  // only once that copy has completed.
  for (size_t k = 0; k < slots.size(); ++k) {
    PinnedPool::instance().release(slots[k], events[k].release());
  }
  finish_when_done();
  return transfer;
}

void wait_for_all_transfers() { Completer::instance().wait_idle(); }

}  // namespace tensorbridge

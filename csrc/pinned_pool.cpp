#include "pinned_pool.h"

#include "per_process.h"

#include <unistd.h>

#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>

namespace tensorbridge {

BlockContext::BlockContext(int device) {
  if (device != kAnyDevice) {
    guard_.emplace(device);
    return;
  }
  cuda::CUcontext current = nullptr;
  cuda::check(cuda::driver().cuCtxGetCurrent(&current), "cuCtxGetCurrent");
  // A context this process already uses, so that none is created for it.
  if (current == nullptr) guard_.emplace(cuda::first_retained_device());
}

namespace {

constexpr size_t kPage = 4096;
constexpr size_t kLargePage = 2u << 20;

size_t rounded(size_t bytes) {
  const size_t unit = bytes >= (1u << 20) ? kLargePage : kPage;
  if (bytes > std::numeric_limits<size_t>::max() - unit) {
    throw std::length_error("pinned memory request of " + std::to_string(bytes) +
                            " bytes is larger than any machine's memory");
  }
  return std::max<size_t>((bytes + unit - 1) / unit * unit, unit);
}

// A quarter of physical memory: pinned pages cannot be swapped, and the OS
// and every other process need the rest.
size_t default_limit() {
  const long pages = sysconf(_SC_PHYS_PAGES);
  const long page_size = sysconf(_SC_PAGE_SIZE);
  if (pages <= 0 || page_size <= 0) return size_t{4} << 30;
  return static_cast<size_t>(pages) * static_cast<size_t>(page_size) / 4;
}

void free_blocks(const std::vector<Block>& blocks) {
  for (const Block& block : blocks) {
    try {
      BlockContext context(block.device);
      cuda::driver().cuMemFreeHost(block.data);  // on failure the memory is lost, never reused
    } catch (const cuda::DriverError&) {
    }
  }
}

}  // namespace

PinnedPool& PinnedPool::instance() { return per_process<PinnedPool>(); }

PinnedPool::PinnedPool() { stats_.limit_bytes = default_limit(); }

void PinnedPool::collect_completed_locked() {
  if (pending_.empty()) return;
  const cuda::Driver& d = cuda::driver();
  auto still_pending = std::remove_if(pending_.begin(), pending_.end(), [&](Pending& p) {
    cuda::CUresult state;
    try {
      cuda::DeviceGuard context(p.device);  // the event's own context
      state = d.cuEventQuery(p.event);
      if (state == cuda::CUDA_ERROR_NOT_READY) return false;
      d.cuEventDestroy(p.event);
    } catch (const cuda::DriverError&) {
      return false;  // cannot tell yet; asked again next time
    }
    // Completed, or failed: either way no copy will touch the block again.
    cached_.emplace(p.block.size, p.block);
    stats_.in_use_bytes -= p.block.size;
    stats_.cached_bytes += p.block.size;
    return true;
  });
  pending_.erase(still_pending, pending_.end());
}

std::vector<Block> PinnedPool::take_cached_locked() {
  std::vector<Block> taken;
  for (auto& [size, block] : cached_) {
    taken.push_back(block);
    stats_.reserved_bytes -= size;
    stats_.cached_bytes -= size;
  }
  cached_.clear();
  return taken;
}

void PinnedPool::unreserve(size_t size) {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.reserved_bytes -= size;
  stats_.in_use_bytes -= size;
}

Block PinnedPool::obtain(int device, size_t bytes, bool must_fit) {
  const size_t size = rounded(bytes);
  std::vector<Block> to_free;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    collect_completed_locked();
    auto it = cached_.lower_bound(size);
    if (it != cached_.end() && it->first <= 2 * size) {
      Block block = it->second;
      cached_.erase(it);
      stats_.cached_bytes -= block.size;
      stats_.in_use_bytes += block.size;
      ++stats_.hit_count;
      return block;
    }
    // Cached blocks count against the limit too: drop them only when that
    // makes room (else the cache would be lost for nothing).
    const bool fits_uncached =
        size <= stats_.limit_bytes && stats_.in_use_bytes <= stats_.limit_bytes - size;
    if (!fits_uncached) {
      if (!must_fit) return Block{nullptr, 0, device};
      throw std::length_error(
          "pinned memory limit reached: " + std::to_string(stats_.in_use_bytes) +
          " bytes in use, limit " + std::to_string(stats_.limit_bytes) + ", " +
          std::to_string(size) + " requested; raise it with set_pinned_memory_limit()");
    }
    if (stats_.reserved_bytes > stats_.limit_bytes - size) to_free = take_cached_locked();
    // Reserved before allocating, so that concurrent requests see the bytes.
    stats_.reserved_bytes += size;
    stats_.in_use_bytes += size;
    stats_.peak_bytes = std::max(stats_.peak_bytes, stats_.reserved_bytes);
  }
  free_blocks(to_free);  // outside the lock: freeing waits for the device
  void* data = nullptr;
  cuda::CUresult result;
  try {
    BlockContext context(device);
    const cuda::Driver& d = cuda::driver();
    result = d.cuMemHostAlloc(&data, size, cuda::kMemHostAllocPortable);
    if (result != cuda::CUDA_SUCCESS) {  // drop what we hold and retry once
      {
        std::lock_guard<std::mutex> lock(mutex_);
        to_free = take_cached_locked();
      }
      free_blocks(to_free);
      result = d.cuMemHostAlloc(&data, size, cuda::kMemHostAllocPortable);
    }
  } catch (...) {
    unreserve(size);
    throw;
  }
  if (result != cuda::CUDA_SUCCESS) {
    unreserve(size);
    if (!must_fit) return Block{nullptr, 0, device};
    cuda::check(result, "cuMemHostAlloc");
  }
  std::lock_guard<std::mutex> lock(mutex_);
  ++stats_.alloc_count;
  return Block{data, size, device};
}

Block PinnedPool::acquire(int device, size_t bytes) {
  return obtain(device, bytes, /*must_fit=*/true);
}

Block PinnedPool::try_acquire(int device, size_t bytes) {
  try {
    return obtain(device, bytes, /*must_fit=*/false);
  } catch (const std::length_error&) {  // a size no machine has
    return Block{nullptr, 0, device};
  }
}

void PinnedPool::release(Block block, cuda::CUevent after, int event_device) {
  if (block.data == nullptr) return;
  std::lock_guard<std::mutex> lock(mutex_);
  if (after != nullptr) {
    pending_.push_back(Pending{block, after, event_device});
    return;
  }
  cached_.emplace(block.size, block);
  stats_.in_use_bytes -= block.size;
  stats_.cached_bytes += block.size;
}

void PinnedPool::retire(Block block) {
  if (block.data == nullptr) return;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.in_use_bytes -= block.size;
    stats_.reserved_bytes -= block.size;
  }
  free_blocks({block});
}

PinnedStats PinnedPool::stats() {
  std::lock_guard<std::mutex> lock(mutex_);
  collect_completed_locked();
  return stats_;
}

void PinnedPool::empty_cache() {
  std::vector<Block> to_free;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (stats_.reserved_bytes == 0) return;  // nothing to do, and no driver needed
    collect_completed_locked();
    to_free = take_cached_locked();
  }
  free_blocks(to_free);
}

void PinnedPool::set_limit(size_t bytes) {
  std::vector<Block> to_free;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stats_.limit_bytes = bytes;
    if (stats_.cached_bytes > 0 && stats_.reserved_bytes > bytes) to_free = take_cached_locked();
  }
  free_blocks(to_free);
}

}  // namespace tensorbridge

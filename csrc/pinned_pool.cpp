#include "pinned_pool.h"

#include "per_process.h"

#include <unistd.h>

#include <algorithm>
#include <stdexcept>
#include <string>

namespace tensorbridge {

namespace {

constexpr size_t kPage = 4096;
constexpr size_t kLargePage = 2u << 20;

size_t rounded(size_t bytes) {
  const size_t unit = bytes >= (1u << 20) ? kLargePage : kPage;
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

}  // namespace

PinnedPool& PinnedPool::instance() { return per_process<PinnedPool>(); }

PinnedPool::PinnedPool() { stats_.limit_bytes = default_limit(); }

void PinnedPool::collect_completed_locked() {
  if (pending_.empty()) return;
  const cuda::Driver& d = cuda::driver();
  auto still_pending = std::remove_if(pending_.begin(), pending_.end(), [&](Pending& p) {
    const cuda::CUresult state = d.cuEventQuery(p.event);
    if (state == cuda::CUDA_ERROR_NOT_READY) return false;
    // Completed, or failed: either way no copy will touch the block again.
    d.cuEventDestroy(p.event);
    cached_.emplace(p.block.size, p.block.data);
    stats_.in_use_bytes -= p.block.size;
    stats_.cached_bytes += p.block.size;
    return true;
  });
  pending_.erase(still_pending, pending_.end());
}

void PinnedPool::free_cached_locked() {
  const cuda::Driver& d = cuda::driver();
  for (auto& [size, data] : cached_) {
    d.cuMemFreeHost(data);
    stats_.reserved_bytes -= size;
    stats_.cached_bytes -= size;
  }
  cached_.clear();
}

Block PinnedPool::acquire_locked(size_t bytes, bool must_fit) {
  // Pinned blocks are portable: any context serves to allocate, query and free.
  cuda::DeviceGuard guard(0);
  collect_completed_locked();
  const size_t size = rounded(bytes);
  auto it = cached_.lower_bound(size);
  if (it != cached_.end() && it->first <= 2 * size) {
    Block block{it->second, it->first};
    cached_.erase(it);
    stats_.cached_bytes -= block.size;
    stats_.in_use_bytes += block.size;
    ++stats_.hit_count;
    return block;
  }
  // Make room: cached blocks count against the limit too.
  if (stats_.reserved_bytes + size > stats_.limit_bytes) free_cached_locked();
  if (stats_.reserved_bytes + size > stats_.limit_bytes) {
    if (!must_fit) return Block{nullptr, 0};
    throw std::length_error(
        "pinned memory limit reached: " + std::to_string(stats_.in_use_bytes) +
        " bytes in use, limit " + std::to_string(stats_.limit_bytes) + ", " +
        std::to_string(size) + " requested; raise it with set_pinned_memory_limit()");
  }
  const cuda::Driver& d = cuda::driver();
  void* data = nullptr;
  cuda::CUresult result = d.cuMemHostAlloc(&data, size, cuda::kMemHostAllocPortable);
  if (result != cuda::CUDA_SUCCESS) {
    free_cached_locked();  // drop what we hold and retry once
    result = d.cuMemHostAlloc(&data, size, cuda::kMemHostAllocPortable);
  }
  if (result != cuda::CUDA_SUCCESS) {
    if (!must_fit) return Block{nullptr, 0};
    cuda::check(result, "cuMemHostAlloc");
  }
  ++stats_.alloc_count;
  stats_.reserved_bytes += size;
  stats_.in_use_bytes += size;
  stats_.peak_bytes = std::max(stats_.peak_bytes, stats_.reserved_bytes);
  return Block{data, size};
}

Block PinnedPool::acquire(size_t bytes) {
  std::lock_guard<std::mutex> lock(mutex_);
  return acquire_locked(bytes, /*must_fit=*/true);
}

Block PinnedPool::try_acquire(size_t bytes) {
  std::lock_guard<std::mutex> lock(mutex_);
  return acquire_locked(bytes, /*must_fit=*/false);
}

void PinnedPool::release(Block block, cuda::CUevent after) {
  if (block.data == nullptr) return;
  std::lock_guard<std::mutex> lock(mutex_);
  if (after != nullptr) {
    pending_.push_back(Pending{block, after});
    return;
  }
  cached_.emplace(block.size, block.data);
  stats_.in_use_bytes -= block.size;
  stats_.cached_bytes += block.size;
}

void PinnedPool::retire(Block block) {
  if (block.data == nullptr) return;
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.in_use_bytes -= block.size;
  stats_.reserved_bytes -= block.size;
  try {
    cuda::DeviceGuard guard(0);
    cuda::driver().cuMemFreeHost(block.data);  // on failure the memory is lost, never reused
  } catch (const cuda::DriverError&) {
  }
}

PinnedStats PinnedPool::stats() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!pending_.empty()) {
    cuda::DeviceGuard guard(0);
    collect_completed_locked();
  }
  return stats_;
}

void PinnedPool::empty_cache() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (stats_.reserved_bytes == 0) return;  // nothing to do, and no driver needed
  cuda::DeviceGuard guard(0);
  collect_completed_locked();
  free_cached_locked();
}

void PinnedPool::set_limit(size_t bytes) {
  std::lock_guard<std::mutex> lock(mutex_);
  stats_.limit_bytes = bytes;
  if (stats_.cached_bytes > 0 && stats_.reserved_bytes > bytes) {
    cuda::DeviceGuard guard(0);
    free_cached_locked();
  }
}

}  // namespace tensorbridge

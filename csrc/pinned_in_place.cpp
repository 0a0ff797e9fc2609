#include "pinned_in_place.h"

#include <cstdio>
#include <exception>
#include <iterator>
#include <stdexcept>
#include <string>

#include "cuda_driver.h"
#include "per_process.h"
#include "pinned_pool.h"

namespace tensorbridge {

namespace {

// Ids are unique in a process and across its forks (the counter is not reset
// in a child), so that a parent's handle never names a child's registration.
std::atomic<uint64_t> g_next_id{1};

std::string range_text(uintptr_t start, size_t bytes) {
  char address[32];
  std::snprintf(address, sizeof(address), "0x%zx", static_cast<size_t>(start));
  return std::string(address) + " (" + std::to_string(bytes) + " bytes)";
}

// The driver, with both entry points; DriverError naming what it lacks.
const cuda::Driver& registering_driver() {
  const cuda::Driver& d = cuda::driver();
  if (d.cuMemHostRegister != nullptr && d.cuMemHostUnregister != nullptr) return d;
  std::string missing = d.cuMemHostRegister == nullptr ? "cuMemHostRegister" : "";
  if (d.cuMemHostUnregister == nullptr) {
    missing += std::string(missing.empty() ? "" : " and ") + "cuMemHostUnregister";
  }
  const cuda::Status found = cuda::status();
  throw cuda::DriverError("the CUDA driver loaded from " + found.library + " lacks " + missing +
                              ", which pinning in place needs; update the NVIDIA driver, or "
                              "copy into tensorbridge.empty_pinned memory instead",
                          cuda::CUDA_ERROR_NOT_SUPPORTED);
}

}  // namespace

// Held by each copy that uses a registration; its end may unregister it.
struct PinnedInPlace::Lease {
  uintptr_t start;
  uint64_t id;
  ~Lease() { PinnedInPlace::instance().release(start, id); }
};

PinnedInPlace& PinnedInPlace::instance() { return per_process<PinnedInPlace>(); }

uint64_t PinnedInPlace::pin(void* data, size_t bytes) {
  const auto start = reinterpret_cast<uintptr_t>(data);
  if (data == nullptr || bytes == 0) {
    throw std::invalid_argument("an empty range cannot be pinned (cuMemHostRegister refuses it)");
  }
  if (bytes > UINTPTR_MAX - start) {
    throw std::invalid_argument("the range " + range_text(start, bytes) +
                                " runs past the end of the address space");
  }
  const cuda::Driver& d = registering_driver();
  const uint64_t id = g_next_id.fetch_add(1);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto overlapping = [&](auto it) {
      const Entry& e = it->second;
      const char* state = e.state == State::kOpen ? ""
                          : e.state == State::kRegistering
                              ? ", being pinned by another thread"
                              : ", closed but still in use by copies in flight (it is "
                                "unpinned when they complete)";
      return std::invalid_argument("the memory " + range_text(start, bytes) +
                                   " overlaps memory already pinned in place, " +
                                   range_text(it->first, e.bytes) + state +
                                   "; close that pin first, or pin one array that holds both");
    };
    auto next = entries_.upper_bound(start);
    if (next != entries_.begin()) {
      auto before = std::prev(next);
      if (before->first + before->second.bytes > start) throw overlapping(before);
    }
    if (next != entries_.end() && next->first < start + bytes) throw overlapping(next);
    // Reserved before the driver is asked, so that concurrent pins see it.
    entries_.emplace(start, Entry{id, bytes, State::kRegistering, 0});
    ++count_;
  }
  cuda::CUresult result = cuda::CUDA_SUCCESS;
  std::exception_ptr failure;
  try {
    BlockContext context(kAnyDevice);
    result = d.cuMemHostRegister(data, bytes, cuda::kMemHostRegisterPortable);
  } catch (...) {
    failure = std::current_exception();
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!failure && result == cuda::CUDA_SUCCESS) {
      entries_.at(start).state = State::kOpen;
      registered_bytes_ += bytes;
      return id;
    }
    entries_.erase(start);  // refused: the range is free again
    --count_;
  }
  if (failure) std::rethrow_exception(failure);
  cuda::check(result, "cuMemHostRegister");
  return 0;  // not reached: check() threw
}

void PinnedInPlace::unpin(const void* data, uint64_t id) {
  const auto start = reinterpret_cast<uintptr_t>(data);
  size_t bytes = 0;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = entries_.find(start);
    if (it == entries_.end() || it->second.id != id || it->second.state != State::kOpen) return;
    it->second.state = State::kClosed;
    if (it->second.leases > 0) return;  // the last copy's end unregisters it
    it->second.state = State::kUnregistering;
    bytes = it->second.bytes;
  }
  unregister(start, bytes);
}

std::shared_ptr<void> PinnedInPlace::lease(const void* data, size_t bytes) {
  if (count_.load(std::memory_order_relaxed) == 0) return nullptr;
  const auto start = reinterpret_cast<uintptr_t>(data);
  std::lock_guard<std::mutex> lock(mutex_);
  auto next = entries_.upper_bound(start);
  if (next == entries_.begin()) return nullptr;
  auto it = std::prev(next);
  Entry& e = it->second;
  const size_t offset = start - it->first;
  if (e.state != State::kOpen || offset >= e.bytes || bytes > e.bytes - offset) return nullptr;
  ++e.leases;
  return std::shared_ptr<Lease>(new Lease{it->first, e.id});  // no temporary Lease to destroy
}

void PinnedInPlace::release(uintptr_t start, uint64_t id) noexcept {
  size_t bytes = 0;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = entries_.find(start);
    if (it == entries_.end() || it->second.id != id) return;  // a parent's, after fork
    if (--it->second.leases > 0 || it->second.state != State::kClosed) return;
    it->second.state = State::kUnregistering;
    bytes = it->second.bytes;
  }
  try {
    unregister(start, bytes);
  } catch (const std::exception&) {
    // The copy is done and its handle closed: nobody is left to tell. The
    // range is forgotten; the driver may keep it locked until the process ends.
  }
}

void PinnedInPlace::unregister(uintptr_t start, size_t bytes) {
  cuda::CUresult result = cuda::CUDA_SUCCESS;
  std::exception_ptr failure;
  try {
    BlockContext context(kAnyDevice);
    result = cuda::driver().cuMemHostUnregister(reinterpret_cast<void*>(start));
  } catch (...) {
    failure = std::current_exception();
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    entries_.erase(start);
    --count_;
    registered_bytes_ -= bytes;
  }
  if (failure) std::rethrow_exception(failure);
  cuda::check(result, "cuMemHostUnregister");
}

size_t PinnedInPlace::registered_bytes() {
  std::lock_guard<std::mutex> lock(mutex_);
  return registered_bytes_;
}

}  // namespace tensorbridge

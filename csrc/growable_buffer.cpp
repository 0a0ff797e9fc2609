#include "growable_buffer.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>

#include "per_process.h"

namespace tensorbridge {
namespace {

constexpr size_t kPage = 4096;
constexpr size_t kHugePage = 2u << 20;
// Above this, the heap is left alone: a growing block there interleaves with
// the batches' own allocations (torch's tensors, which glibc also takes from
// the heap once it has freed a large one) and leaves holes glibc keeps; with 8
// MiB, a generator-fed collect of 64 x 4 MiB peaked 3-10% above the same
// batches into a preallocated out=, and at the same peak with 1 MiB.
constexpr size_t kHeapLimit = 1u << 20;
// The largest size asked for: every rounding and the alignment slack below
// stay far from overflowing, and no address space holds more.
constexpr size_t kMaxBytes = size_t{1} << 62;

void check_size(size_t bytes) {
  if (bytes > kMaxBytes) {
    throw std::overflow_error("collect: cannot reserve " + std::to_string(bytes) +
                              " bytes, more than an address space holds (at most " +
                              std::to_string(kMaxBytes) + "); collect fewer rows at once");
  }
}

size_t page_rounded(size_t bytes) { return std::max(kPage, (bytes + kPage - 1) / kPage * kPage); }

// Small buffers by the page, large ones by the huge page.
size_t huge_page_rounded(size_t bytes) {
  if (bytes < kHugePage) return page_rounded(bytes);
  return (bytes + kHugePage - 1) / kHugePage * kHugePage;
}

void advise_huge_pages(char* data, size_t bytes) {
  if (bytes >= kHugePage) madvise(data, bytes, MADV_HUGEPAGE);  // a hint: failure is harmless
}

// The mapping of the last large buffer freed (up to kCacheLimit), kept for the
// next one, as malloc keeps freed memory for reuse: its pages are already
// faulted in, and page faults are most of what writing a fresh result costs.
// (MADV_FREE, which would let the kernel reclaim them, cost more than the
// faults it saves: measured 1.5 ms per 30 MiB here.)
class MappingCache {
 public:
  static constexpr size_t kCacheLimit = 64u << 20;

  static MappingCache& instance() { return per_process<MappingCache>(); }

  // The cached mapping, or {nullptr, 0}.
  std::pair<char*, size_t> take() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {std::exchange(data_, nullptr), std::exchange(capacity_, 0)};
  }

  // Keeps `data` for the next buffer (replacing the one kept so far), or
  // unmaps it when it is larger than the cache may hold.
  void put(char* data, size_t capacity) {
    if (capacity > kCacheLimit) {
      munmap(data, capacity);
      return;
    }
    char* old_data;
    size_t old_capacity;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      old_data = std::exchange(data_, data);
      old_capacity = std::exchange(capacity_, capacity);
    }
    if (old_data != nullptr) munmap(old_data, old_capacity);
  }

 private:
  std::mutex mutex_;
  char* data_ = nullptr;
  size_t capacity_ = 0;
};

// A fresh address range of `bytes`, 2 MiB aligned so that the kernel can back
// it with huge pages, and inaccessible until something is mapped over it.
char* reserve_aligned(size_t bytes) {
  void* raw = mmap(nullptr, bytes + kHugePage, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (raw == MAP_FAILED) throw std::bad_alloc();
  auto* start = static_cast<char*>(raw);
  char* aligned = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(start) + kHugePage - 1) /
                                          kHugePage * kHugePage);
  if (aligned > start) munmap(start, static_cast<size_t>(aligned - start));
  const size_t tail = static_cast<size_t>(start + bytes + kHugePage - (aligned + bytes));
  if (tail > 0) munmap(aligned + bytes, tail);
  return aligned;
}

// Moves mapping `data` (its written pages: page tables only, no bytes) onto a
// range of at least `wanted` bytes; sets `*capacity` to the new size. On
// failure throws std::bad_alloc and `data` is left as it was.
char* grow_mapped(char* data, size_t old_capacity, size_t wanted, size_t* capacity) {
  const size_t mapped_size = huge_page_rounded(wanted);
  char* target = reserve_aligned(mapped_size);
  void* grown = mremap(data, old_capacity, mapped_size, MREMAP_MAYMOVE | MREMAP_FIXED, target);
  if (grown == MAP_FAILED) {
    munmap(target, mapped_size);
    throw std::bad_alloc();
  }
  advise_huge_pages(static_cast<char*>(grown), mapped_size);
  *capacity = mapped_size;
  return static_cast<char*>(grown);
}

}  // namespace

GrowableBuffer::~GrowableBuffer() {
  if (data_ == nullptr) return;
  if (mapped_) {
    MappingCache::instance().put(data_, capacity_);
  } else {
    std::free(data_);
  }
}

void GrowableBuffer::reserve(size_t bytes) {
  if (bytes <= capacity_) return;
  if (live_views > 0) throw std::logic_error("GrowableBuffer: cannot grow while views are alive");
  check_size(bytes);
  const size_t wanted = std::min(kMaxBytes, std::max(bytes, capacity_ + capacity_ / 2));
  if (wanted <= kHeapLimit) {
    void* grown = std::realloc(data_, wanted);
    if (grown == nullptr) throw std::bad_alloc();
    data_ = static_cast<char*>(grown);
    capacity_ = wanted;
    return;
  }
  if (!mapped_) adopt_mapping(wanted);
  if (capacity_ < wanted) data_ = grow_mapped(data_, capacity_, wanted, &capacity_);
}

// Moves from the heap block to a mapping of at least `wanted` bytes: the
// cached one (grown if need be), or a fresh one.
void GrowableBuffer::adopt_mapping(size_t wanted) {
  auto [data, capacity] = MappingCache::instance().take();
  if (data == nullptr) {
    capacity = huge_page_rounded(wanted);
    data = reserve_aligned(capacity);
    if (mprotect(data, capacity, PROT_READ | PROT_WRITE) != 0) {
      munmap(data, capacity);
      throw std::bad_alloc();
    }
    advise_huge_pages(data, capacity);
  } else if (capacity < wanted) {
    try {
      data = grow_mapped(data, capacity, wanted, &capacity);
    } catch (...) {
      munmap(data, capacity);
      throw;
    }
  }
  if (data_ != nullptr) {
    // At most kHeapLimit, once: the bytes written before the result outgrew the heap.
    std::memcpy(data, data_, capacity_);
    std::free(data_);
  }
  data_ = data;
  capacity_ = capacity;
  mapped_ = true;
}

void GrowableBuffer::shrink_to(size_t bytes) {
  if (data_ == nullptr || !mapped_ || bytes >= capacity_) return;
  const size_t wanted = page_rounded(bytes);  // below capacity_: no overflow
  if (wanted >= capacity_) return;
  if (live_views > 0) throw std::logic_error("GrowableBuffer: cannot shrink while views are alive");
  if (mremap(data_, capacity_, wanted, 0) != MAP_FAILED) capacity_ = wanted;
}

BufferView::BufferView(std::shared_ptr<GrowableBuffer> buffer, size_t offset, size_t bytes)
    : owner(std::move(buffer)), data(nullptr), size(bytes) {
  const size_t capacity = owner->capacity();
  if (offset > capacity || bytes > capacity - offset) {  // offset + bytes could wrap
    throw std::out_of_range("BufferView: bytes [" + std::to_string(offset) + ", " +
                            std::to_string(offset) + " + " + std::to_string(bytes) +
                            ") end past the capacity of " + std::to_string(capacity) +
                            "; reserve() them first");
  }
  data = owner->data() + offset;
  ++owner->live_views;
}

BufferView::~BufferView() { --owner->live_views; }

}  // namespace tensorbridge

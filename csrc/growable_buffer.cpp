#include "growable_buffer.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <cstdint>
#include <new>
#include <stdexcept>

namespace tensorbridge {
namespace {

constexpr size_t kPage = 4096;
constexpr size_t kHugePage = 2u << 20;
constexpr size_t kHeapLimit = 8u << 20;

size_t page_rounded(size_t bytes) { return std::max(kPage, (bytes + kPage - 1) / kPage * kPage); }

// Small buffers by the page, large ones by the huge page.
size_t huge_page_rounded(size_t bytes) {
  if (bytes < kHugePage) return page_rounded(bytes);
  return (bytes + kHugePage - 1) / kHugePage * kHugePage;
}

void advise_huge_pages(char* data, size_t bytes) {
  if (bytes >= kHugePage) madvise(data, bytes, MADV_HUGEPAGE);  // a hint: failure is harmless
}

}  // namespace

GrowableBuffer::~GrowableBuffer() {
  if (data_ == nullptr) return;
  if (mapped_) {
    munmap(data_, capacity_);
  } else {
    std::free(data_);
  }
}

// A fresh address range of `bytes`, 2 MiB aligned so that the kernel can back
// it with huge pages, and inaccessible until something is mapped over it.
char* reserve_aligned(size_t bytes) {
  void* raw = mmap(nullptr, bytes + kHugePage, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (raw == MAP_FAILED) throw std::bad_alloc();
  auto* start = static_cast<char*>(raw);
  char* aligned = reinterpret_cast<char*>(
      (reinterpret_cast<uintptr_t>(start) + kHugePage - 1) / kHugePage * kHugePage);
  if (aligned > start) munmap(start, static_cast<size_t>(aligned - start));
  const size_t tail = static_cast<size_t>(start + bytes + kHugePage - (aligned + bytes));
  if (tail > 0) munmap(aligned + bytes, tail);
  return aligned;
}

void GrowableBuffer::reserve(size_t bytes) {
  if (bytes <= capacity_) return;
  if (live_views > 0) throw std::logic_error("GrowableBuffer: cannot grow while views are alive");
  const size_t wanted = std::max(bytes, capacity_ + capacity_ / 2);
  if (wanted <= kHeapLimit) {
    void* grown = std::realloc(data_, wanted);
    if (grown == nullptr) throw std::bad_alloc();
    data_ = static_cast<char*>(grown);
    capacity_ = wanted;
    return;
  }
  const size_t mapped_size = huge_page_rounded(wanted);
  char* target = reserve_aligned(mapped_size);
  void* grown = MAP_FAILED;
  if (mapped_) {
    // Move the written pages (page tables only, no bytes) onto the new range.
    grown = mremap(data_, capacity_, mapped_size, MREMAP_MAYMOVE | MREMAP_FIXED, target);
  } else if (mprotect(target, mapped_size, PROT_READ | PROT_WRITE) == 0) {
    grown = target;
    advise_huge_pages(target, mapped_size);
    if (data_ != nullptr) std::memcpy(target, data_, capacity_);  // at most kHeapLimit, once
  }
  if (grown == MAP_FAILED) {
    munmap(target, mapped_size);
    throw std::bad_alloc();
  }
  if (!mapped_) std::free(data_);
  data_ = static_cast<char*>(grown);
  capacity_ = mapped_size;
  mapped_ = true;
  advise_huge_pages(data_, capacity_);
}

void GrowableBuffer::shrink_to(size_t bytes) {
  const size_t wanted = page_rounded(bytes);
  if (data_ == nullptr || !mapped_ || wanted >= capacity_) return;
  if (live_views > 0) throw std::logic_error("GrowableBuffer: cannot shrink while views are alive");
  if (mremap(data_, capacity_, wanted, 0) != MAP_FAILED) capacity_ = wanted;
}

BufferView::BufferView(std::shared_ptr<GrowableBuffer> buffer, size_t offset, size_t bytes)
    : owner(std::move(buffer)), data(nullptr), size(bytes) {
  if (offset + bytes > owner->capacity()) throw std::out_of_range("BufferView: past the capacity");
  data = owner->data() + offset;
  ++owner->live_views;
}

BufferView::~BufferView() { --owner->live_views; }

}  // namespace tensorbridge

#include "growable_buffer.h"

#include <sys/mman.h>

#include <algorithm>
#include <new>
#include <stdexcept>

namespace tensorbridge {
namespace {

constexpr size_t kPage = 4096;
constexpr size_t kHugePage = 2u << 20;

size_t page_rounded(size_t bytes) { return std::max(kPage, (bytes + kPage - 1) / kPage * kPage); }

void advise_huge_pages(char* data, size_t bytes) {
  if (bytes >= kHugePage) madvise(data, bytes, MADV_HUGEPAGE);  // a hint: failure is harmless
}

}  // namespace

GrowableBuffer::~GrowableBuffer() {
  if (data_ != nullptr) munmap(data_, capacity_);
}

void GrowableBuffer::reserve(size_t bytes) {
  if (bytes <= capacity_) return;
  if (live_views > 0) throw std::logic_error("GrowableBuffer: cannot grow while views are alive");
  const size_t wanted = page_rounded(std::max(bytes, capacity_ + capacity_ / 2));
  void* grown = data_ == nullptr
                    ? mmap(nullptr, wanted, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
                    : mremap(data_, capacity_, wanted, MREMAP_MAYMOVE);
  if (grown == MAP_FAILED) throw std::bad_alloc();
  data_ = static_cast<char*>(grown);
  capacity_ = wanted;
  advise_huge_pages(data_, capacity_);
}

void GrowableBuffer::shrink_to(size_t bytes) {
  const size_t wanted = page_rounded(bytes);
  if (data_ == nullptr || wanted >= capacity_) return;
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

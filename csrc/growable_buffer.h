// GrowableBuffer: host memory that grows in place, for `collect`.
//
// Up to kHeapLimit (1 MiB) the memory comes from malloc/realloc: small results reuse
// memory the allocator already has, with no page faults. Beyond, it is an
// anonymous mapping grown with mremap, which moves page tables, never bytes:
// growing costs no copy and no second buffer, so peak memory stays at what was
// written, and untouched capacity is never backed by pages. Those mappings are
// 2 MiB aligned and ask for transparent huge pages: a large result is written
// once, and its page faults are most of the cost. For the same reason the
// mapping of the last buffer freed (up to 64 MiB) is kept for the next one,
// as malloc keeps freed memory for reuse.
//
// Moving the mapping would leave any exported view dangling, so growth is
// refused while a BufferView is alive (the Python layer takes views only for
// the duration of one write, and the final one for the result).
#pragma once

#include <cstddef>
#include <memory>

namespace tensorbridge {

class GrowableBuffer {
 public:
  GrowableBuffer() = default;
  ~GrowableBuffer();
  GrowableBuffer(const GrowableBuffer&) = delete;
  GrowableBuffer& operator=(const GrowableBuffer&) = delete;

  // Ensures at least `bytes` of capacity (growing by at least half). Throws
  // std::logic_error while views are alive, std::overflow_error for more
  // than 2^62 bytes, std::bad_alloc when the OS refuses.
  void reserve(size_t bytes);
  // Gives back capacity beyond `bytes` (no move).
  void shrink_to(size_t bytes);
  char* data() const { return data_; }
  size_t capacity() const { return capacity_; }

  int live_views = 0;  // maintained by BufferView; guarded by the GIL

 private:
  void adopt_mapping(size_t wanted);

  char* data_ = nullptr;
  size_t capacity_ = 0;
  bool mapped_ = false;  // data_ is a mapping (else a malloc block)
};

// A window [offset, offset + size) of a GrowableBuffer that keeps it alive.
struct BufferView {
  BufferView(std::shared_ptr<GrowableBuffer> owner, size_t offset, size_t size);
  ~BufferView();
  BufferView(const BufferView&) = delete;
  BufferView& operator=(const BufferView&) = delete;

  std::shared_ptr<GrowableBuffer> owner;
  char* data;
  size_t size;
};

}  // namespace tensorbridge

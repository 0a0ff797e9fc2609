// PinnedPool: a cache of page-locked host memory blocks.
//
// Design note. Allocating pinned memory costs 0.3 to 1 s per GB, so blocks are
// cached and reused. A block handed back may still be the source or target of
// an asynchronous copy: it is released together with the event recorded after
// that copy, and reused only once the event has completed (queried on each
// acquire, never waited for). Requests are rounded to the page (small) or to
// 2 MiB (large), not to powers of two, and served best-fit from the cache but
// never from a block more than twice the size asked for.
//
// Blocks are allocated through the primary context of the device they are for
// (portable, so any context may use them later): a `cuda:1` user never creates
// a context on GPU 0. The driver's allocation and free calls run outside the
// pool's lock (they take 0.3-1 s per GB): the bytes are reserved under the
// lock first, so concurrent requests still respect the limit.
//
// A limit bounds the pinned bytes reserved (in use + cached). `acquire`
// (empty_pinned, pinned out=) raises when the limit or the driver refuses;
// conversions ask with `try_acquire` and stage in smaller chunks when
// refused. On an allocation failure the cache is freed and the allocation
// retried once.
//
// After fork, the child's pool is empty: the parent's blocks are forgotten,
// never used or freed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <vector>

#include "cuda_driver.h"

namespace tensorbridge {

// For blocks not tied to a device (empty_pinned): the context current on the
// calling thread, else one this process already retained (device 0's when none).
constexpr int kAnyDevice = -1;

// The context pinned memory of `device` is allocated (or registered), queried
// and freed in: that device's primary context; for kAnyDevice, the current
// one, else one this process already retained (so that none is created).
class BlockContext {
 public:
  explicit BlockContext(int device);

 private:
  std::optional<cuda::DeviceGuard> guard_;
};

struct Block {
  void* data;
  size_t size;  // as allocated: >= the size asked for
  int device;   // whose context allocated it (kAnyDevice: see above)
};

struct PinnedStats {
  size_t reserved_bytes, in_use_bytes, cached_bytes, peak_bytes, limit_bytes;
  uint64_t alloc_count, hit_count;
};

class PinnedPool {
 public:
  static PinnedPool& instance();  // one per process; a forked child gets an empty one
  PinnedPool();

  // A block of at least `bytes` for copies on `device`. Throws
  // std::length_error when the limit forbids it (or the size is absurd) and
  // cuda::DriverError when the driver refuses.
  Block acquire(int device, size_t bytes);
  // The same, but returns a block with data == nullptr instead of throwing
  // when the limit (or the driver, after a retry) refuses.
  Block try_acquire(int device, size_t bytes);
  // Hands a block back; reusable once `after` (if any), an event of
  // `event_device`'s context, has completed. The pool takes ownership of the
  // event and destroys it (in that context).
  void release(Block block, cuda::CUevent after = nullptr, int event_device = 0);

  // Frees a block whose copies are in an unknown state (after a driver
  // failure) instead of caching it: freeing pinned memory waits for the
  // device, so it can never be handed out while a copy still touches it.
  void retire(Block block);

  PinnedStats stats();
  // Frees every cached block whose copies have completed.
  void empty_cache();
  void set_limit(size_t bytes);

 private:
  struct Pending {
    Block block;
    cuda::CUevent event;
    int device;  // the event's
  };
  Block obtain(int device, size_t bytes, bool must_fit);
  void collect_completed_locked();
  std::vector<Block> take_cached_locked();
  void unreserve(size_t size);

  // All fields guarded by mutex_. Driver calls that can take long
  // (cuMemHostAlloc, cuMemFreeHost) are made without holding it.
  std::mutex mutex_;
  std::multimap<size_t, Block> cached_;  // size -> block, free for reuse
  std::vector<Pending> pending_;         // released, waiting for their event
  PinnedStats stats_{};
};

}  // namespace tensorbridge

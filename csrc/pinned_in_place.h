// PinnedInPlace: users' own host arrays, page-locked where they are (tb.pin).
//
// Design note. `pin` registers an array's bytes with cuMemHostRegister
// (portable: pinned for every context) and records the range here; ranges
// never overlap (an overlap is refused before the driver is asked). Whether a
// copy may go straight into (or out of) host memory is decided by the engine
// when it enqueues the copy, by address: a copy whose host bytes lie inside
// an open registration takes a lease of it, and holds the lease until the
// copy has completed (a synchronous copy until it returns; an asynchronous or
// interrupted one until its completion thread has seen the copy's event,
// right before the Transfer reports done, so before Python lets go of the
// array). Any view of a pinned array's bytes counts, whoever made it.
//
// Closing a registration (PinnedRange::close: close(), the end of a `with`,
// or the handle collected) stops new leases, so later copies stage as for
// any pageable array, and unregisters it once no lease is left: at once, or
// from the completion of the last copy in flight. So cuMemHostUnregister
// never runs while a copy into the memory is in flight, and the range counts
// in `registered_bytes` until it has run. The driver calls run outside the
// lock (page-locking costs time in proportion to the size); a range being
// registered or unregistered still counts as taken.
//
// After fork the child's registry is empty (per_process): the parent's
// registrations are its own, and the child's copies of its handles find
// nothing to close (ids are never reused across a fork), so a child never
// unregisters its parent's memory.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>

namespace tensorbridge {

class PinnedInPlace {
 public:
  static PinnedInPlace& instance();  // one per process; a forked child gets an empty one

  // Page-locks [data, data + bytes) and returns the registration's id (never 0).
  // Throws std::invalid_argument for an empty range or one that overlaps a
  // registered range (naming both), cuda::DriverError when the driver is
  // unusable, lacks the entry points, or refuses.
  uint64_t pin(void* data, size_t bytes);

  // Closes registration `id` of `data`: unregistered now when no copy holds
  // it (a driver failure is thrown then; the registration is forgotten
  // either way), else once the last copy has completed. Unknown ids (closed
  // already, or a parent's in a forked child) are ignored.
  void unpin(const void* data, uint64_t id);

  // A lease of the open registration that holds all of [data, data + bytes),
  // which keeps it registered while held; nullptr when there is none.
  std::shared_ptr<void> lease(const void* data, size_t bytes);

  // The bytes registered with the driver now (closed ones still in use included).
  size_t registered_bytes();

 private:
  enum class State { kRegistering, kOpen, kClosed, kUnregistering };
  struct Entry {
    uint64_t id;
    size_t bytes;
    State state;
    size_t leases;  // copies in flight that use the range
  };
  struct Lease;
  void release(uintptr_t start, uint64_t id) noexcept;
  void unregister(uintptr_t start, size_t bytes);

  // Guarded by mutex_. Driver calls are made without holding it.
  std::mutex mutex_;
  std::map<uintptr_t, Entry> entries_;  // by start address; ranges never overlap
  size_t registered_bytes_ = 0;
  std::atomic<size_t> count_{0};  // entries_.size(), read without the lock: most copies
                                  // happen with nothing pinned in place
};

}  // namespace tensorbridge

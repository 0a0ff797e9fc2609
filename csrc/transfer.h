// Transfer: copies between device memory and host memory, and their completion.
//
// Design note. Every copy is enqueued on the caller's stream (the producer's
// current stream, or `stream=`): it is then ordered after the work already
// queued there, and later work on that stream (the kernels that could
// overwrite the source) is ordered after it, with no extra events.
//
// Device -> ordinary host memory streams through pinned chunks from the
// PinnedPool: while chunk k is in flight, host threads drain chunk k-1 into
// the destination. Device -> pinned memory is one direct copy: memory of the
// pool (the caller says so: `dst_pinned`, `src_pinned`) or an array pinned in
// place, which the engine itself recognises by address and keeps registered
// until the copy has completed (pinned_in_place.h). Many small
// tensors are packed into one pinned block with one submission
// (cuMemcpyBatchAsync where the driver has it) and one event.
//
// Asynchronous copies are enqueued in full before the call returns (staged in
// one pinned block, or straight into a pinned destination) so that nothing
// queued on the stream afterwards can overwrite the source first; the
// completion thread waits for the event, drains staging into the destination
// and marks the Transfer finished. When the pinned limit forbids staging a
// whole copy at once, the copy runs synchronously and the Transfer is
// returned finished.
//
// Events are blocking-sync: a thread waiting for a copy sleeps instead of
// spinning a core. A synchronous copy may be given an InterruptCheck (Ctrl-C
// on Python's main thread): its waits are then handed to the completion
// threads and checked in short slices, and when the check says stop, the call
// throws CopyInterrupted while the copies already enqueued complete in the
// background (their staging blocks go back to the pool only then).
//
// Batch copies (cuMemcpyBatchAsync) are never issued on the legacy default
// stream, which cuda.h forbids: there they run on a stream of our own,
// ordered after the caller's stream and before its later work. A batch holds
// at most kMaxBatchCopies descriptors; when the driver refuses one, its copies
// are issued one by one instead.
//
// All functions here are called without the GIL and never touch Python.
// Pinned blocks are returned to the pool only after the copies that used them
// have completed (or with the event that says when).
#pragma once

#include <condition_variable>
#include <cstddef>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <cstdint>
#include <string>
#include <vector>

#include "cuda_driver.h"

namespace tensorbridge {

class Transfer {
 public:
  // Whether the copy has finished (successfully or not). Never blocks.
  bool done() const;
  // Waits until finished; false if `timeout_seconds` (< 0: forever) passed first.
  bool finished_within(double timeout_seconds) const;
  // The driver's error text; empty on success. Meaningful once done().
  std::string error() const;

  void finish(std::string error = {});
  static std::shared_ptr<Transfer> finished(std::string error = {});

  // Posts `token` to the finished tokens (post_finished) once this Transfer
  // has finished: at once if it already has, else from the thread that
  // finishes it.
  void post_when_done(uint64_t token);

 private:
  mutable std::mutex mutex_;  // guards finished_, error_ and tokens_
  mutable std::condition_variable changed_;
  bool finished_ = false;
  std::string error_;
  std::vector<uint64_t> tokens_;
};

// The tokens of finished Transfers (post_when_done), in the order they
// finished, for the one Python thread that completes their futures
// (tensorbridge._transfer): the completion threads only post a number here,
// so that they never wait for the GIL nor run a user's callback. A child
// after fork starts with none.
void post_finished(uint64_t token);
// Blocks until at least one token is there, and takes them all.
std::vector<uint64_t> take_finished();

// Asked between short waits on the calling thread; true stops the wait.
using InterruptCheck = std::function<bool()>;

// A synchronous copy stopped by its InterruptCheck. `pending` finishes when
// the copies it had already enqueued have completed (and their staging blocks
// are reusable): until then their source (and a pinned destination) must
// stay alive.
class CopyInterrupted : public std::exception {
 public:
  explicit CopyInterrupted(std::shared_ptr<Transfer> pending) : pending(std::move(pending)) {}
  const char* what() const noexcept override { return "the copy was interrupted"; }
  std::shared_ptr<Transfer> pending;
};

// Descriptors per cuMemcpyBatchAsync call: very large batches have hung drivers.
constexpr size_t kMaxBatchCopies = 2048;

struct DeviceSpan {
  int device;
  cuda::CUdeviceptr data;
  size_t bytes;
};

// Device -> host, returning when the bytes are in `dst`.
void copy_to_host(const DeviceSpan& src, cuda::CUstream stream, void* dst, bool dst_pinned,
                  const InterruptCheck& interrupted = {});

// Device -> host, enqueued before returning; see the design note.
std::shared_ptr<Transfer> copy_to_host_async(const DeviceSpan& src, cuda::CUstream stream,
                                             void* dst, bool dst_pinned);

// Many device spans of one device -> host destinations, packed: one
// submission where the driver allows, one event; through one pinned block,
// or straight into the destinations when they are pinned. Returns when done.
void copy_many_to_host(const std::vector<DeviceSpan>& srcs, cuda::CUstream stream,
                       const std::vector<void*>& dsts, bool dst_pinned,
                       const InterruptCheck& interrupted = {});

// Host -> device through pinned staging (or directly from pinned memory).
// Returns once `src` may be reused; the returned Transfer finishes when the
// device copy has completed (until then a pinned `src` must stay alive).
std::shared_ptr<Transfer> copy_to_device(const void* src, bool src_pinned, const DeviceSpan& dst,
                                         cuda::CUstream stream);

// Blocks until the completion threads have nothing left (interpreter exit);
// false if `timeout_seconds` (< 0: none) passed first.
bool wait_for_all_transfers(double timeout_seconds = -1);

// What the packed path has submitted since the last reset: batch copies the
// driver took, batch copies it refused (their copies then went one by one),
// and copies issued one by one (refused batches, or a driver without the
// batch call). Read by the tests and by the GPU one-shot's smoke stage.
struct PackedCopyCounts {
  size_t batch_submissions;
  size_t batch_refusals;
  size_t single_copies;
};
PackedCopyCounts packed_copy_counts();
void reset_packed_copy_counts();

// Chunk size used by staging; tests lower it to exercise the pipeline.
void set_staging_chunk_bytes(size_t bytes);

}  // namespace tensorbridge

#include "host_copy.h"

#include "per_process.h"

#include <algorithm>
#include <cstdint>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace tensorbridge {
namespace {

constexpr size_t kMinPiece = 1u << 20;
constexpr unsigned kMaxThreads = 8;

// A fixed set of threads taking copy pieces from one queue, started on first
// use. All fields guarded by mutex_; threads are detached and live as long as
// the process (a forked child starts its own set: see per_process).
class CopyThreads {
 public:
  static CopyThreads& for_this_process() { return per_process<CopyThreads>(); }

  unsigned helpers() {
    std::lock_guard<std::mutex> lock(mutex_);
    start_locked();
    return static_cast<unsigned>(threads_started_);
  }

  void hand_out(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      start_locked();
      tasks_.push_back(std::move(task));
    }
    ready_.notify_one();
  }

 private:
  void start_locked() {
    if (threads_started_ > 0) return;
    const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
    threads_started_ = std::min(kMaxThreads, cores) - 1;  // the caller copies too
    for (int i = 0; i < threads_started_; ++i) std::thread([this] { serve(); }).detach();
  }

  void serve() {
    for (;;) {
      std::function<void()> task;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        ready_.wait(lock, [this] { return !tasks_.empty(); });
        task = std::move(tasks_.front());
        tasks_.pop_front();
      }
      task();
    }
  }

  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<std::function<void()>> tasks_;
  int threads_started_ = 0;
};

}  // namespace

void parallel_memcpy(void* dst, const void* src, size_t bytes) {
  auto* out = static_cast<char*>(dst);
  const auto* in = static_cast<const char*>(src);
  const auto begin = reinterpret_cast<uintptr_t>(in), end = begin + bytes;
  const auto out_begin = reinterpret_cast<uintptr_t>(out);
  if (out_begin < end && begin < out_begin + bytes) {
    // Overlapping ranges: pieces copied side by side would read bytes that
    // another piece already wrote. One memmove gives the bytes `src` had.
    std::memmove(out, in, bytes);
    return;
  }
  CopyThreads& threads = CopyThreads::for_this_process();
  const size_t pieces = std::min<size_t>(bytes / kMinPiece, threads.helpers() + 1);
  if (pieces <= 1) {
    std::memcpy(out, in, bytes);
    return;
  }
  const size_t piece = (bytes / pieces + 4095) / 4096 * 4096;
  std::mutex mutex;
  std::condition_variable all_copied;
  size_t remaining = pieces - 1;
  for (size_t i = 1; i < pieces; ++i) {
    const size_t begin = i * piece;
    const size_t length = i + 1 == pieces ? bytes - begin : piece;
    threads.hand_out([&, begin, length] {
      std::memcpy(out + begin, in + begin, length);
      std::lock_guard<std::mutex> lock(mutex);
      if (--remaining == 0) all_copied.notify_one();
    });
  }
  std::memcpy(out, in, std::min(piece, bytes));
  std::unique_lock<std::mutex> lock(mutex);
  all_copied.wait(lock, [&] { return remaining == 0; });
}

}  // namespace tensorbridge

// Host memory copies split across threads, for draining pinned staging
// buffers into ordinary memory (and filling them) at memory bandwidth.
#pragma once

#include <cstddef>

namespace tensorbridge {

// Copies `bytes` from `src` to `dst` (non-overlapping) on up to 8 threads,
// each taking pieces of at least 4 MiB; small copies run on the caller.
// Call it without the GIL. Safe after fork (the child makes its own threads).
void parallel_memcpy(void* dst, const void* src, size_t bytes);

}  // namespace tensorbridge

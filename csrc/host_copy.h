// Host memory copies split across threads, for draining pinned staging
// buffers into ordinary memory (and filling them) at memory bandwidth.
#pragma once

#include <cstddef>

namespace tensorbridge {

// Copies `bytes` from `src` to `dst` on up to 8 threads, each taking pieces
// of at least 1 MiB; small copies, and overlapping ranges (one memmove),
// run on the caller.
// Call it without the GIL. Safe after fork (the child makes its own threads).
void parallel_memcpy(void* dst, const void* src, size_t bytes);

}  // namespace tensorbridge

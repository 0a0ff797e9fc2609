// Compiled by scripts/gpu_check.sh against a machine's own cuda.h (never
// copied into this repository): checks that the driver prototypes and
// constants we declare in csrc/cuda_driver.h match NVIDIA's, argument by
// argument (count and size of each, which is what the ABI depends on).
#include <cuda.h>

#include <cstddef>
#include <cstdio>
#include <type_traits>
#include <utility>

#include "../csrc/cuda_driver.h"

namespace tb = tensorbridge::cuda;

template <class F>
struct Signature;
template <class R, class... A>
struct Signature<R (*)(A...)> {
  using sizes = std::index_sequence<sizeof(R), sizeof(A)...>;
};

#define SAME_ABI(slot, theirs)                                                            \
  static_assert(std::is_same_v<Signature<decltype(tb::Driver::slot)>::sizes,              \
                               Signature<decltype(&theirs)>::sizes>,                      \
                #slot " differs from cuda.h's " #theirs);

SAME_ABI(cuInit, cuInit)
SAME_ABI(cuDriverGetVersion, cuDriverGetVersion)
SAME_ABI(cuGetErrorString, cuGetErrorString)
SAME_ABI(cuGetErrorName, cuGetErrorName)
SAME_ABI(cuDeviceGetCount, cuDeviceGetCount)
SAME_ABI(cuDeviceGet, cuDeviceGet)
SAME_ABI(cuDeviceGetName, cuDeviceGetName)
SAME_ABI(cuDevicePrimaryCtxRetain, cuDevicePrimaryCtxRetain)
SAME_ABI(cuDevicePrimaryCtxRelease, cuDevicePrimaryCtxRelease_v2)
SAME_ABI(cuCtxGetCurrent, cuCtxGetCurrent)
SAME_ABI(cuCtxSetCurrent, cuCtxSetCurrent)
SAME_ABI(cuMemHostAlloc, cuMemHostAlloc)
SAME_ABI(cuMemFreeHost, cuMemFreeHost)
SAME_ABI(cuMemcpyDtoHAsync, cuMemcpyDtoHAsync_v2)
SAME_ABI(cuMemcpyHtoDAsync, cuMemcpyHtoDAsync_v2)
SAME_ABI(cuStreamCreate, cuStreamCreate)
SAME_ABI(cuStreamDestroy, cuStreamDestroy_v2)
SAME_ABI(cuStreamWaitEvent, cuStreamWaitEvent)
SAME_ABI(cuEventCreate, cuEventCreate)
SAME_ABI(cuEventRecord, cuEventRecord)
SAME_ABI(cuEventQuery, cuEventQuery)
SAME_ABI(cuEventSynchronize, cuEventSynchronize)
SAME_ABI(cuEventDestroy, cuEventDestroy_v2)

static_assert(sizeof(tb::CUdeviceptr) == sizeof(CUdeviceptr));
static_assert(sizeof(tb::CUdevice) == sizeof(CUdevice));
static_assert(tb::CUDA_SUCCESS == CUDA_SUCCESS);
static_assert(tb::CUDA_ERROR_INVALID_VALUE == CUDA_ERROR_INVALID_VALUE);
static_assert(tb::CUDA_ERROR_OUT_OF_MEMORY == CUDA_ERROR_OUT_OF_MEMORY);
static_assert(tb::CUDA_ERROR_NOT_INITIALIZED == CUDA_ERROR_NOT_INITIALIZED);
static_assert(tb::CUDA_ERROR_NO_DEVICE == CUDA_ERROR_NO_DEVICE);
static_assert(tb::CUDA_ERROR_INVALID_DEVICE == CUDA_ERROR_INVALID_DEVICE);
static_assert(tb::CUDA_ERROR_NOT_FOUND == CUDA_ERROR_NOT_FOUND);
static_assert(tb::CUDA_ERROR_NOT_READY == CUDA_ERROR_NOT_READY);
static_assert(tb::kMemHostAllocPortable == CU_MEMHOSTALLOC_PORTABLE);
static_assert(tb::CU_STREAM_NON_BLOCKING == CU_STREAM_NON_BLOCKING);
static_assert(tb::CU_EVENT_DISABLE_TIMING == CU_EVENT_DISABLE_TIMING);

#if CUDA_VERSION >= 12080
// The 12.8 ABI of cuMemcpyBatchAsync (with failIdx), which we request by version.
static_assert(sizeof(tb::CUmemcpyAttributes) == sizeof(CUmemcpyAttributes));
static_assert(offsetof(tb::CUmemcpyAttributes, srcLocHint) ==
              offsetof(CUmemcpyAttributes, srcLocHint));
static_assert(offsetof(tb::CUmemcpyAttributes, dstLocHint) ==
              offsetof(CUmemcpyAttributes, dstLocHint));
static_assert(offsetof(tb::CUmemcpyAttributes, flags) == offsetof(CUmemcpyAttributes, flags));
static_assert(tb::CU_MEMCPY_SRC_ACCESS_ORDER_STREAM == CU_MEMCPY_SRC_ACCESS_ORDER_STREAM);
static_assert(tb::CU_MEM_LOCATION_TYPE_DEVICE == CU_MEM_LOCATION_TYPE_DEVICE);
static_assert(tb::CU_MEM_LOCATION_TYPE_HOST == CU_MEM_LOCATION_TYPE_HOST);
#endif

int main() {
  if (reinterpret_cast<uintptr_t>(CU_STREAM_LEGACY) != 1 ||
      reinterpret_cast<uintptr_t>(tb::legacy_stream()) != 1) {
    std::printf("CU_STREAM_LEGACY differs\n");
    return 1;
  }
  std::printf("driver ABI matches cuda.h %d.%d\n", CUDA_VERSION / 1000, CUDA_VERSION % 1000 / 10);
  return 0;
}

// Checks, at compile time, that the driver prototypes, constants and structs
// we declare in csrc/cuda_driver.h match NVIDIA's cuda.h and cudaTypedefs.h
// (never copied into this repository: scripts/fetch_cuda_headers.sh downloads
// them from PyPI's CUDA runtime wheels, scripts/gpu_check.sh finds a machine's
// own). Built and run by scripts/check_driver_abi.sh once per header version:
//
//   g++ -std=c++17 -I<folder with cuda.h and cudaTypedefs.h> -I csrc scripts/check_driver_abi.cpp
//   ./a.out [-v]        (-v lists every item checked)
//
// Each prototype is compared with cudaTypedefs.h's PFN_<name>_v<version>
// typedef: the ABI that cuGetProcAddress(name, ..., version) hands out, which
// is what our table receives. The version is the largest one <= the version we
// ask for (kDeclaredCudaVersion, 12000; the batch copy: 12080);
// check_driver_abi.sh verifies that against each header's list of PFN
// versions. Arguments are compared one by one: same count, and each the same
// kind (pointer, with the same const-ness, to a compatible type; integers of the
// same size and signedness; an enum of theirs against an integer of ours of
// its size; the same handle type). Our integer types are not cuda.h's
// (uintptr_t vs unsigned long long, int vs enum cudaError_enum), so plain
// std::is_same on the function pointer types would always fail.
//
// cuda.h comes first on purpose: it #defines some plain names onto versioned
// exports (cuMemcpyDtoHAsync -> cuMemcpyDtoHAsync_v2), and our header, read
// after it, has its Driver slots renamed the same way, so `tb::Driver::slot`
// below names our slot whatever the header does. Consequence for
// cuda_driver.h: never name a constant like one of cuda.h's macros
// (CU_MEMHOSTALLOC_PORTABLE, CU_STREAM_LEGACY, CUDA_VERSION): it would be
// rewritten. Enumerator names (CUDA_SUCCESS, CU_EVENT_DISABLE_TIMING) are fine.
//
// How to add an item: one line in the lists below.
//   CHECK_ENTRY(slot, PFN_cuName_vNNNN)    a Driver slot (must exist)
//   CHECK_CONST(ours, theirs)              a constant (must exist)
//   PENDING_ENTRY / PENDING_CONST(name)    the same for an item cuda_driver.h
//                                          may not declare yet: checked when it
//                                          is declared, reported as "pending"
//                                          at run time when it is not. Once it
//                                          is declared, turn PENDING_ into
//                                          CHECK_ so that losing it fails.
//   PENDING_TYPE(name, PFN_cuName_vNNNN)   a function pointer type tb::name
// check_driver_abi.sh reads the CHECK_ENTRY / PENDING_ENTRY / PENDING_TYPE
// lines to verify their PFN versions: keep each on one line.
#include <cuda.h>
#if !__has_include(<cudaTypedefs.h>)
#error \
    "cudaTypedefs.h (NVIDIA's PFN_* typedefs) must sit next to cuda.h: both come with the toolkit and the runtime wheels"
#endif
#include <cudaTypedefs.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <type_traits>

// -I csrc (check_driver_abi.sh), or -I a folder with another copy to test the check itself.
#if __has_include("cuda_driver.h")
#include "cuda_driver.h"
#else
#include "../csrc/cuda_driver.h"
#endif

namespace tb = tensorbridge::cuda;

// -- argument-by-argument ABI compatibility -----------------------------------

template <class Ours, class Theirs, class = void>
struct Compatible : std::false_type {};

template <class T>
struct Compatible<T, T> : std::true_type {};

template <class T>
constexpr bool is_plain_integer =
    std::is_integral_v<T> && !std::is_same_v<T, bool> && !std::is_same_v<T, char>;

template <class Ours, class Theirs>
struct Compatible<Ours, Theirs,
                  std::enable_if_t<!std::is_same_v<Ours, Theirs> && is_plain_integer<Ours> &&
                                   is_plain_integer<Theirs>>>
    : std::bool_constant<sizeof(Ours) == sizeof(Theirs) &&
                         std::is_signed_v<Ours> == std::is_signed_v<Theirs>> {};

// cuda.h's enums (CUresult, CUdriverProcAddressQueryResult, CUmemcpySrcAccessOrder)
// are int-valued; the compiler picks their underlying signedness.
template <class Ours, class Theirs>
struct Compatible<Ours, Theirs, std::enable_if_t<is_plain_integer<Ours> && std::is_enum_v<Theirs>>>
    : std::bool_constant<sizeof(Ours) == sizeof(Theirs)> {};

template <class Ours, class Theirs>
struct Compatible<Ours*, Theirs*, std::enable_if_t<!std::is_same_v<Ours, Theirs>>>
    : std::bool_constant<std::is_const_v<Ours> == std::is_const_v<Theirs> &&
                         std::is_volatile_v<Ours> == std::is_volatile_v<Theirs> &&
                         Compatible<std::remove_cv_t<Ours>, std::remove_cv_t<Theirs>>::value> {};

template <bool same_arity, class Ours, class Theirs>
struct SameArityCompatible : std::false_type {};

template <class R1, class R2, class... A1, class... A2>
struct SameArityCompatible<true, R1(A1...), R2(A2...)>
    : std::bool_constant<Compatible<R1, R2>::value && (Compatible<A1, A2>::value && ...)> {};

template <class R1, class R2, class... A1, class... A2>
struct Compatible<R1(A1...), R2(A2...), std::enable_if_t<!std::is_same_v<R1(A1...), R2(A2...)>>>
    : SameArityCompatible<sizeof...(A1) == sizeof...(A2), R1(A1...), R2(A2...)> {};

#if CUDA_VERSION >= 12080
// Our structs for the batch copy against theirs; the layouts are checked below.
template <>
struct Compatible<tb::CUmemcpyAttributes, CUmemcpyAttributes> : std::true_type {};
template <>
struct Compatible<tb::CUmemLocation, CUmemLocation> : std::true_type {};
#endif

template <class Ours, class Theirs>
constexpr bool compatible_v = Compatible<Ours, Theirs>::value;

// -- "pending" items: checked only once cuda_driver.h declares them -----------

// Qualified lookup of tb::NAME finds tensorbridge::cuda's own declaration when
// there is one, and only otherwise this fallback (brought in by the using-
// directive), whose type says "not declared".
namespace abi_probe {
struct NotDeclared {};
constexpr NotDeclared CU_EVENT_BLOCKING_SYNC{}, CU_EVENT_DEFAULT{}, CU_STREAM_DEFAULT{},
    CUDA_ERROR_DEINITIALIZED{}, CUDA_ERROR_INVALID_CONTEXT{}, CUDA_ERROR_INVALID_HANDLE{},
    CUDA_ERROR_ILLEGAL_ADDRESS{}, CUDA_ERROR_LAUNCH_FAILED{}, CUDA_ERROR_NOT_PERMITTED{},
    CUDA_ERROR_NOT_SUPPORTED{}, CUDA_ERROR_UNKNOWN{}, CU_MEMCPY_SRC_ACCESS_ORDER_ANY{},
    CU_MEMCPY_SRC_ACCESS_ORDER_DURING_API_CALL{}, CU_GET_PROC_ADDRESS_DEFAULT{},
    CU_GET_PROC_ADDRESS_SUCCESS{}, CU_GET_PROC_ADDRESS_SYMBOL_NOT_FOUND{},
    CU_GET_PROC_ADDRESS_VERSION_NOT_SUFFICIENT{};
using GetProcAddressV2 = NotDeclared;  // cuda_driver.cpp's private typedef, if it moves here
}  // namespace abi_probe
namespace tensorbridge::cuda {
using namespace ::abi_probe;
}

template <class T>
constexpr bool declared_v = !std::is_same_v<std::remove_cv_t<T>, abi_probe::NotDeclared>;

// Driver slots: detected by name (SFINAE), one detector per pending slot.
#define TB_SLOT_DETECTOR(slot)                                               \
  template <class D, class = void>                                           \
  struct has_##slot : std::false_type {};                                    \
  template <class D>                                                         \
  struct has_##slot<D, std::void_t<decltype(&D::slot)>> : std::true_type {}; \
  template <class D, bool = has_##slot<D>::value>                            \
  struct type_of_##slot {                                                    \
    using type = abi_probe::NotDeclared;                                     \
  };                                                                         \
  template <class D>                                                         \
  struct type_of_##slot<D, true> {                                           \
    using type = decltype(D::slot);                                          \
  };

// -- the check macros -----------------------------------------------------------

struct Item {
  const char* name;
  bool pending;
};
constexpr std::size_t kMaxItems = 128;
Item items[kMaxItems];
std::size_t item_count = 0;
struct Register {
  Register(const char* name, bool pending) {
    if (item_count < kMaxItems) items[item_count++] = {name, pending};
  }
};

#define TB_CAT2(a, b) a##b
#define TB_CAT(a, b) TB_CAT2(a, b)
#define TB_REGISTER(name, pending) static Register TB_CAT(registered_, __LINE__){name, pending};

#define CHECK_ENTRY(slot, pfn)                                                                     \
  static_assert(                                                                                   \
      compatible_v<std::remove_pointer_t<decltype(tb::Driver::slot)>, std::remove_pointer_t<pfn>>, \
      "Driver::" #slot " differs from cudaTypedefs.h's " #pfn);                                    \
  TB_REGISTER(#slot " = " #pfn, false)

#define PENDING_ENTRY(slot, pfn)                                                                   \
  TB_SLOT_DETECTOR(slot)                                                                           \
  static_assert(!has_##slot<tb::Driver>::value ||                                                  \
                    compatible_v<std::remove_pointer_t<typename type_of_##slot<tb::Driver>::type>, \
                                 std::remove_pointer_t<pfn>>,                                      \
                "Driver::" #slot " differs from cudaTypedefs.h's " #pfn);                          \
  TB_REGISTER(#slot " = " #pfn, !has_##slot<tb::Driver>::value)

#define PENDING_TYPE(name, pfn)                                                                \
  static_assert(!declared_v<tb::name> ||                                                       \
                    compatible_v<std::remove_pointer_t<tb::name>, std::remove_pointer_t<pfn>>, \
                "tb::" #name " differs from cudaTypedefs.h's " #pfn);                          \
  TB_REGISTER(#name " = " #pfn, !declared_v<tb::name>)

#define CHECK_CONST(ours, theirs)                                               \
  static_assert(static_cast<long long>(ours) == static_cast<long long>(theirs), \
                #ours " differs from cuda.h's " #theirs);                       \
  TB_REGISTER(#ours, false)

template <class Ours, class Theirs>
constexpr bool same_value_if_declared(const Ours& ours, const Theirs& theirs) {
  if constexpr (declared_v<Ours>) {
    return static_cast<long long>(ours) == static_cast<long long>(theirs);
  } else {
    return true;
  }
}

#define PENDING_CONST(name)                                    \
  static_assert(same_value_if_declared(tb::name, ::name),      \
                "tb::" #name " differs from cuda.h's " #name); \
  TB_REGISTER(#name, !declared_v<decltype(tb::name)>)

// -- the items --------------------------------------------------------------------

// The PFN versions below are the ABIs served at CUDA 12.0.
static_assert(tb::kDeclaredCudaVersion == 12000,
              "kDeclaredCudaVersion changed: update the PFN_*_v<version> names below");
static_assert(tb::kBatchCopyCudaVersion == 12080,
              "kBatchCopyCudaVersion changed: update the batch copy's check below");

// Every slot of tb::Driver.
CHECK_ENTRY(cuInit, PFN_cuInit_v2000)
CHECK_ENTRY(cuDriverGetVersion, PFN_cuDriverGetVersion_v2020)
CHECK_ENTRY(cuGetErrorString, PFN_cuGetErrorString_v6000)
CHECK_ENTRY(cuGetErrorName, PFN_cuGetErrorName_v6000)
CHECK_ENTRY(cuDeviceGetCount, PFN_cuDeviceGetCount_v2000)
CHECK_ENTRY(cuDeviceGet, PFN_cuDeviceGet_v2000)
CHECK_ENTRY(cuDeviceGetName, PFN_cuDeviceGetName_v2000)
CHECK_ENTRY(cuDevicePrimaryCtxRetain, PFN_cuDevicePrimaryCtxRetain_v7000)
CHECK_ENTRY(cuCtxGetCurrent, PFN_cuCtxGetCurrent_v4000)
CHECK_ENTRY(cuCtxSetCurrent, PFN_cuCtxSetCurrent_v4000)
CHECK_ENTRY(cuMemHostAlloc, PFN_cuMemHostAlloc_v2020)
CHECK_ENTRY(cuMemFreeHost, PFN_cuMemFreeHost_v2000)
CHECK_ENTRY(cuMemcpyDtoHAsync, PFN_cuMemcpyDtoHAsync_v3020)
CHECK_ENTRY(cuMemcpyHtoDAsync, PFN_cuMemcpyHtoDAsync_v3020)
CHECK_ENTRY(cuStreamCreate, PFN_cuStreamCreate_v2000)
CHECK_ENTRY(cuStreamWaitEvent, PFN_cuStreamWaitEvent_v3020)
CHECK_ENTRY(cuEventCreate, PFN_cuEventCreate_v2000)
CHECK_ENTRY(cuEventRecord, PFN_cuEventRecord_v2000)
CHECK_ENTRY(cuEventQuery, PFN_cuEventQuery_v2000)
CHECK_ENTRY(cuEventSynchronize, PFN_cuEventSynchronize_v2000)
CHECK_ENTRY(cuEventDestroy, PFN_cuEventDestroy_v4000)
// cuda.h #defines cuMemHostRegister as cuMemHostRegister_v2, whose ABI
// cuGetProcAddress serves at 12.0 as PFN_cuMemHostRegister_v6050.
CHECK_ENTRY(cuMemHostRegister, PFN_cuMemHostRegister_v6050)
CHECK_ENTRY(cuMemHostUnregister, PFN_cuMemHostUnregister_v4000)

// cuGetProcAddress itself: dlsym'd as cuGetProcAddress_v2, so not a Driver slot;
// checked once cuda_driver.h declares the function pointer type it casts to.

// The batch copy: the 12.8 ABI, with failIdx, which we ask for at 12080.
// 12.8 and 12.9 name it PFN_cuMemcpyBatchAsync_v12080 (their PFN_cuMemcpyBatchAsync);
// 13.0's cuda.h maps cuMemcpyBatchAsync onto cuMemcpyBatchAsync_v2 (no failIdx,
// PFN_cuMemcpyBatchAsync_v13000) but its cudaTypedefs.h still has the _v12080
// typedef, which is the one to compare with. 12.2 has neither: not checked there.
#if CUDA_VERSION >= 12080
CHECK_ENTRY(cuMemcpyBatchAsync, PFN_cuMemcpyBatchAsync_v12080)
#if CUDA_VERSION >= 13000
static_assert(!compatible_v<std::remove_pointer_t<decltype(tb::Driver::cuMemcpyBatchAsync)>,
                            std::remove_pointer_t<PFN_cuMemcpyBatchAsync_v13000>>,
              "Driver::cuMemcpyBatchAsync has the 13.0 ABI (no failIdx), but we ask for 12080");
#endif
static_assert(sizeof(tb::CUmemLocation) == sizeof(CUmemLocation));
static_assert(alignof(tb::CUmemLocation) == alignof(CUmemLocation));
static_assert(offsetof(tb::CUmemLocation, type) == offsetof(CUmemLocation, type));
static_assert(offsetof(tb::CUmemLocation, id) == offsetof(CUmemLocation, id));
static_assert(sizeof(tb::CUmemLocation::type) == sizeof(CUmemLocation::type));
static_assert(sizeof(tb::CUmemcpyAttributes) == sizeof(CUmemcpyAttributes));
static_assert(alignof(tb::CUmemcpyAttributes) == alignof(CUmemcpyAttributes));
static_assert(offsetof(tb::CUmemcpyAttributes, srcAccessOrder) ==
              offsetof(CUmemcpyAttributes, srcAccessOrder));
static_assert(offsetof(tb::CUmemcpyAttributes, srcLocHint) ==
              offsetof(CUmemcpyAttributes, srcLocHint));
static_assert(offsetof(tb::CUmemcpyAttributes, dstLocHint) ==
              offsetof(CUmemcpyAttributes, dstLocHint));
static_assert(offsetof(tb::CUmemcpyAttributes, flags) == offsetof(CUmemcpyAttributes, flags));
static_assert(sizeof(tb::CUmemcpyAttributes::srcAccessOrder) ==
              sizeof(CUmemcpyAttributes::srcAccessOrder));
static_assert(sizeof(tb::CUmemcpyAttributes::flags) == sizeof(CUmemcpyAttributes::flags));
TB_REGISTER("CUmemLocation, CUmemcpyAttributes layouts", false)
CHECK_CONST(tb::CU_MEMCPY_SRC_ACCESS_ORDER_STREAM, CU_MEMCPY_SRC_ACCESS_ORDER_STREAM)
CHECK_CONST(tb::CU_MEM_LOCATION_TYPE_DEVICE, CU_MEM_LOCATION_TYPE_DEVICE)
CHECK_CONST(tb::CU_MEM_LOCATION_TYPE_HOST, CU_MEM_LOCATION_TYPE_HOST)
#endif

// Types.
static_assert(sizeof(tb::CUdeviceptr) == sizeof(CUdeviceptr) &&
              std::is_unsigned_v<tb::CUdeviceptr> == std::is_unsigned_v<CUdeviceptr>);
static_assert(compatible_v<tb::CUdevice, CUdevice>);
static_assert(compatible_v<tb::CUresult, CUresult>);

// Constants.
CHECK_CONST(tb::CUDA_SUCCESS, CUDA_SUCCESS)
CHECK_CONST(tb::CUDA_ERROR_INVALID_VALUE, CUDA_ERROR_INVALID_VALUE)
CHECK_CONST(tb::CUDA_ERROR_OUT_OF_MEMORY, CUDA_ERROR_OUT_OF_MEMORY)
CHECK_CONST(tb::CUDA_ERROR_NOT_INITIALIZED, CUDA_ERROR_NOT_INITIALIZED)
CHECK_CONST(tb::CUDA_ERROR_NO_DEVICE, CUDA_ERROR_NO_DEVICE)
CHECK_CONST(tb::CUDA_ERROR_INVALID_DEVICE, CUDA_ERROR_INVALID_DEVICE)
CHECK_CONST(tb::CUDA_ERROR_NOT_FOUND, CUDA_ERROR_NOT_FOUND)
CHECK_CONST(tb::CUDA_ERROR_NOT_READY, CUDA_ERROR_NOT_READY)
CHECK_CONST(tb::kMemHostAllocPortable, CU_MEMHOSTALLOC_PORTABLE)
CHECK_CONST(tb::CU_STREAM_NON_BLOCKING, CU_STREAM_NON_BLOCKING)
CHECK_CONST(tb::CU_EVENT_DISABLE_TIMING, CU_EVENT_DISABLE_TIMING)
CHECK_CONST(tb::CU_EVENT_BLOCKING_SYNC, CU_EVENT_BLOCKING_SYNC)
CHECK_CONST(tb::CUDA_ERROR_INVALID_HANDLE, CUDA_ERROR_INVALID_HANDLE)
CHECK_CONST(tb::CUDA_ERROR_NOT_SUPPORTED, CUDA_ERROR_NOT_SUPPORTED)
CHECK_CONST(tb::kMemHostRegisterPortable, CU_MEMHOSTREGISTER_PORTABLE)
CHECK_CONST(tb::CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED,
            CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED)
CHECK_CONST(tb::CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED, CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED)

int main(int argc, char** argv) {
  // CU_STREAM_LEGACY and CU_STREAM_PER_THREAD are casts, not constant expressions.
  if (reinterpret_cast<uintptr_t>(CU_STREAM_LEGACY) != 1 ||
      !tb::is_legacy_stream(CU_STREAM_LEGACY) || !tb::is_legacy_stream(nullptr) ||
      tb::is_legacy_stream(CU_STREAM_PER_THREAD)) {
    std::printf("FAIL: tb::is_legacy_stream() disagrees with cuda.h's CU_STREAM_LEGACY\n");
    return 1;
  }
  const bool verbose = argc > 1 && argv[1][0] == '-' && argv[1][1] == 'v';
  std::size_t pending = 0;
  for (std::size_t i = 0; i < item_count; ++i) {
    if (items[i].pending) {
      std::printf("%s%s", pending++ ? ", " : "  pending (not declared in cuda_driver.h yet): ",
                  items[i].name);
    }
  }
  if (pending) std::printf("\n");
  for (std::size_t i = 0; verbose && i < item_count; ++i) {
    if (!items[i].pending) std::printf("  ok: %s\n", items[i].name);
  }
  std::printf("driver ABI matches cuda.h %d.%d (CUDA_VERSION %d): %zu items checked, %zu pending\n",
              CUDA_VERSION / 1000, CUDA_VERSION % 1000 / 10, CUDA_VERSION, item_count - pending,
              pending);
  return 0;
}

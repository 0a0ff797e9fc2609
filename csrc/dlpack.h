// The DLPack ABI, as far as tensorbridge consumes it.
//
// We declare the few structs we read ourselves instead of including a foreign
// header: they are a stable C ABI (DLPack 1.x), and owning the declarations
// keeps the build free of third-party headers. Layouts and numeric values must
// match the DLPack specification exactly; names carry a `DL` prefix like the
// spec's so that they are easy to compare against it.
#pragma once

#include <cstdint>

namespace tensorbridge::dlpack {

// The ABI major version we understand. A producer's tensor with another major
// version must not be read: only its deleter may be called.
constexpr uint32_t kMajorVersion = 1;
// The newest minor version we know of; sent to producers as `max_version`.
constexpr uint32_t kMinorVersion = 3;
// The first minor version whose exchange table has DLPackExchangeAPI's layout
// (DLPack 1.2; 1.3 moved it into a capsule): an older table is pre-standard
// and its slots may be others, so it is never called.
constexpr uint32_t kExchangeApiMinorVersion = 2;

struct DLPackVersion {
  uint32_t major;
  uint32_t minor;
};

// Where the memory lives. Only the values we act on are listed.
enum DLDeviceType : int32_t {
  kDLCPU = 1,
  kDLCUDA = 2,
  kDLCUDAHost = 3,  // page-locked host memory: readable by the CPU
  kDLROCM = 10,
  kDLROCMHost = 11,  // page-locked host memory: readable by the CPU
  kDLCUDAManaged = 13,
};

// Device types whose memory the CPU reads directly, and those of CUDA device
// memory: defined here once, and given to Python as _core.CPU_READABLE_DEVICES
// and _core.CUDA_DEVICE_TYPES.
constexpr DLDeviceType kCpuReadableDevices[] = {kDLCPU, kDLCUDAHost, kDLROCMHost};
constexpr DLDeviceType kCudaDeviceTypes[] = {kDLCUDA, kDLCUDAManaged};

constexpr bool cpu_readable(DLDeviceType type) {
  return type == kDLCPU || type == kDLCUDAHost || type == kDLROCMHost;
}
constexpr bool is_cuda_memory(DLDeviceType type) {
  return type == kDLCUDA || type == kDLCUDAManaged;
}

struct DLDevice {
  DLDeviceType device_type;
  int32_t device_id;
};

// Element type codes. `bits` is the element width, `lanes` must be 1 for
// anything NumPy can represent.
enum DLDataTypeCode : uint8_t {
  kDLInt = 0,
  kDLUInt = 1,
  kDLFloat = 2,
  kDLOpaqueHandle = 3,
  kDLBfloat = 4,
  kDLComplex = 5,
  kDLBool = 6,
  kDLFloat8_e3m4 = 7,
  kDLFloat8_e4m3 = 8,
  kDLFloat8_e4m3b11fnuz = 9,
  kDLFloat8_e4m3fn = 10,
  kDLFloat8_e4m3fnuz = 11,
  kDLFloat8_e5m2 = 12,
  kDLFloat8_e5m2fnuz = 13,
  kDLFloat8_e8m0fnu = 14,
  kDLFloat6_e2m3fn = 15,
  kDLFloat6_e3m2fn = 16,
  kDLFloat4_e2m1fn = 17,
};
constexpr int kDLDataTypeCodeCount = 18;

struct DLDataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};

// A strided view of memory. `data` plus `byte_offset` is the first element;
// `strides` counts elements, not bytes, and NULL means compact row-major.
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
};

// The unversioned (DLPack < 1.0) owner, carried by a capsule named "dltensor".
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  // Must be called exactly once by the consumer when it is done.
  void (*deleter)(DLManagedTensor* self);
};

// Flag bits of DLManagedTensorVersioned::flags.
constexpr uint64_t kFlagReadOnly = 1ull << 0;
constexpr uint64_t kFlagIsCopied = 1ull << 1;

// The versioned owner, carried by a capsule named "dltensor_versioned". The
// version comes first so that it can be read before anything else.
struct DLManagedTensorVersioned {
  DLPackVersion version;
  void* manager_ctx;
  void (*deleter)(DLManagedTensorVersioned* self);
  uint64_t flags;
  DLTensor dl_tensor;
};

// The C exchange API a producer type publishes as the class attribute
// `__dlpack_c_exchange_api__` (a capsule named "dlpack_exchange_api"). It lets
// a consumer read a tensor with no Python call. We only call
// `dltensor_from_py_object_no_sync`, which fills a non-owning DLTensor valid
// while the Python object lives; the other slots are declared for layout.
struct DLPackExchangeAPIHeader {
  DLPackVersion version;
  DLPackExchangeAPIHeader* prev_api;
};

struct DLPackExchangeAPI {
  DLPackExchangeAPIHeader header;
  void* managed_tensor_allocator;
  int (*managed_tensor_from_py_object_no_sync)(void* py_object, DLManagedTensorVersioned** out);
  int (*managed_tensor_to_py_object_no_sync)(DLManagedTensorVersioned* tensor,
                                             void** out_py_object);
  // Returns 0 on success; on failure returns -1 with a Python error set.
  int (*dltensor_from_py_object_no_sync)(void* py_object, DLTensor* out);
  int (*current_work_stream)(DLDeviceType device_type, int32_t device_id,
                             void** out_current_stream);
};

inline constexpr const char* kCapsuleName = "dltensor";
inline constexpr const char* kCapsuleNameUsed = "used_dltensor";
inline constexpr const char* kVersionedCapsuleName = "dltensor_versioned";
inline constexpr const char* kVersionedCapsuleNameUsed = "used_dltensor_versioned";
inline constexpr const char* kExchangeApiCapsuleName = "dlpack_exchange_api";

}  // namespace tensorbridge::dlpack

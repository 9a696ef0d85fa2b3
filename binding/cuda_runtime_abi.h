// The CUDA runtime functions the addon uses, declared without any CUDA header (docs/architecture.md#native-addon: the addon
// builds with no CUDA toolkit). They are resolved at run time through the FlashMLA build's handle
// (dlsym finds the libcudart it NEEDs), so addon and kernels share one runtime instance (docs/flashmla-interface.md#device-and-stream).
// The CI emulator exports these same C symbols.
#pragma once

#include <cstddef>
#include <cstring>

namespace cuda_abi {

using cudaError_t = int;
using cudaStream_t = void*;
using cudaEvent_t = void*;
using cudaGraph_t = void*;
using cudaGraphExec_t = void*;

inline constexpr cudaError_t cudaSuccess = 0;
inline constexpr cudaError_t cudaErrorInvalidValue = 1;
inline constexpr cudaError_t cudaErrorMemoryAllocation = 2;
inline constexpr cudaError_t cudaErrorInsufficientDriver = 35;
inline constexpr cudaError_t cudaErrorNoDevice = 100;
inline constexpr cudaError_t cudaErrorInvalidDevice = 101;
inline constexpr cudaError_t cudaErrorIllegalAddress = 700;

// cudaDeviceAttr values (stable across CUDA 11–13).
inline constexpr int cudaDevAttrMultiProcessorCount = 16;
inline constexpr int cudaDevAttrComputeCapabilityMajor = 75;
inline constexpr int cudaDevAttrComputeCapabilityMinor = 76;

// cudaMemcpyKind
inline constexpr int cudaMemcpyHostToDevice = 1;
inline constexpr int cudaMemcpyDeviceToHost = 2;
inline constexpr int cudaMemcpyDeviceToDevice = 3;

inline constexpr unsigned cudaStreamNonBlocking = 1;
// cudaHostAlloc flags: page-locked memory usable by every context, not only the current one.
inline constexpr unsigned cudaHostAllocPortable = 1;

// cudaStreamCaptureMode: Relaxed lets other threads (the instance's worker) make any call while
// the calling thread captures (docs/cuda-path.md#graphs).
inline constexpr int cudaStreamCaptureModeRelaxed = 2;

// cudaMemoryType in cudaPointerAttributes::type.
inline constexpr int cudaMemoryTypeDevice = 2;

// struct cudaPointerAttributes: CUDA 10–12 declare { enum type; int device; void* devicePointer;
// void* hostPointer; } (24 bytes); CUDA 13.0 appends `long reserved[8]` that must be zero (88 bytes),
// and the runtime writes its whole struct. So the addon never passes this prefix type to the
// runtime: it passes a zeroed PointerAttributesBuffer, larger than any version's struct, and reads
// the prefix out of it (docs/cuda-path.md#runtime-structs).
struct PointerAttributesPrefix {
  int type;
  int device;
  void* devicePointer;
  void* hostPointer;
};
static_assert(offsetof(PointerAttributesPrefix, type) == 0 && offsetof(PointerAttributesPrefix, device) == 4 &&
                  offsetof(PointerAttributesPrefix, devicePointer) == 8 && offsetof(PointerAttributesPrefix, hostPointer) == 16,
              "cudaPointerAttributes prefix layout (identical in CUDA 10-13)");
inline constexpr std::size_t kCuda13PointerAttributesBytes = 88;
inline constexpr std::size_t kPointerAttributesBufferBytes = 512;
static_assert(kPointerAttributesBufferBytes >= 4 * kCuda13PointerAttributesBytes, "room for the struct to grow");

struct PointerAttributesBuffer {
  alignas(16) unsigned char bytes[kPointerAttributesBufferBytes] = {};
  PointerAttributesPrefix prefix() const {
    PointerAttributesPrefix p;
    std::memcpy(&p, bytes, sizeof p);
    return p;
  }
};

// cudaDeviceProp begins with `char name[256]` in every CUDA version; the rest of the struct changes
// between versions, so the addon passes a buffer larger than any version's struct and reads the
// name only.
inline constexpr std::size_t kDevicePropBufferBytes = 16384;

// Each entry: member name, exported symbol, signature. X-macro so the table, the resolver and the
// emulator's export list cannot drift apart. Required entries must all resolve; cudaGetDeviceProperties
// is looked up as `_v2` first (CUDA 12+), then unversioned.
#define CUDA_ABI_FUNCTIONS(X)                                                                     \
  X(GetErrorString, "cudaGetErrorString", const char* (*)(cudaError_t))                           \
  X(GetLastError, "cudaGetLastError", cudaError_t (*)())                                          \
  X(RuntimeGetVersion, "cudaRuntimeGetVersion", cudaError_t (*)(int*))                            \
  X(DriverGetVersion, "cudaDriverGetVersion", cudaError_t (*)(int*))                              \
  X(GetDeviceCount, "cudaGetDeviceCount", cudaError_t (*)(int*))                                  \
  X(SetDevice, "cudaSetDevice", cudaError_t (*)(int))                                             \
  X(GetDevice, "cudaGetDevice", cudaError_t (*)(int*))                                            \
  X(DeviceGetAttribute, "cudaDeviceGetAttribute", cudaError_t (*)(int*, int, int))                \
  X(MemGetInfo, "cudaMemGetInfo", cudaError_t (*)(std::size_t*, std::size_t*))                   \
  X(Malloc, "cudaMalloc", cudaError_t (*)(void**, std::size_t))                                   \
  X(Free, "cudaFree", cudaError_t (*)(void*))                                                     \
  X(HostAlloc, "cudaHostAlloc", cudaError_t (*)(void**, std::size_t, unsigned))                   \
  X(FreeHost, "cudaFreeHost", cudaError_t (*)(void*))                                             \
  X(MemcpyAsync, "cudaMemcpyAsync", cudaError_t (*)(void*, const void*, std::size_t, int, cudaStream_t)) \
  X(Memcpy2DAsync, "cudaMemcpy2DAsync",                                                           \
    cudaError_t (*)(void*, std::size_t, const void*, std::size_t, std::size_t, std::size_t, int, cudaStream_t)) \
  X(MemsetAsync, "cudaMemsetAsync", cudaError_t (*)(void*, int, std::size_t, cudaStream_t))       \
  X(StreamCreateWithFlags, "cudaStreamCreateWithFlags", cudaError_t (*)(cudaStream_t*, unsigned)) \
  X(StreamDestroy, "cudaStreamDestroy", cudaError_t (*)(cudaStream_t))                            \
  X(StreamSynchronize, "cudaStreamSynchronize", cudaError_t (*)(cudaStream_t))                    \
  X(PointerGetAttributes, "cudaPointerGetAttributes", cudaError_t (*)(void* attributes, const void*)) \
  X(EventCreate, "cudaEventCreate", cudaError_t (*)(cudaEvent_t*))                                \
  X(EventRecord, "cudaEventRecord", cudaError_t (*)(cudaEvent_t, cudaStream_t))                   \
  X(EventSynchronize, "cudaEventSynchronize", cudaError_t (*)(cudaEvent_t))                       \
  X(EventElapsedTime, "cudaEventElapsedTime", cudaError_t (*)(float*, cudaEvent_t, cudaEvent_t))  \
  X(EventDestroy, "cudaEventDestroy", cudaError_t (*)(cudaEvent_t))                              \
  X(StreamBeginCapture, "cudaStreamBeginCapture", cudaError_t (*)(cudaStream_t, int))             \
  X(StreamEndCapture, "cudaStreamEndCapture", cudaError_t (*)(cudaStream_t, cudaGraph_t*))        \
  X(GraphInstantiateWithFlags, "cudaGraphInstantiateWithFlags", cudaError_t (*)(cudaGraphExec_t*, cudaGraph_t, unsigned long long)) \
  X(GraphLaunch, "cudaGraphLaunch", cudaError_t (*)(cudaGraphExec_t, cudaStream_t))               \
  X(GraphExecDestroy, "cudaGraphExecDestroy", cudaError_t (*)(cudaGraphExec_t))                   \
  X(GraphDestroy, "cudaGraphDestroy", cudaError_t (*)(cudaGraph_t))

// Looked up separately: "cudaGetDeviceProperties_v2" then "cudaGetDeviceProperties",
// signature cudaError_t (*)(void* prop, int device).
using GetDevicePropertiesFn = cudaError_t (*)(void*, int);

// Optional (CUDA 12.8 and newer): "cudaStreamGetDevice", the device of a stream
// (docs/cuda-path.md#streams-and-events). Null when the runtime predates it.
using StreamGetDeviceFn = cudaError_t (*)(cudaStream_t, int*);

}  // namespace cuda_abi

// The CUDA runtime functions of binding/cuda_runtime_abi.h, exported with C linkage so the addon
// resolves them through this library's handle exactly as it would through a FlashMLA build's
// libcudart. Semantics follow the real runtime where the addon can observe them: per-thread last
// error, sticky device faults, per-thread current device, cudaErrorInsufficientDriver from every
// device call when the driver is older than the runtime.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>
#include <type_traits>

#include "runtime.h"
#include "runtime_structs.h"

using cuda_abi::cudaError_t;
using cuda_abi::cudaEvent_t;
using cuda_abi::cudaGraph_t;
using cuda_abi::cudaGraphExec_t;
using cuda_abi::cudaStream_t;

namespace {

// Gate for calls that need the current device's context; records failures as the pending error.
cudaError_t gate(int* device) {
  *device = emu::currentDevice();
  return emu::recordError(emu::contextState(*device));
}

// Gate for queries that work without a (live) context: attribute and property reads.
cudaError_t queryGate(int device) {
  emu::Config c = emu::config();
  if (c.driverVersion < c.runtimeVersion) return emu::recordError(cuda_abi::cudaErrorInsufficientDriver);
  if (c.devices == 0) return emu::recordError(cuda_abi::cudaErrorNoDevice);
  if (device < 0 || device >= c.devices) return emu::recordError(cuda_abi::cudaErrorInvalidDevice);
  return cuda_abi::cudaSuccess;
}

// Page-locked host allocations (cudaHostAlloc): plain host memory here; only cudaFreeHost of one of
// these pointers is valid, as with the real runtime.
std::mutex hostMutex;
std::set<void*> hostAllocations;

// Device-side range of a copy or memset: inside one live allocation of the current device.
bool deviceRange(int device, const void* p, std::size_t bytes) {
  return bytes == 0 || emu::findAllocation(device, p, bytes, nullptr);
}

}  // namespace

extern "C" {

__attribute__((visibility("default"))) const char* cudaGetErrorString(cudaError_t e) { return emu::errorString(e); }

__attribute__((visibility("default"))) cudaError_t cudaGetLastError() { return emu::takeLastError(); }

__attribute__((visibility("default"))) cudaError_t cudaRuntimeGetVersion(int* v) {
  if (v == nullptr) return emu::recordError(cuda_abi::cudaErrorInvalidValue);
  *v = emu::config().runtimeVersion;
  return cuda_abi::cudaSuccess;
}

__attribute__((visibility("default"))) cudaError_t cudaDriverGetVersion(int* v) {
  if (v == nullptr) return emu::recordError(cuda_abi::cudaErrorInvalidValue);
  *v = emu::config().driverVersion;
  return cuda_abi::cudaSuccess;
}

__attribute__((visibility("default"))) cudaError_t cudaGetDeviceCount(int* count) {
  if (count == nullptr) return emu::recordError(cuda_abi::cudaErrorInvalidValue);
  emu::Config c = emu::config();
  *count = 0;
  if (c.driverVersion < c.runtimeVersion) return emu::recordError(cuda_abi::cudaErrorInsufficientDriver);
  if (c.devices == 0) return emu::recordError(cuda_abi::cudaErrorNoDevice);
  *count = c.devices;
  return cuda_abi::cudaSuccess;
}

__attribute__((visibility("default"))) cudaError_t cudaSetDevice(int device) {
  cudaError_t e = queryGate(device);
  if (e != cuda_abi::cudaSuccess) return e;
  emu::setCurrentDevice(device);
  return cuda_abi::cudaSuccess;
}

__attribute__((visibility("default"))) cudaError_t cudaGetDevice(int* device) {
  if (device == nullptr) return emu::recordError(cuda_abi::cudaErrorInvalidValue);
  emu::Config c = emu::config();
  if (c.driverVersion < c.runtimeVersion) return emu::recordError(cuda_abi::cudaErrorInsufficientDriver);
  if (c.devices == 0) return emu::recordError(cuda_abi::cudaErrorNoDevice);
  *device = emu::currentDevice();
  return cuda_abi::cudaSuccess;
}

__attribute__((visibility("default"))) cudaError_t cudaDeviceGetAttribute(int* value, int attr, int device) {
  if (value == nullptr) return emu::recordError(cuda_abi::cudaErrorInvalidValue);
  cudaError_t e = queryGate(device);
  if (e != cuda_abi::cudaSuccess) return e;
  emu::Config c = emu::config();
  switch (attr) {
    case cuda_abi::cudaDevAttrMultiProcessorCount: *value = c.sms; return cuda_abi::cudaSuccess;
    case cuda_abi::cudaDevAttrComputeCapabilityMajor: *value = c.major; return cuda_abi::cudaSuccess;
    case cuda_abi::cudaDevAttrComputeCapabilityMinor: *value = c.minor; return cuda_abi::cudaSuccess;
    default: return emu::recordError(cuda_abi::cudaErrorInvalidValue);
  }
}

// The whole cudaDeviceProp of the headers the emulator was built against (runtime_structs.h).
static cudaError_t getDeviceProperties(void* prop, int device) {
  if (prop == nullptr) return emu::recordError(cuda_abi::cudaErrorInvalidValue);
  cudaError_t e = queryGate(device);
  if (e != cuda_abi::cudaSuccess) return e;
  emu::Config c = emu::config();
  emu::writeDeviceProp(prop, c.name, c.memoryBytes, c.major, c.minor, c.sms);
  return cuda_abi::cudaSuccess;
}

__attribute__((visibility("default"))) cudaError_t cudaGetDeviceProperties_v2(void* prop, int device) {
  return getDeviceProperties(prop, device);
}

__attribute__((visibility("default"))) cudaError_t cudaGetDeviceProperties(void* prop, int device) {
  return getDeviceProperties(prop, device);
}

__attribute__((visibility("default"))) cudaError_t cudaMemGetInfo(std::size_t* freeBytes, std::size_t* totalBytes) {
  int d;
  if (cudaError_t e = gate(&d)) return e;
  if (freeBytes == nullptr || totalBytes == nullptr) return emu::recordError(cuda_abi::cudaErrorInvalidValue);
  std::size_t total = emu::config().memoryBytes;
  std::size_t used = emu::deviceBytesInUse(d);
  *totalBytes = total;
  *freeBytes = used < total ? total - used : 0;
  return cuda_abi::cudaSuccess;
}

__attribute__((visibility("default"))) cudaError_t cudaMalloc(void** p, std::size_t bytes) {
  int d;
  if (cudaError_t e = gate(&d)) return e;
  if (p == nullptr) return emu::recordError(cuda_abi::cudaErrorInvalidValue);
  return emu::recordError(emu::deviceMalloc(d, p, bytes));
}

__attribute__((visibility("default"))) cudaError_t cudaFree(void* p) {
  int d = emu::currentDevice();
  cudaError_t state = emu::contextState(d);
  if (state != cuda_abi::cudaSuccess && emu::sticky(d) == cuda_abi::cudaSuccess) return emu::recordError(state);
  // On a dead context the memory is still released (the process keeps running), but the call
  // reports the sticky fault like every other call on that device.
  cudaError_t freed = emu::deviceFree(d, p);
  if (state != cuda_abi::cudaSuccess) return emu::recordError(state);
  return emu::recordError(freed);
}

__attribute__((visibility("default"))) cudaError_t cudaHostAlloc(void** p, std::size_t bytes, unsigned flags) {
  int d;
  if (cudaError_t e = gate(&d)) return e;
  if (p == nullptr || flags > 0xf) return emu::recordError(cuda_abi::cudaErrorInvalidValue);
  void* mem = std::malloc(bytes == 0 ? 1 : bytes);
  if (mem == nullptr) return emu::recordError(cuda_abi::cudaErrorMemoryAllocation);
  std::lock_guard<std::mutex> lock(hostMutex);
  hostAllocations.insert(mem);
  *p = mem;
  return cuda_abi::cudaSuccess;
}

__attribute__((visibility("default"))) cudaError_t cudaFreeHost(void* p) {
  if (p == nullptr) return cuda_abi::cudaSuccess;
  std::lock_guard<std::mutex> lock(hostMutex);
  if (hostAllocations.erase(p) == 0) return emu::recordError(cuda_abi::cudaErrorInvalidValue);
  std::free(p);
  return cuda_abi::cudaSuccess;
}

__attribute__((visibility("default"))) cudaError_t cudaMemcpyAsync(void* dst, const void* src, std::size_t bytes, int kind,
                                                                   cudaStream_t stream) {
  int d;
  if (cudaError_t e = gate(&d)) return e;
  if (!emu::streamUsable(stream, d)) return emu::recordError(emu::kErrInvalidResourceHandle);
  bool dstDevice = kind == cuda_abi::cudaMemcpyHostToDevice || kind == cuda_abi::cudaMemcpyDeviceToDevice;
  bool srcDevice = kind == cuda_abi::cudaMemcpyDeviceToHost || kind == cuda_abi::cudaMemcpyDeviceToDevice;
  if (kind < 1 || kind > 3) return emu::recordError(cuda_abi::cudaErrorInvalidValue);
  if (bytes != 0 && (dst == nullptr || src == nullptr)) return emu::recordError(cuda_abi::cudaErrorInvalidValue);
  if ((dstDevice && !deviceRange(d, dst, bytes)) || (srcDevice && !deviceRange(d, src, bytes))) {
    return emu::recordError(cuda_abi::cudaErrorInvalidValue);
  }
  if (emu::Graph* g = emu::capturing(stream)) {
    // Captured: device-to-device copies replay; a copy from or to pageable host memory cannot be captured.
    if (kind != cuda_abi::cudaMemcpyDeviceToDevice) return emu::recordError(emu::kErrStreamCaptureUnsupported);
    g->ops.push_back([dst, src, bytes](const emu::Config& c) { if (!c.noop) std::memmove(dst, src, bytes); });
    return cuda_abi::cudaSuccess;
  }
  // Work runs synchronously at call time; in no-op mode the device does none (device-to-device copies are checked, not done).
  if (bytes != 0 && !(kind == cuda_abi::cudaMemcpyDeviceToDevice && emu::config().noop)) std::memmove(dst, src, bytes);
  return cuda_abi::cudaSuccess;
}

// Rows of `width` bytes, `height` of them, each `spitch` / `dpitch` bytes after the last. Pitches below
// the width are cudaErrorInvalidPitchValue (12); the device side of each end must lie in one live
// allocation (its first byte to its last).
__attribute__((visibility("default"))) cudaError_t cudaMemcpy2DAsync(void* dst, std::size_t dpitch, const void* src, std::size_t spitch,
                                                                     std::size_t width, std::size_t height, int kind, cudaStream_t stream) {
  int d;
  if (cudaError_t e = gate(&d)) return e;
  if (!emu::streamUsable(stream, d)) return emu::recordError(emu::kErrInvalidResourceHandle);
  if (kind < 1 || kind > 3) return emu::recordError(cuda_abi::cudaErrorInvalidValue);
  if (width > dpitch || width > spitch) return emu::recordError(emu::kErrInvalidPitchValue);
  if (width == 0 || height == 0) return cuda_abi::cudaSuccess;
  if (dst == nullptr || src == nullptr) return emu::recordError(cuda_abi::cudaErrorInvalidValue);
  bool dstDevice = kind == cuda_abi::cudaMemcpyHostToDevice || kind == cuda_abi::cudaMemcpyDeviceToDevice;
  bool srcDevice = kind == cuda_abi::cudaMemcpyDeviceToHost || kind == cuda_abi::cudaMemcpyDeviceToDevice;
  if ((dstDevice && !deviceRange(d, dst, (height - 1) * dpitch + width)) || (srcDevice && !deviceRange(d, src, (height - 1) * spitch + width))) {
    return emu::recordError(cuda_abi::cudaErrorInvalidValue);
  }
  auto copy = [dst, dpitch, src, spitch, width, height, kind](const emu::Config& c) {
    if (kind == cuda_abi::cudaMemcpyDeviceToDevice && c.noop) return;  // no-op mode: the device does no work
    for (std::size_t i = 0; i < height; i++) {
      std::memmove(static_cast<char*>(dst) + i * dpitch, static_cast<const char*>(src) + i * spitch, width);
    }
  };
  if (emu::Graph* g = emu::capturing(stream)) {
    if (kind != cuda_abi::cudaMemcpyDeviceToDevice) return emu::recordError(emu::kErrStreamCaptureUnsupported);
    g->ops.push_back(copy);
    return cuda_abi::cudaSuccess;
  }
  copy(emu::config());
  return cuda_abi::cudaSuccess;
}

__attribute__((visibility("default"))) cudaError_t cudaMemsetAsync(void* dst, int value, std::size_t bytes, cudaStream_t stream) {
  int d;
  if (cudaError_t e = gate(&d)) return e;
  if (!emu::streamUsable(stream, d)) return emu::recordError(emu::kErrInvalidResourceHandle);
  if (!deviceRange(d, dst, bytes)) return emu::recordError(cuda_abi::cudaErrorInvalidValue);
  if (emu::Graph* g = emu::capturing(stream)) {
    g->ops.push_back([dst, value, bytes](const emu::Config& c) { if (!c.noop) std::memset(dst, value, bytes); });
    return cuda_abi::cudaSuccess;
  }
  if (bytes != 0 && !emu::config().noop) std::memset(dst, value, bytes);
  return cuda_abi::cudaSuccess;
}

__attribute__((visibility("default"))) cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned flags) {
  int d;
  if (cudaError_t e = gate(&d)) return e;
  if (stream == nullptr || flags > cuda_abi::cudaStreamNonBlocking) return emu::recordError(cuda_abi::cudaErrorInvalidValue);
  *stream = emu::createStream(d);
  return cuda_abi::cudaSuccess;
}

__attribute__((visibility("default"))) cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  int d;
  cudaError_t e = gate(&d);
  // Like cudaFree: the handle is released even on a dead context, which is still reported.
  bool ok = emu::destroyStream(stream);
  if (e != cuda_abi::cudaSuccess) return e;
  return ok ? cuda_abi::cudaSuccess : emu::recordError(emu::kErrInvalidResourceHandle);
}

// CUDA 12.8+: the device of a stream (the addon resolves it optionally).
__attribute__((visibility("default"))) cudaError_t cudaStreamGetDevice(cudaStream_t stream, int* device) {
  int d;
  if (cudaError_t e = gate(&d)) return e;
  if (device == nullptr) return emu::recordError(cuda_abi::cudaErrorInvalidValue);
  const int owner = emu::streamDevice(stream);
  if (owner < 0) return emu::recordError(emu::kErrInvalidResourceHandle);
  *device = owner;
  return cuda_abi::cudaSuccess;
}

__attribute__((visibility("default"))) cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  int d;
  if (cudaError_t e = gate(&d)) return e;
  if (emu::capturing(stream) != nullptr) return emu::recordError(emu::kErrStreamCaptureUnsupported);
  return emu::streamUsable(stream, d) ? cuda_abi::cudaSuccess : emu::recordError(emu::kErrInvalidResourceHandle);
}

// Writes the whole struct of the headers in use (88 bytes with CUDA 13), as the real runtime does.
__attribute__((visibility("default"))) cudaError_t cudaPointerGetAttributes(void* attr, const void* p) {
  if (attr == nullptr) return emu::recordError(cuda_abi::cudaErrorInvalidValue);
  emu::Allocation al;
  const bool device = p != nullptr && emu::findAnyAllocation(p, &al);
  // cudaMemoryTypeDevice, or cudaMemoryTypeUnregistered with device -2 as the runtime reports.
  if (!emu::writePointerAttributes(attr, device ? cuda_abi::cudaMemoryTypeDevice : 0, device ? al.device : -2, device ? const_cast<void*>(p) : nullptr)) {
    emu::logViolation("cudaPointerGetAttributes: the caller's struct has non-zero reserved bytes (is it smaller than the " +
                      std::to_string(emu::pointerAttributesBytes()) + "-byte cudaPointerAttributes?)");
    return emu::recordError(cuda_abi::cudaErrorInvalidValue);
  }
  return cuda_abi::cudaSuccess;
}

__attribute__((visibility("default"))) cudaError_t cudaEventCreate(cudaEvent_t* event) {
  int d;
  if (cudaError_t e = gate(&d)) return e;
  if (event == nullptr) return emu::recordError(cuda_abi::cudaErrorInvalidValue);
  *event = emu::createEvent(d);
  return cuda_abi::cudaSuccess;
}

__attribute__((visibility("default"))) cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  int d;
  if (cudaError_t e = gate(&d)) return e;
  if (!emu::streamUsable(stream, d)) return emu::recordError(emu::kErrInvalidResourceHandle);
  if (emu::capturing(stream) != nullptr) return emu::recordError(emu::kErrStreamCaptureUnsupported);  // event nodes: not emulated
  return emu::recordEvent(event, d) ? cuda_abi::cudaSuccess : emu::recordError(emu::kErrInvalidResourceHandle);
}

__attribute__((visibility("default"))) cudaError_t cudaEventSynchronize(cudaEvent_t event) {
  int d;
  if (cudaError_t e = gate(&d)) return e;
  return emu::eventKnown(event) ? cuda_abi::cudaSuccess : emu::recordError(emu::kErrInvalidResourceHandle);
}

__attribute__((visibility("default"))) cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  int d;
  if (cudaError_t e = gate(&d)) return e;
  if (ms == nullptr) return emu::recordError(cuda_abi::cudaErrorInvalidValue);
  return emu::eventElapsedMs(start, end, ms) ? cuda_abi::cudaSuccess : emu::recordError(emu::kErrInvalidResourceHandle);
}

__attribute__((visibility("default"))) cudaError_t cudaEventDestroy(cudaEvent_t event) {
  int d;
  cudaError_t e = gate(&d);
  bool ok = emu::destroyEvent(event);
  if (e != cuda_abi::cudaSuccess) return e;
  return ok ? cuda_abi::cudaSuccess : emu::recordError(emu::kErrInvalidResourceHandle);
}

// Stream capture and graphs: the work issued on a capturing stream is recorded, not run;
// an instantiated graph replays it in order on the device of the capture.
__attribute__((visibility("default"))) cudaError_t cudaStreamBeginCapture(cudaStream_t stream, int mode) {
  int d;
  if (cudaError_t e = gate(&d)) return e;
  if (reinterpret_cast<std::uintptr_t>(stream) <= 2 || !emu::streamUsable(stream, d)) return emu::recordError(emu::kErrStreamCaptureUnsupported);
  if (mode < 0 || mode > 2) return emu::recordError(cuda_abi::cudaErrorInvalidValue);
  return emu::beginCapture(stream, d) ? cuda_abi::cudaSuccess : emu::recordError(emu::kErrIllegalState);
}

__attribute__((visibility("default"))) cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
  if (graph == nullptr) return emu::recordError(cuda_abi::cudaErrorInvalidValue);
  emu::Graph* g = emu::endCapture(stream);
  if (g == nullptr) return emu::recordError(emu::kErrIllegalState);
  *graph = g;
  return cuda_abi::cudaSuccess;
}

__attribute__((visibility("default"))) cudaError_t cudaGraphInstantiateWithFlags(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long flags) {
  int d;
  if (cudaError_t e = gate(&d)) return e;
  if (exec == nullptr || graph == nullptr || flags != 0) return emu::recordError(cuda_abi::cudaErrorInvalidValue);
  *exec = new emu::Graph(*static_cast<emu::Graph*>(graph));
  return cuda_abi::cudaSuccess;
}

__attribute__((visibility("default"))) cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
  int d;
  if (cudaError_t e = gate(&d)) return e;
  auto* g = static_cast<emu::Graph*>(exec);
  if (g == nullptr || !emu::streamUsable(stream, d) || g->device != d) return emu::recordError(emu::kErrInvalidResourceHandle);
  if (emu::capturing(stream) != nullptr) return emu::recordError(emu::kErrStreamCaptureUnsupported);
  const emu::Config c = emu::config();  // once per replay
  for (auto& op : g->ops) {
    if (emu::sticky(d) != cuda_abi::cudaSuccess) break;  // a fault ends the rest of the graph's work
    op(c);
  }
  return cuda_abi::cudaSuccess;
}

__attribute__((visibility("default"))) cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  delete static_cast<emu::Graph*>(exec);
  return cuda_abi::cudaSuccess;
}

__attribute__((visibility("default"))) cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  delete static_cast<emu::Graph*>(graph);
  return cuda_abi::cudaSuccess;
}

}  // extern "C"

// Every function of the addon's table exists here with exactly the signature it resolves.
namespace cuda_abi {
#define EMU_CHECK_SIGNATURE(member, symbol, signature) \
  static_assert(std::is_same_v<decltype(&::cuda##member), signature>, symbol " signature");
CUDA_ABI_FUNCTIONS(EMU_CHECK_SIGNATURE)
#undef EMU_CHECK_SIGNATURE
static_assert(std::is_same_v<decltype(&::cudaGetDeviceProperties_v2), GetDevicePropertiesFn>);
static_assert(std::is_same_v<decltype(&::cudaGetDeviceProperties), GetDevicePropertiesFn>);
static_assert(std::is_same_v<decltype(&::cudaStreamGetDevice), StreamGetDeviceFn>);
}  // namespace cuda_abi

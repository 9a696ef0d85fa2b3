#include "device_context.h"

namespace fmla {

using namespace cuda_abi;

void DeviceContext::check(int err, const char* what) const {
  if (err != cudaSuccess) throw NativeError("E_CUDA", std::string(what) + " failed: " + cuda().describe(err), err);
}

void DeviceContext::activate() { check(cuda().SetDevice(device_), "cudaSetDevice"); }

void DeviceContext::createStream() {
  if (stream_ != nullptr) return;
  check(cuda().StreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
}

void DeviceContext::sync() { check(cuda().StreamSynchronize(stream_), "cudaStreamSynchronize"); }

std::pair<uint64_t, void*> DeviceContext::allocate(std::size_t bytes) {
  void* p = nullptr;
  const int err = cuda().Malloc(&p, bytes == 0 ? 1 : bytes);
  if (err != cudaSuccess) {
    cuda().GetLastError();  // cudaMalloc failures are not sticky; do not leave them for a launcher
    throw NativeError("E_CUDA", "cudaMalloc(" + std::to_string(bytes) + " bytes) failed: " + cuda().describe(err), err);
  }
  const uint64_t id = nextId_++;
  owned_.emplace(id, p);
  return {id, p};
}

void DeviceContext::free(uint64_t id) {
  auto it = owned_.find(id);
  if (it == owned_.end()) return;
  cuda().Free(it->second);
  owned_.erase(it);
}

void* DeviceContext::pointer(uint64_t id) const {
  auto it = owned_.find(id);
  return it == owned_.end() ? nullptr : it->second;
}

SchedSlot& DeviceContext::slot(uint64_t id) { return slots_[id]; }

void DeviceContext::freeSlot(uint64_t id) {
  auto it = slots_.find(id);
  if (it == slots_.end()) return;
  free(it->second.metadataId);
  free(it->second.numSplitsId);
  slots_.erase(it);
}

void* DeviceContext::scratch(std::size_t bytes) {
  if (bytes <= scratchBytes_ && scratch_ != nullptr) return scratch_;
  if (scratch_ != nullptr) {
    cuda().Free(scratch_);
    scratch_ = nullptr;
    scratchBytes_ = 0;
  }
  const int err = cuda().Malloc(&scratch_, bytes == 0 ? 1 : bytes);
  if (err != cudaSuccess) {
    cuda().GetLastError();
    scratch_ = nullptr;
    throw NativeError("E_CUDA", "cudaMalloc of a " + std::to_string(bytes) + "-byte workspace failed: " + cuda().describe(err), err);
  }
  scratchBytes_ = bytes;
  return scratch_;
}

void DeviceContext::release() {
  if (lib_ == nullptr) return;
  if (stream_ != nullptr || !owned_.empty() || scratch_ != nullptr) cuda().SetDevice(device_);
  if (stream_ != nullptr) cuda().StreamSynchronize(stream_);
  for (auto& [id, p] : owned_) cuda().Free(p);
  owned_.clear();
  slots_.clear();
  if (scratch_ != nullptr) cuda().Free(scratch_);
  scratch_ = nullptr;
  scratchBytes_ = 0;
  if (stream_ != nullptr) cuda().StreamDestroy(stream_);
  stream_ = nullptr;
}

}  // namespace fmla

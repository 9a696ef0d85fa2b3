#include "device_context.h"

namespace fmla {

using namespace cuda_abi;

namespace {

// Size classes of the pool: multiples of 512 bytes up to 64 KiB, then of an eighth of the
// power of two below the size (at most 12.5% more than asked), so that repeated calls of one shape
// hit the same class.
std::size_t sizeClass(std::size_t bytes) {
  if (bytes <= 512) return 512;
  if (bytes <= (64u << 10)) return (bytes + 511) / 512 * 512;
  std::size_t top = 1;
  while (top <= bytes / 2) top <<= 1;
  const std::size_t step = top / 8;
  return (bytes + step - 1) / step * step;
}

}  // namespace

void DeviceContext::check(int err, const char* what) const {
  if (err != cudaSuccess) throw NativeError("E_CUDA", std::string(what) + " failed: " + cuda().describe(err), err);
}

void DeviceContext::activate() { check(cuda().SetDevice(device_), "cudaSetDevice"); }

void DeviceContext::createStream() {
  if (stream_ != nullptr) return;
  check(cuda().StreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
}

void DeviceContext::adoptStream(void* stream) {
  // The stream's device: cudaStreamGetDevice where the runtime has it (CUDA >= 12.8); everywhere,
  // recording an event of this device on it, which the runtime refuses for a stream of another
  // device (or no stream at all).
  if (cuda().StreamGetDevice != nullptr) {
    int device = -1;
    const int err = cuda().StreamGetDevice(stream, &device);
    if (err != cudaSuccess) {
      cuda().GetLastError();
      throw NativeError("E_VALUE", "options.stream is not a CUDA stream this runtime knows (cudaStreamGetDevice: " + cuda().describe(err) + ")");
    }
    if (device != device_) {
      throw NativeError("E_DEVICE", "options.stream is a stream of device " + std::to_string(device) + ", but this FlashMLA instance uses device " +
                                        std::to_string(device_));
    }
  }
  void* probe = nullptr;
  check(cuda().EventCreate(&probe), "cudaEventCreate");
  const int err = cuda().EventRecord(probe, stream);
  cuda().EventDestroy(probe);
  if (err != cudaSuccess) {
    cuda().GetLastError();
    throw NativeError("E_DEVICE", "options.stream cannot take work of device " + std::to_string(device_) +
                                      " (a stream of another device, or not a stream): cudaEventRecord: " + cuda().describe(err));
  }
  stream_ = stream;
  ownStream_ = false;
}

uint64_t DeviceContext::createEvent() {
  void* e = nullptr;
  check(cuda().EventCreate(&e), "cudaEventCreate");
  std::lock_guard<std::mutex> lock(mutex_);
  const uint64_t id = nextId_++;
  events_.emplace(id, e);
  return id;
}

void* DeviceContext::event(uint64_t id) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = events_.find(id);
  return it == events_.end() ? nullptr : it->second;
}

void DeviceContext::destroyEvent(uint64_t id) {
  void* e = nullptr;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = events_.find(id);
    if (it == events_.end()) return;
    e = it->second;
    events_.erase(it);
  }
  cuda().EventDestroy(e);
}

void DeviceContext::sync() {
  if (beforeBlocking) beforeBlocking();
  check(cuda().StreamSynchronize(stream_), "cudaStreamSynchronize");
}

std::pair<uint64_t, void*> DeviceContext::allocate(std::size_t bytes) {
  void* p = nullptr;
  int err = cuda().Malloc(&p, bytes == 0 ? 1 : bytes);
  if (err == cudaErrorMemoryAllocation) {
    cuda().GetLastError();  // cudaMalloc failures are not sticky; do not leave them for a launcher
    {
      std::lock_guard<std::mutex> lock(mutex_);
      trimPool();
    }
    err = cuda().Malloc(&p, bytes == 0 ? 1 : bytes);
  }
  if (err != cudaSuccess) {
    cuda().GetLastError();
    throw NativeError("E_CUDA", "cudaMalloc(" + std::to_string(bytes) + " bytes) failed: " + cuda().describe(err), err);
  }
  std::lock_guard<std::mutex> lock(mutex_);
  const uint64_t id = nextId_++;
  owned_.emplace(id, Owned{p, 0});
  return {id, p};
}

void* DeviceContext::takeBlock(std::size_t cls) {
  auto it = cached_.find(cls);
  if (it != cached_.end() && !it->second.empty()) {
    void* p = it->second.back();
    it->second.pop_back();
    return p;
  }
  void* p = nullptr;
  int err = cuda().Malloc(&p, cls);
  if (err == cudaErrorMemoryAllocation) {
    cuda().GetLastError();
    trimPool();
    err = cuda().Malloc(&p, cls);
  }
  if (err != cudaSuccess) {
    cuda().GetLastError();
    throw NativeError("E_CUDA", "cudaMalloc(" + std::to_string(cls) + " bytes) failed: " + cuda().describe(err), err);
  }
  pooledBytes_ += cls;
  blockClass_[p] = cls;
  return p;
}

// Caller holds the mutex.
void DeviceContext::trimPool() {
  for (auto& [cls, blocks] : cached_) {
    for (void* p : blocks) {
      cuda().Free(p);
      blockClass_.erase(p);
      pooledBytes_ -= cls;
    }
    blocks.clear();
  }
}

std::pair<uint64_t, void*> DeviceContext::allocatePooled(std::size_t bytes) {
  const std::size_t cls = sizeClass(bytes);
  std::lock_guard<std::mutex> lock(mutex_);
  void* p = takeBlock(cls);
  const uint64_t id = nextId_++;
  owned_.emplace(id, Owned{p, cls});
  return {id, p};
}

bool DeviceContext::releasePooled(uint64_t id) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = owned_.find(id);
  if (it == owned_.end()) return true;  // already freed: nothing left to do on any thread
  if (it->second.bytes == 0) return false;
  if (pins_.count(it->second.ptr) != 0) deferred_.emplace(it->second.ptr, it->second.bytes);
  else cached_[it->second.bytes].push_back(it->second.ptr);
  owned_.erase(it);
  return true;
}

void DeviceContext::startPinning() {
  std::lock_guard<std::mutex> lock(mutex_);
  pinning_ = true;
  pinned_.clear();
  capturedSlots_.clear();
}

std::vector<void*> DeviceContext::stopPinning() {
  std::lock_guard<std::mutex> lock(mutex_);
  pinning_ = false;
  for (uint64_t id : capturedSlots_) {
    auto it = slots_.find(id);
    if (it != slots_.end()) it->second.computed = false;
  }
  capturedSlots_.clear();
  std::vector<void*> out;
  out.swap(pinned_);
  return out;
}

void DeviceContext::noteCapturedSlot(uint64_t slot) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (pinning_) capturedSlots_.push_back(slot);
}

void DeviceContext::pin(void* block) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!pinning_ || blockClass_.count(block) == 0) return;
  for (void* p : pinned_) if (p == block) return;
  pins_[block]++;
  pinned_.push_back(block);
}

void DeviceContext::unpin(const std::vector<void*>& blocks) {
  std::lock_guard<std::mutex> lock(mutex_);
  for (void* p : blocks) {
    auto it = pins_.find(p);
    if (it == pins_.end() || --it->second > 0) continue;
    pins_.erase(it);
    auto d = deferred_.find(p);
    if (d != deferred_.end()) {
      cached_[d->second].push_back(p);
      deferred_.erase(d);
    }
  }
}

void DeviceContext::free(uint64_t id) {
  if (releasePooled(id)) return;
  void* p = nullptr;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = owned_.find(id);
    if (it == owned_.end()) return;
    p = it->second.ptr;
    owned_.erase(it);
  }
  cuda().Free(p);
}

void* DeviceContext::pointer(uint64_t id) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = owned_.find(id);
  return it == owned_.end() ? nullptr : it->second.ptr;
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
  if (scratchId_ != 0 && bytes <= scratchBytes_) return pointer(scratchId_);
  if (scratchId_ != 0) releasePooled(scratchId_);
  scratchId_ = 0;
  scratchBytes_ = 0;
  auto [id, p] = allocatePooled(bytes);
  scratchId_ = id;
  scratchBytes_ = bytes;
  return p;
}

std::size_t DeviceContext::pooledBytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return pooledBytes_;
}

void DeviceContext::emptyCache() {
  std::lock_guard<std::mutex> lock(mutex_);
  trimPool();
}

void DeviceContext::release() {
  if (lib_ == nullptr) return;
  std::lock_guard<std::mutex> lock(mutex_);
  if (stream_ != nullptr || !owned_.empty() || pooledBytes_ != 0 || !events_.empty()) cuda().SetDevice(device_);
  if (stream_ != nullptr) cuda().StreamSynchronize(stream_);
  for (auto& [id, o] : owned_) cuda().Free(o.ptr);
  owned_.clear();
  for (auto& [p, cls] : deferred_) cuda().Free(p);
  deferred_.clear();
  pins_.clear();
  trimPool();
  blockClass_.clear();
  pooledBytes_ = 0;
  slots_.clear();
  scratchId_ = 0;
  scratchBytes_ = 0;
  for (auto& [id, e] : events_) cuda().EventDestroy(e);
  events_.clear();
  if (stream_ != nullptr && ownStream_) cuda().StreamDestroy(stream_);
  stream_ = nullptr;
}

}  // namespace fmla

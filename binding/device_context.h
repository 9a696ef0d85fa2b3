// What the worker thread of one FlashMLA instance owns on its device: the stream, the allocations
// made for JavaScript (freed explicitly, on GC, or when the instance is disposed), the sched-meta
// buffers and a grow-only scratch area for per-call workspaces. Touched only on the worker thread.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>

#include "flashmla_library.h"
#include "native_error.h"

namespace fmla {

// docs/flashmla-interface.md#sched-meta-caching: the device-side tile-scheduler output of one FlashMLASchedMeta, computed once.
struct SchedSlot {
  bool computed = false;
  int numSmParts = 0;
  int b = 0;
  uint64_t metadataId = 0;
  uint64_t numSplitsId = 0;
};

class DeviceContext {
 public:
  DeviceContext(std::shared_ptr<LoadedLibrary> lib, int device) : lib_(std::move(lib)), device_(device) {}
  ~DeviceContext() { release(); }
  DeviceContext(const DeviceContext&) = delete;
  DeviceContext& operator=(const DeviceContext&) = delete;

  const CudaApi& cuda() const { return lib_->cuda; }
  const LoadedLibrary& library() const { return *lib_; }
  int device() const { return device_; }
  void* stream() const { return stream_; }

  // cudaSetDevice before every piece of work (the launchers use the current device; FlashMLA #158).
  void activate();
  void createStream();
  void sync();
  void check(int err, const char* what) const;

  // Allocations owned by JavaScript objects, by id (ids are never reused, so a late GC free of a
  // freed or disposed allocation is a no-op instead of a double free).
  std::pair<uint64_t, void*> allocate(std::size_t bytes);
  void free(uint64_t id);
  void* pointer(uint64_t id) const;

  // The slot named `id`, created empty on first use.
  SchedSlot& slot(uint64_t id);
  void freeSlot(uint64_t id);

  // A device area of at least `bytes`, valid until the next call (calls are serialised and each
  // one synchronises before it returns).
  void* scratch(std::size_t bytes);

  // Frees everything and destroys the stream.
  void release();

 private:
  std::shared_ptr<LoadedLibrary> lib_;
  int device_;
  void* stream_ = nullptr;
  uint64_t nextId_ = 1;
  std::unordered_map<uint64_t, void*> owned_;
  std::unordered_map<uint64_t, SchedSlot> slots_;
  void* scratch_ = nullptr;
  std::size_t scratchBytes_ = 0;
};

}  // namespace fmla

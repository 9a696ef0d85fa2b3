// What one FlashMLA instance owns on its device: the stream, the allocations made for JavaScript
// (freed explicitly, on GC, or when the instance is disposed), the sched-meta buffers, and a
// caching, stream-ordered pool for decode outputs, workspaces and sched-meta buffers
// (docs/cuda-path.md#per-call-cost). Used by the instance's worker thread and, for device-resident
// decode calls, by the JavaScript thread: the bookkeeping is behind one mutex, and the CUDA calls
// themselves are thread-safe.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

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
  // For memory that outlives this context and must be freed through the build's runtime (pinned host memory).
  std::shared_ptr<LoadedLibrary> sharedLibrary() const { return lib_; }
  int device() const { return device_; }
  void* stream() const { return stream_; }

  // cudaSetDevice before every piece of work, on whichever thread runs it (the launchers use the
  // current device; FlashMLA #158).
  void activate();
  void createStream();
  // Uses a stream made elsewhere (FlashMLA.open({ stream })) instead: it must belong to this
  // context's device (checked here, E_DEVICE otherwise) and is never destroyed here.
  void adoptStream(void* stream);
  // Waits for the stream. `beforeBlocking` (set by the engine) runs first: the work of the task
  // that waits has been issued by then.
  void sync();
  void check(int err, const char* what) const;
  std::function<void()> beforeBlocking;

  // Allocations owned by JavaScript objects, by id (ids are never reused, so a late GC free of a
  // freed or disposed allocation is a no-op instead of a double free). `allocate` is exact
  // (cudaMalloc); `allocatePooled` takes a block of the pool.
  std::pair<uint64_t, void*> allocate(std::size_t bytes);
  std::pair<uint64_t, void*> allocatePooled(std::size_t bytes);
  // A pooled allocation goes back to the pool at once (stream order makes that safe: whatever is
  // issued later runs after its last use) and returns true; any other id is left alone (false).
  bool releasePooled(uint64_t id);
  // Frees any allocation; an exact one with cudaFree (which waits for the device: worker thread only).
  void free(uint64_t id);
  void* pointer(uint64_t id) const;

  // The slot named `id`, created empty on first use.
  SchedSlot& slot(uint64_t id);
  void freeSlot(uint64_t id);

  // A pooled device area of at least `bytes` for one call's workspace; the previous one goes back
  // to the pool (stream-ordered, like every pooled block).
  void* scratch(std::size_t bytes);

  // Graph capture (docs/cuda-path.md#graphs): while a capture runs, every pool block a captured
  // call uses is pinned to the graph. A pinned block freed by its owner goes back to the pool only
  // once no graph holds it, so a replay never writes into memory handed out again.
  // A sched meta first computed inside a capture is computed by the graph's replays only: once the
  // capture ends, a direct call computes it again into new buffers (the graph keeps its own).
  void startPinning();
  std::vector<void*> stopPinning();
  void noteCapturedSlot(uint64_t slot);
  void pin(void* block);  // no-op unless capturing, or for memory the pool does not own
  void unpin(const std::vector<void*>& blocks);

  // Bytes held by the pool (in use and cached), for tests and the soak.
  std::size_t pooledBytes() const;
  // Frees the pool's cached blocks (those not in use); cudaFree waits for the device, so worker thread only.
  void emptyCache();

  // Events made by record(), by id (ids are never reused).
  uint64_t createEvent();
  void* event(uint64_t id) const;  // null once destroyed
  void destroyEvent(uint64_t id);

  // Frees everything and destroys the stream (unless adopted).
  void release();

 private:
  struct Owned {
    void* ptr;
    std::size_t bytes;  // the pool's size class, 0 for an exact allocation
  };
  void* takeBlock(std::size_t sizeClass);  // mutex held by the caller
  void trimPool();                         // frees the cached blocks (cudaFree waits for the device)

  std::shared_ptr<LoadedLibrary> lib_;
  int device_;
  void* stream_ = nullptr;
  bool ownStream_ = true;
  mutable std::mutex mutex_;
  std::unordered_map<uint64_t, void*> events_;
  uint64_t nextId_ = 1;
  std::unordered_map<uint64_t, Owned> owned_;
  std::unordered_map<uint64_t, SchedSlot> slots_;
  std::unordered_map<std::size_t, std::vector<void*>> cached_;  // free pool blocks by size class
  std::unordered_map<void*, std::size_t> blockClass_;            // every pool block -> its size class
  std::unordered_map<void*, int> pins_;                          // pool block -> graphs holding it
  std::unordered_map<void*, std::size_t> deferred_;              // freed while pinned -> size class
  bool pinning_ = false;
  std::vector<void*> pinned_;                                    // the capture's blocks so far
  std::vector<uint64_t> capturedSlots_;                          // sched metas computed in the capture
  std::size_t pooledBytes_ = 0;
  uint64_t scratchId_ = 0;
  std::size_t scratchBytes_ = 0;
};

}  // namespace fmla

// One FlashMLA instance's native side: a DeviceContext, and a dedicated worker thread that runs in
// order every operation that waits for the device or reads host memory (uploads, downloads,
// host-tensor decodes, synchronisation), off the JavaScript thread (docs/architecture.md#native-addon).
// Each such operation returns a Promise settled on the JavaScript thread through a thread-safe
// function; the JavaScript objects whose memory the work reads or writes are referenced until it
// completes. A decode of device-resident tensors is issued on the calling thread instead
// (docs/cuda-path.md#per-call-cost): kernel launches are asynchronous, so nothing waits for the
// device, and it is issued there only when every earlier queued operation has issued its own stream
// work, so stream order is call order. A sparse prefill follows the same rule: host tensors on the
// worker, device tensors on the calling thread.
#pragma once

#include <napi.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

#include "decode.h"
#include "prefill.h"
#include "device_context.h"
#include "native_error.h"

namespace fmla {

// A unit of work. `execute` runs on the worker thread; `settle` runs on the JavaScript thread and
// builds the resolution value (or the rejection when `failed`).
struct Task {
  std::function<void(DeviceContext&)> execute;
  std::function<Napi::Value(Napi::Env)> settle;
  std::unique_ptr<Napi::Promise::Deferred> deferred;  // null for fire-and-forget work (GC frees)
  std::vector<Napi::Reference<Napi::Value>> keepAlive;
  Napi::ObjectReference engine;  // the engine cannot be collected while its work is pending
  std::optional<NativeError> error;  // why execute failed, when it did
  bool stop = false;  // the last task: release everything, then end the thread
  bool streamWork = false;  // issues work on the stream: later calls wait for it to be issued
};

class Engine : public Napi::ObjectWrap<Engine> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit Engine(const Napi::CallbackInfo& info);
  ~Engine() override;

  struct DeviceFacts {
    int major = 0;
    int minor = 0;
    int sms = 0;
  };

 private:
  Napi::Value Start(const Napi::CallbackInfo& info);
  Napi::Value Malloc(const Napi::CallbackInfo& info);
  Napi::Value Free(const Napi::CallbackInfo& info);
  Napi::Value HostAlloc(const Napi::CallbackInfo& info);
  std::shared_ptr<void> pinnedBlock(const void* p, std::size_t bytes);
  Napi::Value Upload(const Napi::CallbackInfo& info);
  Napi::Value Download(const Napi::CallbackInfo& info);
  Napi::Value PointerInfo(const Napi::CallbackInfo& info);
  Napi::Value NewSchedSlot(const Napi::CallbackInfo& info);
  Napi::Value FreeSchedSlot(const Napi::CallbackInfo& info);
  Napi::Value Decode(const Napi::CallbackInfo& info);
  Napi::Value Prefill(const Napi::CallbackInfo& info);
  Napi::Value Prepare(const Napi::CallbackInfo& info);
  Napi::Value Launch(const Napi::CallbackInfo& info);
  Napi::Value SetMailbox(const Napi::CallbackInfo& info);
  Napi::Value PooledBytes(const Napi::CallbackInfo& info);
  Napi::Value EmptyCache(const Napi::CallbackInfo& info);
  Napi::Value Synchronize(const Napi::CallbackInfo& info);
  Napi::Value RecordEvent(const Napi::CallbackInfo& info);
  Napi::Value SynchronizeEvent(const Napi::CallbackInfo& info);
  Napi::Value DestroyEvent(const Napi::CallbackInfo& info);
  Napi::Value BeginCapture(const Napi::CallbackInfo& info);
  Napi::Value EndCapture(const Napi::CallbackInfo& info);
  Napi::Value LaunchGraph(const Napi::CallbackInfo& info);
  Napi::Value DestroyGraph(const Napi::CallbackInfo& info);
  void destroyGraph(Napi::Env env, uint64_t id);
  Napi::Value Dispose(const Napi::CallbackInfo& info);

  // Queues `task` (with a Promise unless fire-and-forget) and returns the Promise or undefined.
  Napi::Value enqueue(Napi::Env env, std::unique_ptr<Task> task, bool withPromise);
  // Whether the JavaScript thread may issue stream work itself now: no queued task is still to issue its own.
  bool canIssueHere() const { return unissued_.load(std::memory_order_acquire) == 0; }
  Napi::Value queueDecode(Napi::Env env, std::unique_ptr<Task> task, std::shared_ptr<const DecodeRequest> req);
  void run();
  void complete(Napi::Env env, Task* task);
  void stopThread();

  std::unique_ptr<DeviceContext> ctx_;
  std::thread thread_;
  std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::unique_ptr<Task>> queue_;
  Napi::ThreadSafeFunction tsfn_;
  bool tsfnActive_ = false;
  std::shared_ptr<bool> tsfnGone_ = std::make_shared<bool>(false);  // set by the TSFN's finalizer
  struct CapturedGraph {
    void* graph;
    void* exec;
    std::vector<void*> pinned;  // pool blocks its replays use
  };
  std::unordered_map<uint64_t, CapturedGraph> graphs_;  // JavaScript thread only
  uint64_t nextGraph_ = 1;
  Napi::Reference<Napi::Value> mailboxRef_;  // launch()'s exchange (JavaScript thread only)
  uint64_t* mailbox_ = nullptr;
  std::atomic<int> unissued_{0};  // queued stream-work tasks that have not issued their work yet
  // Page-locked blocks made by hostAlloc, by address: base → (bytes, the block). A block is freed when
  // its ArrayBuffer is collected and no upload from it is in flight (each holds a reference), so
  // nothing JavaScript does to the buffer can free memory a copy still reads. JavaScript thread only.
  std::map<uintptr_t, std::pair<std::size_t, std::weak_ptr<void>>> pinned_;
  int pending_ = 0;        // JavaScript thread only
  bool disposed_ = false;  // JavaScript thread only
  uint64_t nextSlot_ = 1;  // JavaScript thread only
  DeviceFacts facts_;      // written by Start on the worker, read by later work on the worker
};

}  // namespace fmla

// One FlashMLA instance's native side: a dedicated worker thread that owns a DeviceContext and runs
// every copy, launch and synchronisation in order, off the JavaScript thread (docs/architecture.md#native-addon). Each
// operation returns a Promise settled on the JavaScript thread through a thread-safe function; the
// JavaScript objects whose memory the work reads or writes are referenced until it completes.
#pragma once

#include <napi.h>

#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>

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
  Napi::Value Upload(const Napi::CallbackInfo& info);
  Napi::Value Download(const Napi::CallbackInfo& info);
  Napi::Value PointerInfo(const Napi::CallbackInfo& info);
  Napi::Value NewSchedSlot(const Napi::CallbackInfo& info);
  Napi::Value FreeSchedSlot(const Napi::CallbackInfo& info);
  Napi::Value Decode(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);

  // Queues `task` (with a Promise unless fire-and-forget) and returns the Promise or undefined.
  Napi::Value enqueue(Napi::Env env, std::unique_ptr<Task> task, bool withPromise);
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
  int pending_ = 0;        // JavaScript thread only
  bool disposed_ = false;  // JavaScript thread only
  uint64_t nextSlot_ = 1;  // JavaScript thread only
  DeviceFacts facts_;      // written by Start on the worker, read by later work on the worker
};

}  // namespace fmla

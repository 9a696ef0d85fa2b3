#include "engine.h"

#include "decode.h"
#include "js_errors.h"
#include "js_values.h"
#include "library_wrap.h"

namespace fmla {

using namespace cuda_abi;

Napi::Function Engine::Define(Napi::Env env) {
  return DefineClass(env, "FlashMlaEngine",
                     {
                         InstanceMethod("start", &Engine::Start),
                         InstanceMethod("malloc", &Engine::Malloc),
                         InstanceMethod("free", &Engine::Free),
                         InstanceMethod("hostAlloc", &Engine::HostAlloc),
                         InstanceMethod("upload", &Engine::Upload),
                         InstanceMethod("download", &Engine::Download),
                         InstanceMethod("pointerInfo", &Engine::PointerInfo),
                         InstanceMethod("newSchedSlot", &Engine::NewSchedSlot),
                         InstanceMethod("freeSchedSlot", &Engine::FreeSchedSlot),
                         InstanceMethod("decode", &Engine::Decode),
                         InstanceMethod("prefill", &Engine::Prefill),
                         InstanceMethod("prepare", &Engine::Prepare),
                         InstanceMethod("launch", &Engine::Launch),
                         InstanceMethod("setMailbox", &Engine::SetMailbox),
                         InstanceMethod("pooledBytes", &Engine::PooledBytes),
                         InstanceMethod("emptyCache", &Engine::EmptyCache),
                         InstanceMethod("synchronize", &Engine::Synchronize),
                         InstanceMethod("recordEvent", &Engine::RecordEvent),
                         InstanceMethod("synchronizeEvent", &Engine::SynchronizeEvent),
                         InstanceMethod("destroyEvent", &Engine::DestroyEvent),
                         InstanceMethod("beginCapture", &Engine::BeginCapture),
                         InstanceMethod("endCapture", &Engine::EndCapture),
                         InstanceMethod("launchGraph", &Engine::LaunchGraph),
                         InstanceMethod("destroyGraph", &Engine::DestroyGraph),
                         InstanceMethod("dispose", &Engine::Dispose),
                     });
}

// new Engine(library, device)
Engine::Engine(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Engine>(info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsNumber()) {
    throwError(env, "E_INTERNAL", "Engine(library, device)");
  }
  LibraryWrap* lib = LibraryWrap::Unwrap(info[0].As<Napi::Object>());
  ctx_ = std::make_unique<DeviceContext>(lib->library(), info[1].As<Napi::Number>().Int32Value());
  // The finalizer tells us when Node itself has closed the thread-safe function (environment
  // teardown), after which releasing it would touch freed memory.
  auto gone = tsfnGone_;
  tsfn_ = Napi::ThreadSafeFunction::New(env, Napi::Function::New(env, [](const Napi::CallbackInfo&) {}),
                                        "flashmla-node engine", 0, 1, [gone](Napi::Env) { *gone = true; });
  tsfn_.Unref(env);  // an idle engine does not keep the process alive
  tsfnActive_ = true;
  thread_ = std::thread([this] { run(); });
}

Engine::~Engine() {
  // Reached only with no work pending (pending tasks reference this object), e.g. on GC of an
  // instance that was never disposed: free its memory and end its thread.
  stopThread();
}

void Engine::stopThread() {
  if (thread_.joinable()) {
    auto task = std::make_unique<Task>();
    task->stop = true;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      queue_.push_back(std::move(task));
    }
    cv_.notify_one();
    thread_.join();
  }
  if (tsfnActive_ && !*tsfnGone_) tsfn_.Release();
  tsfnActive_ = false;
}

void Engine::run() {
  for (;;) {
    std::unique_ptr<Task> task;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      cv_.wait(lock, [this] { return !queue_.empty(); });
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    const bool stop = task->stop;
    // The task's stream work is issued once it starts to wait (or ends): from then on the
    // JavaScript thread may issue later work itself (canIssueHere).
    bool counted = task->streamWork;
    auto issued = [this, &counted] {
      if (counted) unissued_.fetch_sub(1, std::memory_order_release);
      counted = false;
    };
    ctx_->beforeBlocking = issued;
    try {
      if (stop) {
        ctx_->release();
      } else {
        ctx_->activate();
        task->execute(*ctx_);
      }
    } catch (const NativeError& e) {
      task->error = e;
    } catch (const std::exception& e) {
      task->error.emplace("E_INTERNAL", e.what());
    }
    issued();
    ctx_->beforeBlocking = nullptr;
    if (task->deferred != nullptr || !task->keepAlive.empty() || !task->engine.IsEmpty()) {
      // When the call fails, the environment is going away: nothing can be settled, and the task's
      // references belong to that environment (deleting them here, off its thread, is not
      // allowed), so the released task is left to go with it.
      tsfn_.BlockingCall(task.release(), [this](Napi::Env env, Napi::Function, Task* t) { complete(env, t); });
    }
    if (stop) return;
  }
}

// Settles a task's Promise on the JavaScript thread. While the environment shuts down
// (worker.terminate(), process.exit() in a worker) N-API calls fail, node-addon-api throws them as
// Napi::Error, and an exception leaving a thread-safe-function callback aborts the whole process:
// nothing can be settled then, so such failures are dropped and the bookkeeping still runs.
void Engine::complete(Napi::Env env, Task* raw) {
  std::unique_ptr<Task> task(raw);
  try {
    Napi::HandleScope scope(env);
    if (task->deferred != nullptr) {
      if (task->error) {
        task->deferred->Reject(makeError(env, *task->error).Value());
      } else {
        Napi::Value v = task->settle ? task->settle(env) : env.Undefined();
        task->deferred->Resolve(v);
      }
    }
  } catch (const std::exception&) {  // Napi::Error included (NAPI_CPP_EXCEPTIONS)
  }
  try {
    if (--pending_ == 0 && tsfnActive_ && !*tsfnGone_) tsfn_.Unref(env);
  } catch (const Napi::Error&) {
  }
  if (task->stop) {
    if (thread_.joinable()) thread_.join();
    if (tsfnActive_ && !*tsfnGone_) tsfn_.Release();
    tsfnActive_ = false;
  }
}

Napi::Value Engine::enqueue(Napi::Env env, std::unique_ptr<Task> task, bool withPromise) {
  Napi::Value result = env.Undefined();
  if (withPromise) {
    task->deferred = std::make_unique<Napi::Promise::Deferred>(env);
    result = task->deferred->Promise();
  }
  if (disposed_) {
    if (withPromise) {
      task->deferred->Reject(makeError(env, "E_DISPOSED", "this FlashMLA instance was disposed").Value());
    }
    return result;
  }
  task->engine = Napi::Persistent(Value());
  if (pending_++ == 0) tsfn_.Ref(env);
  if (task->streamWork) unissued_.fetch_add(1, std::memory_order_relaxed);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.push_back(std::move(task));
  }
  cv_.notify_one();
  return result;
}

static Napi::Value rejectNow(Napi::Env env, const NativeError& e) {
  auto d = Napi::Promise::Deferred::New(env);
  d.Reject(makeError(env, e).Value());
  return d.Promise();
}

// start(stream?) → { major, minor, sms, freeMemory, totalMemory, stream }: select the device, make
// the stream (or adopt the caller's, a bigint cudaStream_t), and read the facts the host layer
// needs (docs/flashmla-interface.md#host-helpers Arch).
Napi::Value Engine::Start(const Napi::CallbackInfo& info) {
  bool adopt = false;
  uint64_t given = 0;
  try {
    if (info.Length() > 0 && !info[0].IsUndefined()) {
      given = address(info[0], "options.stream");
      adopt = true;
    }
  } catch (const NativeError& e) {
    return rejectNow(info.Env(), e);
  }
  auto task = std::make_unique<Task>();
  auto out = std::make_shared<std::tuple<int, int, int, std::size_t, std::size_t, uint64_t>>();
  task->execute = [this, out, adopt, given](DeviceContext& ctx) {
    const CudaApi& cuda = ctx.cuda();
    int count = 0;
    ctx.check(cuda.GetDeviceCount(&count), "cudaGetDeviceCount");
    if (ctx.device() < 0 || ctx.device() >= count) {
      throw NativeError("E_BACKEND", "device " + std::to_string(ctx.device()) + " does not exist (" +
                                         std::to_string(count) + " CUDA device(s))");
    }
    auto& [major, minor, sms, freeBytes, totalBytes, stream] = *out;
    ctx.check(cuda.DeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, ctx.device()), "cudaDeviceGetAttribute");
    ctx.check(cuda.DeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, ctx.device()), "cudaDeviceGetAttribute");
    ctx.check(cuda.DeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, ctx.device()), "cudaDeviceGetAttribute");
    if (adopt) ctx.adoptStream(reinterpret_cast<void*>(given));
    else ctx.createStream();
    stream = reinterpret_cast<uintptr_t>(ctx.stream());
    ctx.check(cuda.MemGetInfo(&freeBytes, &totalBytes), "cudaMemGetInfo");
    facts_ = {major, minor, sms};
  };
  task->settle = [out](Napi::Env env) {
    auto& [major, minor, sms, freeBytes, totalBytes, stream] = *out;
    Napi::Object o = Napi::Object::New(env);
    o.Set("major", major);
    o.Set("minor", minor);
    o.Set("sms", sms);
    o.Set("freeMemory", static_cast<double>(freeBytes));
    o.Set("totalMemory", static_cast<double>(totalBytes));
    o.Set("stream", Napi::BigInt::New(env, stream));
    return o;
  };
  return enqueue(info.Env(), std::move(task), true);
}

// synchronize(): resolves once the stream has completed everything issued before the call (the
// wait is on the worker thread).
Napi::Value Engine::Synchronize(const Napi::CallbackInfo& info) {
  auto task = std::make_unique<Task>();
  task->execute = [](DeviceContext& ctx) { ctx.sync(); };
  return enqueue(info.Env(), std::move(task), true);
}

// recordEvent() → id: an event recorded on the stream after everything issued so far; on this
// thread when nothing queued is still to issue its work, else behind it.
Napi::Value Engine::RecordEvent(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (disposed_) throwError(env, "E_DISPOSED", "this FlashMLA instance was disposed");
  uint64_t id = 0;
  try {
    ctx_->activate();
    id = ctx_->createEvent();
    if (canIssueHere()) {
      ctx_->check(ctx_->cuda().EventRecord(ctx_->event(id), ctx_->stream()), "cudaEventRecord");
      return Napi::Number::New(env, static_cast<double>(id));
    }
  } catch (const NativeError& e) {
    if (id != 0) ctx_->destroyEvent(id);
    throw makeError(env, e);
  }
  auto task = std::make_unique<Task>();
  task->streamWork = true;
  task->execute = [id](DeviceContext& ctx) { ctx.check(ctx.cuda().EventRecord(ctx.event(id), ctx.stream()), "cudaEventRecord"); };
  enqueue(env, std::move(task), false);
  return Napi::Number::New(env, static_cast<double>(id));
}

// synchronizeEvent(id): resolves once the event has completed (the wait is on the worker thread).
Napi::Value Engine::SynchronizeEvent(const Napi::CallbackInfo& info) {
  const uint64_t id = static_cast<uint64_t>(info[0].As<Napi::Number>().DoubleValue());
  auto task = std::make_unique<Task>();
  task->execute = [id](DeviceContext& ctx) {
    void* e = ctx.event(id);
    if (e == nullptr) throw NativeError("E_DISPOSED", "the event was disposed");
    ctx.check(ctx.cuda().EventSynchronize(e), "cudaEventSynchronize");
  };
  return enqueue(info.Env(), std::move(task), true);
}

// destroyEvent(id): behind every queued wait on it; no Promise (FinalizationRegistry).
Napi::Value Engine::DestroyEvent(const Napi::CallbackInfo& info) {
  const uint64_t id = static_cast<uint64_t>(info[0].As<Napi::Number>().DoubleValue());
  auto task = std::make_unique<Task>();
  task->execute = [id](DeviceContext& ctx) { ctx.destroyEvent(id); };
  return enqueue(info.Env(), std::move(task), false);
}

static Napi::Object allocation(Napi::Env env, uint64_t id, void* p) {
  Napi::Object o = Napi::Object::New(env);
  o.Set("id", static_cast<double>(id));
  o.Set("address", Napi::BigInt::New(env, static_cast<uint64_t>(reinterpret_cast<uintptr_t>(p))));
  return o;
}

// malloc(bytes) → { id, address }
Napi::Value Engine::Malloc(const Napi::CallbackInfo& info) {
  const double bytes = info[0].As<Napi::Number>().DoubleValue();
  auto task = std::make_unique<Task>();
  auto out = std::make_shared<std::pair<uint64_t, void*>>();
  task->execute = [bytes, out](DeviceContext& ctx) { *out = ctx.allocate(static_cast<std::size_t>(bytes)); };
  task->settle = [out](Napi::Env env) -> Napi::Value { return allocation(env, out->first, out->second); };
  return enqueue(info.Env(), std::move(task), true);
}

// free(id): a pooled block goes back to the pool at once (stream-ordered reuse); other memory is
// freed behind all earlier work (cudaFree waits for the device, so on the worker). No Promise, so it
// can run from a FinalizationRegistry callback.
Napi::Value Engine::Free(const Napi::CallbackInfo& info) {
  const uint64_t id = static_cast<uint64_t>(info[0].As<Napi::Number>().DoubleValue());
  if (!disposed_ && ctx_->releasePooled(id)) return info.Env().Undefined();
  auto task = std::make_unique<Task>();
  task->execute = [id](DeviceContext& ctx) { ctx.free(id); };
  return enqueue(info.Env(), std::move(task), false);
}

static std::pair<void*, std::size_t> bytesOf(const Napi::Value& v) {
  if (!v.IsTypedArray()) throw NativeError("E_INTERNAL", "expected a typed array");
  Napi::TypedArray t = v.As<Napi::TypedArray>();
  auto* base = static_cast<uint8_t*>(t.ArrayBuffer().Data());
  return {base + t.ByteOffset(), t.ByteLength()};
}

// hostAlloc(bytes): page-locked host memory from the build's own runtime (cudaHostAlloc, portable),
// as an ArrayBuffer. The block is freed with cudaFreeHost once the ArrayBuffer is collected and no
// upload from it is in flight; the block holds the library, so the runtime that owns the memory
// stays loaded until then (docs/cuda-path.md#pinned).
Napi::Value Engine::HostAlloc(const Napi::CallbackInfo& info) {
  const auto bytes = static_cast<std::size_t>(info[0].As<Napi::Number>().DoubleValue());
  auto task = std::make_unique<Task>();
  auto out = std::make_shared<void*>(nullptr);
  task->execute = [bytes, out](DeviceContext& ctx) {
    ctx.check(ctx.cuda().HostAlloc(out.get(), bytes, cudaHostAllocPortable), "cudaHostAlloc");
  };
  task->settle = [this, bytes, out, lib = ctx_->sharedLibrary()](Napi::Env env) -> Napi::Value {
    auto block = std::make_shared<std::shared_ptr<void>>(*out, [lib](void* p) { lib->cuda.FreeHost(p); });
    const auto base = reinterpret_cast<uintptr_t>(*out);
    pinned_[base] = {bytes, *block};
    // The ArrayBuffer's reference; the finalizer drops it (and the registry entry once it has expired).
    return Napi::ArrayBuffer::New(
        env, *out, bytes, [](Napi::Env, void*, std::shared_ptr<void>* ref) { delete ref; }, new std::shared_ptr<void>(*block));
  };
  return enqueue(info.Env(), std::move(task), true);
}

// The page-locked block of this engine's that holds [p, p + bytes), or null.
std::shared_ptr<void> Engine::pinnedBlock(const void* p, std::size_t bytes) {
  for (auto it = pinned_.begin(); it != pinned_.end();) {
    if (it->second.second.expired()) it = pinned_.erase(it);
    else ++it;
  }
  const auto at = reinterpret_cast<uintptr_t>(p);
  auto it = pinned_.upper_bound(at);
  if (it == pinned_.begin()) return nullptr;
  --it;
  if (at + bytes > it->first + it->second.first) return nullptr;
  return it->second.second.lock();
}

// upload(address, typedArray): the whole typed array to `address`.
Napi::Value Engine::Upload(const Napi::CallbackInfo& info) {
  try {
    const uint64_t dst = address(info[0], "address");
    auto [src, bytes] = bytesOf(info[1]);
    auto task = std::make_unique<Task>();
    task->keepAlive.push_back(Napi::Persistent(info[1]));
    task->streamWork = true;
    // upload(address, data, true): `data` lies in a page-locked block of this engine's; the task holds
    // the block until the copy is done, whatever JavaScript does with the ArrayBuffer meanwhile.
    std::shared_ptr<void> block;
    if (info[2].IsBoolean() && info[2].As<Napi::Boolean>().Value()) {
      block = pinnedBlock(src, bytes);
      if (!block) throw NativeError("E_INTERNAL", "upload: the data is not in page-locked memory of this instance");
    }
    task->execute = [dst, src = src, bytes = bytes, block](DeviceContext& ctx) {
      ctx.check(ctx.cuda().MemcpyAsync(reinterpret_cast<void*>(dst), src, bytes, cudaMemcpyHostToDevice, ctx.stream()),
                "cudaMemcpyAsync (upload)");
      ctx.sync();
    };
    return enqueue(info.Env(), std::move(task), true);
  } catch (const NativeError& e) {
    return rejectNow(info.Env(), e);
  }
}

// download(address, typedArray): fills the whole typed array from `address`.
Napi::Value Engine::Download(const Napi::CallbackInfo& info) {
  try {
    const uint64_t src = address(info[0], "address");
    auto [dst, bytes] = bytesOf(info[1]);
    auto task = std::make_unique<Task>();
    task->keepAlive.push_back(Napi::Persistent(info[1]));
    task->streamWork = true;
    task->execute = [src, dst = dst, bytes = bytes](DeviceContext& ctx) {
      ctx.check(ctx.cuda().MemcpyAsync(dst, reinterpret_cast<const void*>(src), bytes, cudaMemcpyDeviceToHost, ctx.stream()),
                "cudaMemcpyAsync (download)");
      ctx.sync();
    };
    return enqueue(info.Env(), std::move(task), true);
  } catch (const NativeError& e) {
    return rejectNow(info.Env(), e);
  }
}

// pointerInfo(address) → { type, device } (cudaPointerGetAttributes; type 2 = device memory).
Napi::Value Engine::PointerInfo(const Napi::CallbackInfo& info) {
  try {
    const uint64_t p = address(info[0], "address");
    auto task = std::make_unique<Task>();
    auto out = std::make_shared<PointerAttributesPrefix>();
    task->execute = [p, out](DeviceContext& ctx) {
      PointerAttributesBuffer attributes;  // zeroed, larger than any runtime's struct
      const int err = ctx.cuda().PointerGetAttributes(attributes.bytes, reinterpret_cast<const void*>(p));
      *out = attributes.prefix();
      if (err != cudaSuccess) {
        ctx.cuda().GetLastError();  // an unregistered host pointer reports an error on old runtimes
        out->type = 0;
        out->device = -1;
      }
    };
    task->settle = [out](Napi::Env env) -> Napi::Value {
      Napi::Object o = Napi::Object::New(env);
      o.Set("type", out->type);
      o.Set("device", out->device);
      return o;
    };
    return enqueue(info.Env(), std::move(task), true);
  } catch (const NativeError& e) {
    return rejectNow(info.Env(), e);
  }
}

// newSchedSlot() → id. Ids are handed out here, on the JavaScript thread; the worker creates the
// slot's buffers when the first decode that names it runs (docs/flashmla-interface.md#sched-meta-caching).
Napi::Value Engine::NewSchedSlot(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(nextSlot_++));
}

// freeSchedSlot(id): at once when no queued work can still be using the slot, else behind it.
Napi::Value Engine::FreeSchedSlot(const Napi::CallbackInfo& info) {
  const uint64_t id = static_cast<uint64_t>(info[0].As<Napi::Number>().DoubleValue());
  if (disposed_) return info.Env().Undefined();
  if (canIssueHere()) {
    ctx_->freeSlot(id);
    return info.Env().Undefined();
  }
  auto task = std::make_unique<Task>();
  task->streamWork = true;
  task->execute = [id](DeviceContext& ctx) { ctx.freeSlot(id); };
  return enqueue(info.Env(), std::move(task), false);
}

// A decode on the worker thread; its Promise resolves with
// { schedMetaRan, out?: {id, address}, lse?: {id, address} } (out/lse: pooled outputs it allocated).
Napi::Value Engine::queueDecode(Napi::Env env, std::unique_ptr<Task> task, std::shared_ptr<const DecodeRequest> req) {
  auto outcome = std::make_shared<DecodeOutcome>();
  task->streamWork = true;
  task->execute = [this, req, outcome](DeviceContext& ctx) { *outcome = runDecode(ctx, facts_.major, facts_.minor, *req); };
  task->settle = [outcome](Napi::Env env) -> Napi::Value {
    Napi::Object o = Napi::Object::New(env);
    o.Set("schedMetaRan", outcome->schedMetaRan);
    if (outcome->outId != 0) o.Set("out", allocation(env, outcome->outId, outcome->outPtr));
    if (outcome->lseId != 0) o.Set("lse", allocation(env, outcome->lseId, outcome->lsePtr));
    return o;
  };
  return enqueue(env, std::move(task), true);
}

// decode(request): any decode (host operands and host outputs included), on the worker thread.
Napi::Value Engine::Decode(const Napi::CallbackInfo& info) {
  try {
    auto task = std::make_unique<Task>();
    auto req = std::make_shared<const DecodeRequest>(parseDecodeRequest(info[0].As<Napi::Object>(), task->keepAlive));
    return queueDecode(info.Env(), std::move(task), std::move(req));
  } catch (const NativeError& e) {
    return rejectNow(info.Env(), e);
  }
}

static Napi::Value prefillOutcome(Napi::Env env, const PrefillOutcome& o) {
  Napi::Object v = Napi::Object::New(env);
  if (o.outId != 0) v.Set("out", allocation(env, o.outId, o.outPtr));
  if (o.maxLogitsId != 0) v.Set("maxLogits", allocation(env, o.maxLogitsId, o.maxLogitsPtr));
  if (o.lseId != 0) v.Set("lse", allocation(env, o.lseId, o.lsePtr));
  return v;
}

// prefill(request) → the outcome when issued here (every operand a device address, nothing queued
// still to issue its own work), else a Promise of it from the worker thread (host operands are
// uploaded and host outputs downloaded there, docs/cuda-path.md#prefill). Errors of the
// calling-thread path are thrown.
Napi::Value Engine::Prefill(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto task = std::make_unique<Task>();
  std::shared_ptr<const PrefillRequest> req;
  try {
    req = std::make_shared<const PrefillRequest>(parsePrefillRequest(info[0].As<Napi::Object>(), task->keepAlive));
  } catch (const NativeError& e) {
    return rejectNow(env, e);
  }
  if (!req->touchesHost() && canIssueHere() && !disposed_) {
    PrefillOutcome o;
    try {
      ctx_->activate();
      o = runPrefill(*ctx_, facts_.major, facts_.minor, *req);
    } catch (const NativeError& e) {
      throw makeError(env, e);
    } catch (const std::exception& e) {
      throwError(env, "E_INTERNAL", e.what());
    }
    return prefillOutcome(env, o);
  }
  auto outcome = std::make_shared<PrefillOutcome>();
  task->streamWork = true;
  task->execute = [this, req, outcome](DeviceContext& ctx) { *outcome = runPrefill(ctx, facts_.major, facts_.minor, *req); };
  task->settle = [outcome](Napi::Env env) -> Napi::Value { return prefillOutcome(env, *outcome); };
  return enqueue(env, std::move(task), true);
}

namespace {
// Marks the externals made by prepare(), so launch() never reads another kind of External as a request.
constexpr napi_type_tag kPreparedTag = {0x6d0c2a51f3b84e17ULL, 0x9a4f2d7be1c35806ULL};

const DecodeRequest* preparedOf(const Napi::Value& v) {
  bool tagged = false;
  if (!v.IsExternal() || napi_check_object_type_tag(v.Env(), v, &kPreparedTag, &tagged) != napi_ok || !tagged) {
    throw NativeError("E_INTERNAL", "launch() takes a request made by prepare()");
  }
  return v.As<Napi::External<DecodeRequest>>().Data();
}

uint64_t* mailboxOf(const Napi::Value& v) {
  if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_biguint64_array ||
      v.As<Napi::TypedArray>().ElementLength() < kMailboxSize) {
    throw NativeError("E_INTERNAL", "launch() needs a BigUint64Array mailbox");
  }
  Napi::TypedArray t = v.As<Napi::TypedArray>();
  return reinterpret_cast<uint64_t*>(static_cast<uint8_t*>(t.ArrayBuffer().Data()) + t.ByteOffset());
}
}  // namespace

// prepare(request) → an opaque request for launch(): a decode whose operands are all device
// addresses and whose outputs stay on the device, parsed once (docs/cuda-path.md#per-call-cost).
Napi::Value Engine::Prepare(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  try {
    std::vector<Napi::Reference<Napi::Value>> keepAlive;
    auto req = std::make_unique<DecodeRequest>(parseDecodeRequest(info[0].As<Napi::Object>(), keepAlive));
    if (!keepAlive.empty()) throw NativeError("E_INTERNAL", "a prepared request has device operands and device outputs only");
    auto ext = Napi::External<DecodeRequest>::New(env, req.release(), [](Napi::Env, DecodeRequest* r) { delete r; });
    if (napi_type_tag_object(env, ext, &kPreparedTag) != napi_ok) throw NativeError("E_INTERNAL", "napi_type_tag_object failed");
    return ext;
  } catch (const NativeError& e) {
    throwError(env, e.code, e.what());
  }
}

// setMailbox(BigUint64Array): the per-call exchange of launch(), given once (docs/cuda-path.md#per-call-cost).
Napi::Value Engine::SetMailbox(const Napi::CallbackInfo& info) {
  try {
    uint64_t* mb = mailboxOf(info[0]);
    mailboxRef_ = Napi::Persistent(info[0]);
    mailbox_ = mb;
  } catch (const NativeError& e) {
    throwError(info.Env(), e.code, e.what());
  }
  return info.Env().Undefined();
}

// launch(prepared) → undefined when the decode was issued here, on the calling thread (the outcome
// is in the mailbox), or a Promise (as decode's) when earlier queued work has still to issue its
// own, so the decode is queued behind it. Errors of the calling-thread path are thrown.
Napi::Value Engine::Launch(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  DecodeRequest r;
  uint64_t* mb = mailbox_;
  try {
    r = *preparedOf(info[0]);
    if (mb == nullptr) throw NativeError("E_INTERNAL", "launch() before setMailbox()");
  } catch (const NativeError& e) {
    throwError(env, e.code, e.what());
  }
  if (disposed_) throwError(env, "E_DISPOSED", "this FlashMLA instance was disposed");
  r.slot = mb[kMbSlot];
  r.outAddress = mb[kMbOutAddress];
  r.lseAddress = mb[kMbLseAddress];
  if (!canIssueHere()) return queueDecode(env, std::make_unique<Task>(), std::make_shared<const DecodeRequest>(r));
  DecodeOutcome o;
  try {
    ctx_->activate();
    o = runDecode(*ctx_, facts_.major, facts_.minor, r);
  } catch (const NativeError& e) {
    throw makeError(env, e);
  } catch (const std::exception& e) {
    throwError(env, "E_INTERNAL", e.what());
  }
  mb[kMbOutId] = o.outId;
  mb[kMbOutPtr] = reinterpret_cast<uintptr_t>(o.outPtr);
  mb[kMbLseId] = o.lseId;
  mb[kMbLsePtr] = reinterpret_cast<uintptr_t>(o.lsePtr);
  mb[kMbSchedMetaRan] = o.schedMetaRan ? 1 : 0;
  return env.Undefined();
}

// emptyCache(): frees the pool's cached blocks, on the worker (cudaFree waits for the device).
Napi::Value Engine::EmptyCache(const Napi::CallbackInfo& info) {
  auto task = std::make_unique<Task>();
  task->execute = [](DeviceContext& ctx) { ctx.emptyCache(); };
  return enqueue(info.Env(), std::move(task), true);
}

// beginCapture(): starts capturing the stream on this thread (docs/cuda-path.md#graphs). JavaScript
// has drained the queue first and refuses queued work until endCapture().
Napi::Value Engine::BeginCapture(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (disposed_) throwError(env, "E_DISPOSED", "this FlashMLA instance was disposed");
  if (!canIssueHere()) throwError(env, "E_INTERNAL", "beginCapture() with queued stream work");
  try {
    ctx_->activate();
    ctx_->cuda().GetLastError();
    ctx_->check(ctx_->cuda().StreamBeginCapture(ctx_->stream(), cudaStreamCaptureModeRelaxed), "cudaStreamBeginCapture");
    ctx_->startPinning();
  } catch (const NativeError& e) {
    throw makeError(env, e);
  }
  return env.Undefined();
}

// endCapture(keep) → graph id (keep) or undefined: ends the capture; with keep, instantiates the
// graph, which holds the pool blocks the captured calls used until destroyGraph().
Napi::Value Engine::EndCapture(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const bool keep = info.Length() > 0 && info[0].ToBoolean().Value();
  std::vector<void*> pinned = ctx_->stopPinning();
  void* graph = nullptr;
  void* exec = nullptr;
  try {
    ctx_->activate();
    ctx_->check(ctx_->cuda().StreamEndCapture(ctx_->stream(), &graph), "cudaStreamEndCapture");
    if (keep) ctx_->check(ctx_->cuda().GraphInstantiateWithFlags(&exec, graph, 0), "cudaGraphInstantiateWithFlags");
  } catch (const NativeError& e) {
    if (graph != nullptr) ctx_->cuda().GraphDestroy(graph);
    ctx_->unpin(pinned);
    throw makeError(env, e);
  }
  if (!keep) {
    if (graph != nullptr) ctx_->cuda().GraphDestroy(graph);
    ctx_->unpin(pinned);
    return env.Undefined();
  }
  const uint64_t id = nextGraph_++;
  graphs_.emplace(id, CapturedGraph{graph, exec, std::move(pinned)});
  return Napi::Number::New(env, static_cast<double>(id));
}

// launchGraph(id) → undefined when issued here, or a Promise when queued behind earlier work.
Napi::Value Engine::LaunchGraph(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const uint64_t id = static_cast<uint64_t>(info[0].As<Napi::Number>().DoubleValue());
  if (disposed_) throwError(env, "E_DISPOSED", "this FlashMLA instance was disposed");
  auto it = graphs_.find(id);
  if (it == graphs_.end()) throwError(env, "E_DISPOSED", "the graph was disposed");
  void* exec = it->second.exec;
  auto run = [exec](DeviceContext& ctx) {
    ctx.cuda().GetLastError();
    ctx.check(ctx.cuda().GraphLaunch(exec, ctx.stream()), "cudaGraphLaunch");
    ctx.check(ctx.cuda().GetLastError(), "graph replay");
  };
  if (!canIssueHere()) {
    auto task = std::make_unique<Task>();
    task->streamWork = true;
    task->execute = run;
    return enqueue(env, std::move(task), true);
  }
  try {
    ctx_->activate();
    run(*ctx_);
  } catch (const NativeError& e) {
    throw makeError(env, e);
  }
  return env.Undefined();
}

// destroyGraph(id): behind every queued replay; the graph's pool blocks are released then.
Napi::Value Engine::DestroyGraph(const Napi::CallbackInfo& info) {
  if (!disposed_) destroyGraph(info.Env(), static_cast<uint64_t>(info[0].As<Napi::Number>().DoubleValue()));
  return info.Env().Undefined();
}

void Engine::destroyGraph(Napi::Env env, uint64_t id) {
  auto it = graphs_.find(id);
  if (it == graphs_.end()) return;
  auto g = std::make_shared<CapturedGraph>(std::move(it->second));
  graphs_.erase(it);
  auto task = std::make_unique<Task>();
  task->execute = [g](DeviceContext& ctx) {
    ctx.cuda().GraphExecDestroy(g->exec);
    ctx.cuda().GraphDestroy(g->graph);
    ctx.unpin(g->pinned);
  };
  enqueue(env, std::move(task), false);
}

// pooledBytes() → bytes the instance's pool holds (blocks in use and cached).
Napi::Value Engine::PooledBytes(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), static_cast<double>(ctx_->pooledBytes()));
}

// dispose(): after all queued work, frees every allocation, the workspace and the stream.
Napi::Value Engine::Dispose(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (disposed_) {
    auto d = Napi::Promise::Deferred::New(env);
    d.Resolve(env.Undefined());
    return d.Promise();
  }
  // Graphs first (their replays are queued before), then everything else.
  std::vector<uint64_t> ids;
  for (auto& [id, g] : graphs_) ids.push_back(id);
  for (uint64_t id : ids) destroyGraph(env, id);
  auto task = std::make_unique<Task>();
  task->stop = true;
  Napi::Value p = enqueue(env, std::move(task), true);
  disposed_ = true;
  return p;
}

}  // namespace fmla

#include "library_wrap.h"

#include "js_errors.h"

#include <cstring>
#include <vector>

namespace fmla {

using namespace cuda_abi;

namespace {
// Holds the freshly loaded library between LoadLibrary and the constructor it calls.
thread_local std::shared_ptr<LoadedLibrary> pendingLibrary;

// cudaDeviceProp::totalGlobalMem follows name[256], cudaUUID_t (16), luid[8] and
// luidDeviceNodeMask (4, padded to 8) in every CUDA version since 10.
constexpr std::size_t kTotalGlobalMemOffset = 288;
}  // namespace

Napi::Function LibraryWrap::Define(Napi::Env env) {
  Napi::Function f = DefineClass(env, "FlashMlaLibrary",
                                 {InstanceMethod("info", &LibraryWrap::Info), InstanceMethod("probe", &LibraryWrap::Probe)});
  // Per environment (main thread, each worker thread): a constructor is only valid in the env that
  // made it, and the addon is initialised once per env.
  addonData(env).libraryClass = Napi::Persistent(f);
  return f;
}

LibraryWrap::LibraryWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<LibraryWrap>(info) {
  lib_ = std::move(pendingLibrary);
  if (lib_ == nullptr) {
    throwError(info.Env(), "E_INTERNAL", "FlashMlaLibrary objects are made by load()");
  }
}

Napi::Value LibraryWrap::Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  out.Set("path", lib_->path);
  Napi::Object launchers = Napi::Object::New(env);
  for (const auto& s : flashmla_abi::kLauncherSymbols) {
    const std::string& name = lib_->resolvedNames[static_cast<int>(s.id)];
    launchers.Set(s.key, name.empty() ? env.Null() : Napi::String::New(env, name));
  }
  out.Set("launchers", launchers);
  Napi::Array missing = Napi::Array::New(env, lib_->cudaMissing.size());
  for (std::size_t i = 0; i < lib_->cudaMissing.size(); i++) missing.Set(i, lib_->cudaMissing[i]);
  out.Set("cudaMissing", missing);
  return out;
}

// Versions and devices through the build's runtime. Asks only for what needs no context, except
// cudaMemGetInfo when the properties carry no total (then the device's primary context is made).
Napi::Value LibraryWrap::Probe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  const CudaApi& cuda = lib_->cuda;
  if (!lib_->cudaComplete()) {
    out.Set("error", "the CUDA runtime functions are not all resolvable");
    return out;
  }
  int runtime = 0, driver = 0, count = 0;
  int err = cuda.RuntimeGetVersion(&runtime);
  out.Set("runtimeVersion", err == cudaSuccess ? Napi::Number::New(env, runtime) : env.Null());
  err = cuda.DriverGetVersion(&driver);
  out.Set("driverVersion", err == cudaSuccess ? Napi::Number::New(env, driver) : env.Null());
  err = cuda.GetDeviceCount(&count);
  if (err != cudaSuccess) {
    out.Set("deviceCountError", Napi::Number::New(env, err));
    out.Set("deviceCountErrorText", cuda.describe(err));
    cuda.GetLastError();  // not FlashMLA's to find later
    count = 0;
  }
  out.Set("deviceCount", count);
  Napi::Array devices = Napi::Array::New(env, count);
  std::vector<char> prop(kDevicePropBufferBytes);
  for (int d = 0; d < count; d++) {
    Napi::Object dev = Napi::Object::New(env);
    int major = 0, minor = 0, sms = 0;
    cuda.DeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, d);
    cuda.DeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, d);
    cuda.DeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, d);
    std::fill(prop.begin(), prop.end(), 0);
    std::string name;
    std::size_t total = 0;
    if (cuda.GetDeviceProperties(prop.data(), d) == cudaSuccess) {
      name.assign(prop.data(), strnlen(prop.data(), 256));
      std::memcpy(&total, prop.data() + kTotalGlobalMemOffset, sizeof total);
    }
    if (total == 0) {
      std::size_t freeBytes = 0;
      int current = 0;
      cuda.GetDevice(&current);
      if (cuda.SetDevice(d) == cudaSuccess) cuda.MemGetInfo(&freeBytes, &total);
      cuda.SetDevice(current);
    }
    cuda.GetLastError();
    dev.Set("index", d);
    dev.Set("name", name);
    dev.Set("major", major);
    dev.Set("minor", minor);
    dev.Set("sms", sms);
    dev.Set("totalMemory", Napi::Number::New(env, static_cast<double>(total)));
    devices.Set(d, dev);
  }
  out.Set("devices", devices);
  return out;
}

Napi::Value LoadLibrary(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  const std::string path = info[0].As<Napi::String>();
  std::vector<Preload> preloads;
  Napi::Array pre = info[1].As<Napi::Array>();
  for (uint32_t i = 0; i < pre.Length(); i++) {
    Napi::Object p = pre.Get(i).As<Napi::Object>();
    preloads.push_back({p.Get("path").As<Napi::String>(), p.Get("global").ToBoolean().Value()});
  }
  std::vector<std::string> alternates;
  Napi::Array alt = info[2].As<Napi::Array>();
  for (uint32_t i = 0; i < alt.Length(); i++) {
    Napi::Value v = alt.Get(i);
    alternates.push_back(v.IsString() ? v.As<Napi::String>().Utf8Value() : std::string());
  }
  LoadFailure failure;
  auto lib = loadFlashMla(path, preloads, alternates, failure);
  if (lib == nullptr) {
    // A FlashMLAError (E_BACKEND) that also says which file failed to load, and at which stage.
    Napi::Error err = makeError(env, "E_BACKEND", failure.message);
    err.Set("stage", failure.stage);
    err.Set("path", failure.path);
    throw err;
  }
  pendingLibrary = std::move(lib);
  return addonData(env).libraryClass.New({});
}

}  // namespace fmla

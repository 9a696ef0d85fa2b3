// Module entry: setErrorClass, load(path, preloads, alternates), Engine, the ABI facts tests compare against (launchers:
// id, key, mangled name and the small-topk fallback), and
// cpuTile (the reference backend's native tile loops), EngramMapping.
#include <napi.h>

#include "cpu_tile.h"
#include "engine.h"
#include "engram_hash.h"
#include "engram_mapping.h"
#include "flashmla_symbols.h"
#include "js_errors.h"
#include "library_wrap.h"

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("setErrorClass", Napi::Function::New(env, fmla::SetErrorClass, "setErrorClass"));
  exports.Set("load", Napi::Function::New(env, fmla::LoadLibrary, "load"));
  exports.Set("FlashMlaLibrary", fmla::LibraryWrap::Define(env));
  exports.Set("Engine", fmla::Engine::Define(env));
  // docs/flashmla-interface.md#mangled-names names, in Launcher order, so JavaScript uses the ids and tests can compare exports.
  Napi::Array launchers = Napi::Array::New(env);
  for (const auto& s : flashmla_abi::kLauncherSymbols) {
    Napi::Object o = Napi::Object::New(env);
    o.Set("id", static_cast<int>(s.id));
    o.Set("key", s.key);
    o.Set("mangled", s.mangled);
    if (s.fallback != nullptr) o.Set("fallback", s.fallback);
    launchers.Set(launchers.Length(), o);
  }
  exports.Set("launchers", launchers);
  Napi::Array cudaFns = Napi::Array::New(env);
#define FMLA_CUDA_NAME(member, symbol, type) cudaFns.Set(cudaFns.Length(), symbol);
  CUDA_ABI_FUNCTIONS(FMLA_CUDA_NAME)
#undef FMLA_CUDA_NAME
  exports.Set("cudaFunctions", cudaFns);
  // The reference backend's native tile tier (src/reference/tile-native.ts).
  exports.Set("cpuTile", fmla::cpu::CpuTileExports(env));
  // Engram tables mapped from their files (src/addon.ts NativeEngramMapping).
  exports.Set("EngramMapping", fmla::engram::DefineEngramMapping(env));
  exports.Set("EngramHasher", fmla::engram::EngramHasherClass(env));  // src/engram/hash-native.ts
  return exports;
}

}  // namespace

NODE_API_MODULE(flashmla_node, Init)

// JavaScript handle of a loaded FlashMLA build: what resolved, and the CUDA facts (versions,
// devices) asked through the build's own runtime.
#pragma once

#include <napi.h>

#include <memory>

#include "flashmla_library.h"

namespace fmla {

class LibraryWrap : public Napi::ObjectWrap<LibraryWrap> {
 public:
  static Napi::Function Define(Napi::Env env);
  explicit LibraryWrap(const Napi::CallbackInfo& info);
  const std::shared_ptr<LoadedLibrary>& library() const { return lib_; }

 private:
  Napi::Value Info(const Napi::CallbackInfo& info);
  Napi::Value Probe(const Napi::CallbackInfo& info);
  std::shared_ptr<LoadedLibrary> lib_;
};

// load(path, preloads: {path, global}[], alternates: string[]) → LibraryWrap; a failed dlopen throws
// a FlashMLAError (E_BACKEND) with `stage` ('preload' | 'library') and `path`.
Napi::Value LoadLibrary(const Napi::CallbackInfo& info);

}  // namespace fmla

// The addon's one error path. JavaScript hands the package's FlashMLAError class to the addon when
// it loads it (`setErrorClass`, as better-sqlite3 does with SqliteError), so every error the addon
// throws or rejects with is a FlashMLAError with a stable code: argument errors of its own
// functions, load failures, and failures that come back from an instance's worker thread.
#pragma once

#include <napi.h>

#include <string>

#include "native_error.h"

namespace fmla {

// What the addon keeps per JavaScript environment (main thread, each worker thread).
struct AddonData {
  Napi::FunctionReference libraryClass;  // FlashMlaLibrary, made by load() only
  Napi::FunctionReference errorClass;    // FlashMLAError, once JavaScript handed it over
};

AddonData& addonData(Napi::Env env);

// setErrorClass(FlashMLAError)
Napi::Value SetErrorClass(const Napi::CallbackInfo& info);

// A FlashMLAError(code, message) of this environment (before the class is handed over: an Error
// with `code`), with `cudaError` set when non-zero.
Napi::Error makeError(Napi::Env env, const std::string& code, const std::string& message, int cudaError = 0);

// The same, for a NativeError that ended work on an instance's thread.
inline Napi::Error makeError(Napi::Env env, const NativeError& e) { return makeError(env, e.code, e.what(), e.cudaError); }

// Throws makeError(...) into JavaScript (from a function JavaScript called).
[[noreturn]] void throwError(Napi::Env env, const std::string& code, const std::string& message);

}  // namespace fmla

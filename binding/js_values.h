// Reading request fields from JavaScript values on the JavaScript thread; every malformed field is
// a NativeError("E_INTERNAL") because the TypeScript layer builds these objects.
#pragma once

#include <napi.h>

#include <cstdint>
#include <string>

#include "native_error.h"

namespace fmla {

inline double num(const Napi::Object& o, const char* name) {
  Napi::Value v = o.Get(name);
  if (!v.IsNumber()) throw NativeError("E_INTERNAL", std::string("native request field ") + name + " is not a number");
  return v.As<Napi::Number>().DoubleValue();
}

inline int64_t i64(const Napi::Object& o, const char* name) {
  const double d = num(o, name);
  if (d != static_cast<double>(static_cast<int64_t>(d))) {
    throw NativeError("E_INTERNAL", std::string("native request field ") + name + " is not an integer");
  }
  return static_cast<int64_t>(d);
}

inline int i32(const Napi::Object& o, const char* name) {
  const int64_t v = i64(o, name);
  // docs/flashmla-interface.md#host-helpers int64_stride_to_int: every int field of the param structs must fit.
  if (v > INT32_MAX || v < INT32_MIN) throw NativeError("E_INTERNAL", std::string(name) + " exceeds the int32 range");
  return static_cast<int>(v);
}

inline bool flag(const Napi::Object& o, const char* name) { return o.Get(name).ToBoolean().Value(); }

inline uint64_t address(const Napi::Value& v, const char* what) {
  if (!v.IsBigInt()) throw NativeError("E_INTERNAL", std::string(what) + " is not a bigint address");
  bool lossless = false;
  const uint64_t a = v.As<Napi::BigInt>().Uint64Value(&lossless);
  if (!lossless) throw NativeError("E_INTERNAL", std::string(what) + " is not a 64-bit address");
  return a;
}

}  // namespace fmla

// Reading a request's tensor operands and host output buffers on the JavaScript thread (decode.cc,
// prefill.cc): a device operand is a bigint address, a host one a typed array whose memory is kept
// alive (keepAlive) until the work that reads or writes it completes.
#pragma once

#include <napi.h>

#include <cstdint>
#include <string>
#include <vector>

#include "js_values.h"
#include "native_error.h"

namespace fmla {

struct OperandSource {
  bool present = false;
  uint64_t device = 0;           // address of element 0 (offset applied) of a device operand
  const void* host = nullptr;    // or the bytes of a host operand, uploaded into the workspace
  std::size_t hostBytes = 0;
};

inline OperandSource readOperand(const Napi::Value& v, const char* name, std::vector<Napi::Reference<Napi::Value>>& keepAlive) {
  OperandSource s;
  if (v.IsUndefined() || v.IsNull()) return s;
  s.present = true;
  if (v.IsBigInt()) {
    s.device = address(v, name);
  } else if (v.IsTypedArray()) {
    Napi::TypedArray t = v.As<Napi::TypedArray>();
    s.host = static_cast<uint8_t*>(t.ArrayBuffer().Data()) + t.ByteOffset();
    s.hostBytes = t.ByteLength();
    keepAlive.push_back(Napi::Persistent(v));
  } else {
    throw NativeError("E_INTERNAL", std::string("operand ") + name + " is neither an address nor a typed array");
  }
  return s;
}

// A host output buffer (a typed array field of the request), or nothing when the field is absent.
inline void readHostBuffer(const Napi::Object& o, const char* name, void*& ptr, std::size_t& bytes,
                           std::vector<Napi::Reference<Napi::Value>>& keepAlive) {
  Napi::Value v = o.Get(name);
  if (!v.IsTypedArray()) return;
  Napi::TypedArray t = v.As<Napi::TypedArray>();
  ptr = static_cast<uint8_t*>(t.ArrayBuffer().Data()) + t.ByteOffset();
  bytes = t.ByteLength();
  keepAlive.push_back(Napi::Persistent(v));
}

}  // namespace fmla

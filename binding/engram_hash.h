// Engram's N-gram hash (docs/engram-hashing.md#hash), the native tier of src/engram/hash-native.ts.
#pragma once

#include <napi.h>

namespace fmla::engram {

// engramHash(seq, history, pad, vocab, multipliers, primes, offsets, layers, order, heads, out):
// out[t − history][layer][(n − 2)·heads + head] for every t in [history, seq.length).
Napi::Value EngramHash(const Napi::CallbackInfo& info);

}  // namespace fmla::engram
